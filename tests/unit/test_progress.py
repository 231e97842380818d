"""Progress bars are drawn where someone watches: a terminal or a Jupyter kernel, never under `runbook run`."""

import io

from runbook_lib import progress


def test_an_explicit_flag_wins(monkeypatch):
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    assert progress.wanted(True) is True
    assert progress.wanted(False) is False


def test_headless_runs_and_logs_draw_none_terminals_do(monkeypatch):
    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    monkeypatch.setenv(progress.HEADLESS_ENV, "1")
    assert not progress.wanted()
    monkeypatch.delenv(progress.HEADLESS_ENV)
    assert progress.wanted()
    monkeypatch.setattr(progress, "in_kernel", lambda: False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress.wanted()

    class Tty(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress.wanted()
