"""Notebook parameters are read from the cells a kernel ran (the parameters cell, papermill's injected cell), so a
cell re-run after the notebook defined its own names still passes; unknown or mistyped parameters are refused."""

from __future__ import annotations

import json
import os
import time

import pytest

from runbook_lib.exceptions import BadInput
from runbook_lib.run.notebook import check_parameters, parameter_cells
from runbook_lib.watch.detached import HEARTBEAT_FILE, Heartbeat, StopFlag, idle_limit_s, start_heartbeat

DEFAULTS = ('params_file: str = "../params/sandbox.yaml"  # the params YAML file\n'
            'run_dir: str = ""  # run folder\n')
SETUP = 'from runbook_lib.run import notebook\nsection = notebook.open_section("00_preflight", globals())'
INJECTED = '# Parameters\nparams_file = "/p/sandbox.yaml"\nrun_dir = "/r/run"\n'


def test_jupyterlab_defaults_and_a_rerun_of_the_setup_cell():
    history = ["", DEFAULTS, SETUP, "topo = section.observe()\nchecks = []", SETUP]
    declared, injected = parameter_cells(history)
    assert declared == {"params_file": "str", "run_dir": "str"} and injected == set()
    namespace = {"params_file": "../params/sandbox.yaml", "run_dir": "", "section": object(), "topo": 1,
                 "checks": [], "section_name": "x"}
    assert check_parameters(declared, injected, namespace) == {"params_file": "../params/sandbox.yaml",
                                                               "run_dir": ""}


def test_papermill_injected_values_are_checked_and_unknown_names_refused():
    declared, injected = parameter_cells(["", DEFAULTS, INJECTED])
    assert injected == {"params_file", "run_dir"}
    assert check_parameters(declared, injected, {"params_file": "/p/sandbox.yaml", "run_dir": "/r/run"})["run_dir"] \
        == "/r/run"
    typo = '# Parameters\nparams_file = "/p/sandbox.yaml"\nrun_dri = "/r/run"\n'
    declared, injected = parameter_cells(["", DEFAULTS, typo, SETUP])
    with pytest.raises(BadInput, match=r"unknown notebook parameters \['run_dri'\]"):
        check_parameters(declared, injected, {"params_file": "/p", "run_dir": "", "run_dri": "/r/run"})


def test_a_notebook_may_declare_its_own_typed_parameters():
    cell = DEFAULTS + "max_batches: int = 0  # batches per execution\n"
    declared, injected = parameter_cells(["", cell, "# Parameters\nmax_batches = 2\n"])
    values = check_parameters(declared, injected, {"params_file": "p", "run_dir": "", "max_batches": 2})
    assert values["max_batches"] == 2
    for wrong in ("2", True, 2.5):
        with pytest.raises(BadInput, match="max_batches must be int"):
            check_parameters(declared, injected, {"params_file": "p", "run_dir": "", "max_batches": wrong})


def test_a_wrong_type_a_missing_parameter_or_no_parameters_cell_is_refused():
    declared, injected = parameter_cells(["", DEFAULTS])
    with pytest.raises(BadInput, match="params_file must be str, got bool"):
        check_parameters(declared, injected, {"params_file": False, "run_dir": ""})
    with pytest.raises(BadInput, match="run_dir is missing"):
        check_parameters(declared, injected, {"params_file": "p"})
    with pytest.raises(BadInput, match="run the cell tagged `parameters` first"):
        check_parameters(*parameter_cells(["", SETUP]), {"params_file": "p", "run_dir": ""})
    with pytest.raises(BadInput, match=r"must declare \['run_dir'\]"):
        check_parameters(*parameter_cells(['params_file: str = "p"  # x']), {"params_file": "p"})


def test_the_last_parameters_cell_run_is_the_one_that_counts():
    edited = 'params_file: str = "../params/mine.yaml"  # edited by hand\nrun_dir: str = ""  # run folder\n'
    declared, injected = parameter_cells(["", DEFAULTS, INJECTED, SETUP, edited, SETUP])
    assert injected == set(), "a parameters cell run again by hand starts over"
    assert declared == {"params_file": "str", "run_dir": "str"}


def test_cells_that_are_not_literal_assignments_are_no_parameters():
    declared, _ = parameter_cells(["", DEFAULTS, "x: int = len('abc')", "get_ipython().run_line_magic('time', '')",
                                   "def f(:"])
    assert declared == {"params_file": "str", "run_dir": "str"}


def test_a_watcher_stops_when_the_heartbeat_goes_stale_and_not_before(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "probe").mkdir(parents=True)
    beat = start_heartbeat(run_dir, idle_s=30)
    flag = StopFlag(run_dir / "probe" / "stop", deadline=time.time() + 3600, heartbeat=run_dir / HEARTBEAT_FILE,
                    check_every_s=0, heartbeat_every_s=0)
    assert not flag.is_set()
    old = time.time() - 31
    os.utime(beat, (old, old))
    assert flag.is_set() and flag.reason.startswith("idle: no live run touched watch.heartbeat for 31 s")
    assert json.loads(beat.read_text())["idle_stop_s"] == 30


def test_a_heartbeat_thread_keeps_the_watchers_alive_and_no_file_means_no_watchdog(tmp_path):
    start_heartbeat(tmp_path, idle_s=30)
    old = time.time() - 100
    os.utime(tmp_path / HEARTBEAT_FILE, (old, old))
    with Heartbeat(tmp_path, every_s=0.05):
        time.sleep(0.1)
    assert time.time() - (tmp_path / HEARTBEAT_FILE).stat().st_mtime < 5
    (tmp_path / HEARTBEAT_FILE).unlink()
    flag = StopFlag(tmp_path / "stop", deadline=time.time() + 60, heartbeat=tmp_path / HEARTBEAT_FILE,
                    check_every_s=0, heartbeat_every_s=0)
    assert not flag.is_set()
    with Heartbeat(tmp_path, every_s=0.05):
        pass
    assert not (tmp_path / HEARTBEAT_FILE).exists(), "touching never creates the file"


def test_the_idle_limit_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("RUNBOOK_WATCH_IDLE_S", "90")
    assert idle_limit_s() == 90
    for bad in ("", "soon", "-1"):
        monkeypatch.setenv("RUNBOOK_WATCH_IDLE_S", bad)
        assert idle_limit_s() == 1800
