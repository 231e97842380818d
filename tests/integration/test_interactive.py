"""Notebooks stepped through by hand, in real kernels against a real sandbox: run all, re-run a cell, the run folder
shared by the notebooks of one run and sealed by its last, the live input checks and the run lock before a cell
acts, watchers stopped at kernel exit and after an idle heartbeat, and 60_validate's probe verdict stable on a
re-run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.lock import RunLock, new_run_id, read_lock
from runbook_lib.cluster.topology import observe
from runbook_lib.config import load_params
from runbook_lib.run.audit import verify
from runbook_lib.run.interactive import POINTER
from runbook_lib.run.kernel import LocalKernelManager
from runbook_lib.watch import acceptance, watchers
from runbook_lib.watch.probe import TrafficProbe
from tests.conftest import module_sandbox, port_block
from tests.integration.faults import params_variant

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW, NEW_REPLICA = f"127.0.0.1:{PORT + 6}", f"127.0.0.1:{PORT + 7}"
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


sandbox = module_sandbox(PORT, 2000)


@pytest.fixture()
def params_file(sandbox, tmp_path) -> Path:
    """The sandbox's params with a report folder of this test's own and no traffic probe (faster kernels)."""
    path = params_variant(sandbox, tmp_path.name, gates={"baseline_s": 1.0})
    text = path.read_text().replace("enabled: true", "enabled: false")
    path.write_text(text.replace(str(sandbox.root.parent / "reports"), str(tmp_path / "reports")))
    return path


def notebook(name: str, params_file: Path, extra: str = "") -> nbformat.NotebookNode:
    """A committed notebook with its params_file default pointed at this sandbox, as an SRE edits the first cell."""
    nb = nbformat.read(str(NOTEBOOKS / f"{name}.ipynb"), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = cell.source.replace('"../params/sandbox.yaml"', json.dumps(str(params_file)))
    if extra:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    return nb


class Kernel:
    """One notebook in a live kernel (nbclient), cells run one at a time, errors kept in the outputs."""

    def __init__(self, nb: nbformat.NotebookNode) -> None:
        self.nb = nb
        self.client = NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=True,
                                     kernel_manager_class=LocalKernelManager,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})

    def __enter__(self) -> "Kernel":
        self._ctx = self.client.setup_kernel()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._ctx.__exit__(*exc)

    def run(self, index: int) -> list[str]:
        """Run one cell; its errors as "Name: value" lines."""
        cell = self.client.execute_cell(self.nb.cells[index], index)
        return [f"{o['ename']}: {o['evalue']}" for o in cell.outputs if o["output_type"] == "error"]

    def run_all(self) -> dict[int, list[str]]:
        return {i: e for i, c in enumerate(self.nb.cells) if c.cell_type == "code" and (e := self.run(i))}

    def index(self, text: str) -> int:
        return next(i for i, c in enumerate(self.nb.cells) if text in c.source)

    def value(self, expression: str) -> str:
        """Evaluate an expression in the kernel; its text/plain result."""
        self.nb.cells.append(nbformat.v4.new_code_cell(expression))
        index = len(self.nb.cells) - 1
        errors = self.run(index)
        assert not errors, errors
        return self.nb.cells[index].outputs[0]["data"]["text/plain"]


def test_run_all_rerun_the_setup_cell_and_the_next_notebook_writes_into_the_same_run(params_file, tmp_path):
    with Kernel(notebook("00_preflight", params_file)) as k:
        assert k.run_all() == {}
        first = k.value("str(section.run_dir)")
        setup = k.index("open_section(")
        assert k.run(setup) == [], "re-running the setup cell, after the notebook defined its own names"
        assert k.value("str(section.run_dir)") == first, "a re-run keeps the run folder"
        assert k.run(k.index("preflight.run_checks")) == []
    run_dir = Path(first.strip("'"))
    assert run_dir.parent == tmp_path / "reports" and run_dir.name.startswith("interactive-")
    assert json.loads((tmp_path / "reports" / POINTER).read_text())["run_dir"] == str(run_dir)

    with Kernel(notebook("30_plan", params_file)) as k:
        assert k.run_all() == {}
        assert k.value("str(section.run_dir)").strip("'") == str(run_dir), "the next notebook finds the run"
    assert {p.stem for p in (run_dir / "results").glob("*.json")} == {"00_preflight", "30_plan"}

    with Kernel(notebook("70_monitoring", params_file)) as k:
        assert k.run_all() == {}
    assert (run_dir / "manifest.json").exists() and (run_dir / "index.html").exists(), "the last notebook seals"
    assert verify(run_dir).ok
    assert json.loads((run_dir / "provenance.json").read_text())["command"] == "notebook 70_monitoring"

    with Kernel(notebook("30_plan", params_file)) as k:
        assert k.run_all() == {}
        after = Path(k.value("str(section.run_dir)").strip("'"))
    assert after != run_dir and after.name.startswith("interactive-"), "a sealed run is over: a new one starts"


def test_an_acting_cell_makes_the_live_input_checks_and_takes_the_run_lock(sandbox, params_file):
    creds = sandbox.credentials()
    with Kernel(notebook("20_add_masters", params_file)) as k:
        assert k.run(k.index("open_section(")) == [
            "BadInput: no parameters cell has run in this kernel: run the cell tagged `parameters` first"]
        assert k.run(k.index("params_file: str")) == [] and k.run(k.index("open_section(")) == []
        act = k.index("section.confirm(topo)")
        other = RunLock(SEED, creds, new_run_id(), "runbook run (another SRE)").acquire()
        try:
            errors = k.run(act)
        finally:
            other.release()
        assert errors and errors[0].startswith("RunLocked: the cluster at") and "another SRE" in errors[0]
        assert observe(SEED, creds).by_address(NEW) is None, "nothing changed"

        node_client(NEW, creds).execute_command("CLUSTER MEET", "127.0.0.1", PORT + 7)
        try:
            time.sleep(1)
            errors = k.run(act)
        finally:
            for address in (NEW, NEW_REPLICA):
                node_client(address, creds).execute_command("CLUSTER RESET", "HARD")
        assert errors and "new_masters.0.address" in errors[0] and "already knows 1 other nodes" in errors[0], errors
        assert observe(SEED, creds).by_address(NEW) is None, "nothing changed"

        assert k.run(act) == []
        assert observe(SEED, creds).by_address(NEW) is not None, "with the checks passed and the lock taken it acts"
        client = cluster_client([SEED], creds)
        assert read_lock(client) is None, "the lock is released when the cell ends"
        client.close()


def test_a_kernel_that_started_the_watchers_stops_them_when_it_shuts_down(params_file):
    start = "from runbook_lib.watch import watchers\nwatchers.start(section.params, section.run_dir, [])"
    nb = notebook("30_plan", params_file, extra=start)
    with Kernel(nb) as k:
        assert k.run(k.index("params_file: str")) == [] and k.run(k.index("open_section(")) == []
        assert k.run(len(nb.cells) - 1) == []
        run_dir = Path(k.value("str(section.run_dir)").strip("'"))
        pids = watchers.running(run_dir)["sampler"]
        assert pids
    deadline = time.time() + 15
    while watchers.running(run_dir) and time.time() < deadline:
        time.sleep(0.2)
    assert watchers.running(run_dir) == {}, "the kernel's exit stopped the sampler it started"
    assert not (run_dir / "watch.heartbeat").exists()


def test_watchers_stop_by_themselves_after_an_idle_heartbeat(params_file, tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_WATCH_IDLE_S", "3")
    run_dir = tmp_path / "idle-run"
    run_dir.mkdir()
    watchers.start(load_params(params_file), run_dir, [])
    try:
        deadline = time.time() + 20
        while watchers.running(run_dir) and time.time() < deadline:
            time.sleep(0.2)
        assert watchers.running(run_dir) == {}, "no live run touched the heartbeat: the sampler stopped"
        assert "idle: no live run touched watch.heartbeat" in (run_dir / "metrics" / "sampler.log").read_text()
    finally:
        watchers.stop_all(run_dir)


def test_validation_run_twice_gives_the_same_probe_verdict(sandbox, tmp_path):
    params = load_params(sandbox.root / "params.yaml")
    run_dir = tmp_path / "probe-run"
    TrafficProbe.from_params(params, run_dir).start()
    time.sleep(1.5)
    first = watchers.finish_probe(params, run_dir)
    again = watchers.finish_probe(params, run_dir)
    assert first.acknowledged_writes > 0 and first.lost_writes == [] and first.verified_writes == first.acknowledged_writes
    assert again.to_dict() == first.to_dict(), "a second validation reuses the first verification"
    assert [c.status for c in acceptance.acceptance(run_dir, again, params.model.gates).checks][1:3] == ["pass", "pass"]
