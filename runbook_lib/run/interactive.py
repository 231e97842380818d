"""A run stepped through by hand (JupyterLab) with the safeguards of `runbook run`: one run folder per run, the run
lock and the live input checks before a cell changes the cluster, watchers that end with the run, the folder sealed.

- **The run folder.** A notebook given no `run_dir` writes into the interactive run recorded in
  `<report.dir>/interactive-run.json` (named once, when the run's first notebook opens it, after the UTC time), until
  that folder is sealed: the run's last notebook (70_monitoring, or 90_rollback) seals it when it passes, and
  `runbook seal DIR` seals it by hand. The next notebook after that starts a new run. A kernel keeps the folder it
  opened, so re-running a cell never switches folders.
- **The lock.** A cell that acts (`Section.confirm` said yes) first checks the params' nodes live, as `runbook run`
  does (a new node that is not empty stops it), then takes the cluster's run lock and holds it until the cell ends
  (or the kernel does), through the run's `RunContext` as every entry point does (`runbook_lib.run.context`).
  Under `runbook run` (which sets RUNBOOK_RUN_ID for its kernels) the runner holds the lock, checked in the cluster,
  and seals the folder itself.
- **The watchers.** While a cell runs, the run folder's heartbeat is touched; the probe and sampler stop by
  themselves when it goes untouched for their idle limit. A kernel that started them stops them when it shuts
  down (atexit).
"""

from __future__ import annotations

import atexit
import getpass
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from runbook_lib.cluster.connection import LOCK_CLIENT_NAME, cluster_client
from runbook_lib.cluster.lock import RUN_ID_ENV, RunLock, new_run_id, read_lock
from runbook_lib.cluster.topology import Topology
from runbook_lib.config import Params
from runbook_lib.run.context import RunContext, sealed
from runbook_lib.run.inputs import check_new_nodes
from runbook_lib.watch import watchers

POINTER = "interactive-run.json"
"""In the report folder: the interactive run notebooks given no run_dir write into."""
RUN_RECORD = "interactive.json"
"""In an interactive run folder: its run id, start, params file and who started it."""
RUN_ENDS = ("70_monitoring", "90_rollback")
"""The sections whose passing ends an interactive run (and seals its folder)."""


@dataclass(frozen=True)
class RunInfo:
    """One run a notebook writes into: its folder, id, start, params file, and whether `runbook run` drives it."""

    run_dir: Path
    run_id: str
    started: float
    params_file: str
    headless: bool = False

    def record(self) -> dict:
        return {"run_id": self.run_id, "started": self.started, "params_file": self.params_file,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
                "by": f"{getpass.getuser()}@{platform.node()}"}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _new_folder(report_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir, n = report_dir / f"interactive-{stamp}", 1
    while run_dir.exists():
        n += 1
        run_dir = report_dir / f"interactive-{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def pointed_run(params: Params) -> RunInfo | None:
    """The interactive run recorded in the report folder for this params file, while its folder is not sealed."""
    data = _read(params.report_dir / POINTER)
    run_dir = Path(data.get("run_dir", ""))
    if not data or data.get("params_file") != str(params.path) or not run_dir.is_dir() or sealed(run_dir):
        return None
    return RunInfo(run_dir=run_dir, run_id=data["run_id"], started=float(data["started"]),
                   params_file=str(params.path))


def start_run(params: Params) -> RunInfo:
    """A new interactive run: a fresh folder, recorded in it and in the report folder's pointer."""
    run = RunInfo(run_dir=_new_folder(params.report_dir), run_id=new_run_id(), started=time.time(),
                  params_file=str(params.path))
    (run.run_dir / RUN_RECORD).write_text(json.dumps(run.record(), indent=2))
    (params.report_dir / POINTER).write_text(json.dumps({"run_dir": str(run.run_dir), **run.record()}, indent=2))
    return run


def given_run(params: Params, run_dir: Path) -> RunInfo:
    """The run of a folder given as `run_dir`: the runner's (RUNBOOK_RUN_ID), or one recorded in the folder, or a
    run by hand that starts in it now."""
    runner = os.environ.get(RUN_ID_ENV, "")
    if runner:
        return RunInfo(run_dir=run_dir, run_id=runner, started=time.time(), params_file=str(params.path),
                       headless=True)
    data = _read(run_dir / RUN_RECORD)
    if data.get("run_id"):
        return RunInfo(run_dir=run_dir, run_id=data["run_id"], started=float(data.get("started", time.time())),
                       params_file=str(params.path))
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunInfo(run_dir=run_dir, run_id=new_run_id(), started=time.time(), params_file=str(params.path))
    (run_dir / RUN_RECORD).write_text(json.dumps(run.record(), indent=2))
    return run


class KernelSession:
    """What one kernel holds for the runs it works in: the run folder per params file, each run's context (its
    heartbeat ticking while a cell runs, the lock taken by the running cell, its seal), and the watchers it started
    (stopped at exit)."""

    def __init__(self) -> None:
        self.runs: dict[tuple[str, str], RunInfo] = {}
        self.contexts: dict[Path, RunContext] = {}
        self.started_watchers: set[Path] = set()
        self._before: dict[Path, set[int]] = {}
        self._hooked = False

    def run_for(self, params: Params, run_dir: str) -> RunInfo:
        """The run a notebook's parameters name: the given folder, else the one this kernel opened before, else the
        report folder's current interactive run, else a new one."""
        key = (str(params.path), run_dir)
        run = self.runs.get(key)
        if run is None:
            if run_dir:
                run = given_run(params, Path(run_dir).resolve())
            else:
                run = pointed_run(params) or start_run(params)
            self.runs[key] = run
        self.context(params, run)
        return run

    def context(self, params: Params, run: RunInfo) -> RunContext:
        """The context of `run` in this kernel, one per run folder, acting on the params the notebook opened last."""
        context = self.contexts.get(run.run_dir)
        if context is None:
            context = self.contexts[run.run_dir] = RunContext(params, run.run_dir, run.run_id, run.started)
        context.params = params
        return context

    def hook(self, shell) -> None:
        """Register the cell hooks with IPython and the exit handler, once per kernel."""
        if self._hooked or shell is None:
            return
        shell.events.register("pre_run_cell", self.pre_cell)
        shell.events.register("post_run_cell", self.post_cell)
        atexit.register(self.at_exit)
        self._hooked = True

    def pre_cell(self, *_info) -> None:
        for run_dir, context in self.contexts.items():
            self._before[run_dir] = _pids(run_dir)
            context.heartbeat.start()

    def post_cell(self, *_result) -> None:
        """After every cell: stop the heartbeat thread, release the locks the cell took, note watchers it started."""
        for run_dir, context in self.contexts.items():
            context.heartbeat.stop()
            if _pids(run_dir) - self._before.get(run_dir, set()):
                self.started_watchers.add(run_dir)
        self.release()

    def guard(self, params: Params, topo: Topology, run: RunInfo, section: str) -> RunLock | None:
        """Before a cell changes the cluster: the live input checks, then the run lock, held until the cell ends;
        nothing to take when the runner that holds the lock drives this run."""
        if run.headless and runner_holds_lock(params, run.run_id):
            return None
        check_new_nodes(params, params.credentials(), topo)
        context = self.context(params, run)
        if context.lock is not None:
            return None
        return context.take_lock(f"notebook {section}")

    def release(self) -> None:
        for context in self.contexts.values():
            context.release()

    def seal(self, params: Params, run: RunInfo, command: str) -> dict:
        """Seal the folder of a run by hand, as `runbook run` seals its own: watchers stopped, index.html,
        provenance, params copy, manifest last."""
        return self.context(params, run).seal_recorded(command)

    def at_exit(self) -> None:
        """The kernel is shutting down: release its locks, stop the watchers it started for a run by hand."""
        self.release()
        for context in self.contexts.values():
            context.heartbeat.stop()
        for run_dir in self.started_watchers:
            if not any(r.headless for r in self.runs.values() if r.run_dir == run_dir):
                watchers.stop_all(run_dir)


def _pids(run_dir: Path) -> set[int]:
    return {p for pids in watchers.running(run_dir).values() for p in pids}


def runner_holds_lock(params: Params, run_id: str) -> bool:
    """Whether the cluster's run lock is held by the run `run_id` (the runner that started this kernel)."""
    client = cluster_client([params.model.cluster.seed], params.credentials(), name=LOCK_CLIENT_NAME)
    try:
        state = read_lock(client)
    finally:
        client.close()
    return state is not None and state.holder.run_id == run_id


SESSION = KernelSession()
"""This process's session (one kernel per notebook)."""


def describe(run: RunInfo) -> str:
    """Where a notebook writes, for its provenance table."""
    if run.headless:
        return f"run {run.run_id} of `runbook run`"
    return (f"interactive run {run.run_id} since {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(run.started))}; "
            f"ends when {' or '.join(RUN_ENDS)} passes, or with `runbook seal {run.run_dir}`")
