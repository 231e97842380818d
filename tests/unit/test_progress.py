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


def test_a_bgsave_shows_what_it_waits_for_then_keys_saved_of_the_total():
    from tqdm.auto import tqdm

    from runbook_lib.sections.backup import _show_save
    bar = tqdm(total=None, disable=True)
    _show_save(bar, {"rdb_bgsave_in_progress": 0, "aof_rewrite_in_progress": 1}, "waiting for an AOF rewrite to end")
    assert bar.postfix == "waiting for an AOF rewrite to end" and bar.total is None
    _show_save(bar, {"rdb_bgsave_in_progress": 1, "current_save_keys_total": 100, "current_save_keys_processed": 40,
                     "rdb_current_bgsave_time_sec": 2}, "unused")
    assert (bar.n, bar.total, bar.postfix) == (40, 100, "saving, 2 s")
