"""Which run folder a notebook run by hand writes into: one per run, recorded for the next notebook, until sealed."""

from __future__ import annotations

import json

import yaml

from runbook_lib.config import load_params
from runbook_lib.run.interactive import POINTER, RUN_RECORD, KernelSession, given_run, pointed_run


def params(tmp_path, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"cluster": {"seed": "127.0.0.1:7000"},
                                    "new_masters": [{"address": "127.0.0.1:7006"}],
                                    "report": {"dir": str(tmp_path / "reports")}}))
    return load_params(path)


def test_the_first_notebook_names_the_run_and_the_next_finds_it_until_it_is_sealed(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNBOOK_RUN_ID", raising=False)
    p = params(tmp_path)
    first = KernelSession().run_for(p, "")
    assert first.run_dir.parent == tmp_path / "reports" and first.run_dir.name.startswith("interactive-")
    assert json.loads((tmp_path / "reports" / POINTER).read_text())["run_dir"] == str(first.run_dir)
    assert json.loads((first.run_dir / RUN_RECORD).read_text())["run_id"] == first.run_id
    other_kernel = KernelSession().run_for(p, "")
    assert other_kernel.run_dir == first.run_dir and other_kernel.run_id == first.run_id

    (first.run_dir / "manifest.json").write_text("{}")
    assert pointed_run(p) is None, "a sealed run is over"
    same_kernel = KernelSession()
    same_kernel.runs[(str(p.path), "")] = first
    assert same_kernel.run_for(p, "") == first, "a kernel keeps the folder it opened"
    new = KernelSession().run_for(p, "")
    assert new.run_dir != first.run_dir and new.run_id != first.run_id


def test_another_params_file_starts_its_own_run(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNBOOK_RUN_ID", raising=False)
    a, b = params(tmp_path, "a.yaml"), params(tmp_path, "b.yaml")
    run_a = KernelSession().run_for(a, "")
    assert pointed_run(b) is None
    assert KernelSession().run_for(b, "").run_dir != run_a.run_dir


def test_a_given_folder_is_the_runners_or_keeps_its_recorded_run(tmp_path, monkeypatch):
    p = params(tmp_path)
    monkeypatch.setenv("RUNBOOK_RUN_ID", "20260101T000000Z-abcdef12")
    headless = given_run(p, tmp_path / "run")
    assert headless.headless and headless.run_id == "20260101T000000Z-abcdef12"
    assert not (tmp_path / "run" / RUN_RECORD).exists(), "the runner records its own run"
    monkeypatch.delenv("RUNBOOK_RUN_ID")
    by_hand = given_run(p, tmp_path / "run")
    assert not by_hand.headless and given_run(p, tmp_path / "run").run_id == by_hand.run_id
