"""What a notebook shows: charts as the PNG the report links (not `<Figure ...>`), the verdict as one line."""

import base64
from pathlib import Path

import pytest
from IPython.core.formatters import DisplayFormatter
from matplotlib.figure import Figure

from runbook_lib.config import load_params
from runbook_lib.exceptions import CheckFailed
from runbook_lib.run.notebook import Section

PARAMS = Path(__file__).resolve().parents[2] / "params" / "sandbox.yaml"


@pytest.fixture()
def section(tmp_path):
    return Section("60_validate", load_params(PARAMS), tmp_path)


def test_a_saved_chart_displays_as_its_png(section, tmp_path):
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    shown = section.save_figure(fig, "demo")
    data, _ = DisplayFormatter().format(shown)
    saved = (tmp_path / "charts" / "demo.png").read_bytes()
    assert base64.b64decode(data["image/png"]) == saved and saved.startswith(b"\x89PNG")


def test_the_verdict_shows_as_one_line_and_keeps_the_record(section, tmp_path):
    verdict = section.finish([{"name": "a", "status": "pass", "detail": "x"}, {"name": "b", "status": "warn",
                                                                               "detail": "y"}])
    data, _ = DisplayFormatter().format(verdict)
    assert data["text/markdown"].startswith("**60_validate: WARN** (2 checks, 1 warnings)")
    assert "\n" not in data["text/plain"] and "'checks'" not in data["text/plain"]
    assert (tmp_path / "results" / "60_validate.json").exists() and verdict["checks"][1]["status"] == "warn"


def test_a_failed_check_names_itself_and_why_in_the_summary(section):
    with pytest.raises(CheckFailed, match=r"big key k \(12.0 MB string\)"):
        section.finish([{"name": "big key k", "status": "fail", "detail": "12.0 MB string"}], "4096 slots")
