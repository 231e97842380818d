"""One run's hold on the cluster and on its run folder, the same for every entry point: `runbook run` (the papermill
runner), a notebook cell run by hand (one kernel per notebook, `runbook_lib.run.interactive`) and the acting
commands (`runbook resume`, `runbook rollback`, `runbook seal`).

A `RunContext` holds the run's id and start, the cluster's run lock (its own thread keeps the lock key alive), the
run folder's heartbeat (the probe and sampler stop by themselves when it goes untouched), the invocation record
written to provenance.json, and the seal: watchers stopped, provenance, the params copy, index.html, the manifest
last. Also here: which folder a run writes into (a new one, or the one a continued run keeps).
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

from runbook_lib.cluster.lock import RunLock, new_run_id
from runbook_lib.config import Params, known_secrets
from runbook_lib.exceptions import BadInput
from runbook_lib.run import audit
from runbook_lib.run.audit import MANIFEST
from runbook_lib.run.report import NOTEBOOKS_DIR, SectionResult, available, earlier_results, write_index
from runbook_lib.watch import watchers
from runbook_lib.watch.detached import Heartbeat


def new_run_dir(report_dir: Path) -> Path:
    """A fresh folder named after the UTC time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = report_dir / stamp
    n = 1
    while run_dir.exists():
        n += 1
        run_dir = report_dir / f"{stamp}-{n}"
    run_dir.mkdir(parents=True)
    return run_dir


def continued_run_dir(report_dir: Path, given: str | Path | None = None, option: str = "--run-dir") -> Path:
    """The run folder to continue: the one given (it must hold a baseline.json), or the newest under `report_dir`
    whose baseline.json was taken before the expansion, so that a continued run keeps its journal, its lock record
    and the before-picture its verdict compares with. Raises BadInput when there is none; `option` names the
    command-line option that gives one."""
    if given:
        run_dir = Path(given).resolve()
        if not (run_dir / "baseline.json").exists():
            raise BadInput(f"{run_dir} holds no baseline.json; give the folder of a run that passed 00_preflight")
        return run_dir
    runs = sorted((p for p in report_dir.glob("*") if _pre_expansion(p / "baseline.json")),
                  key=lambda p: p.stat().st_mtime)
    if not runs:
        raise BadInput(f"no run folder under {report_dir} has a baseline.json taken before the expansion (00_preflight "
                       f"writes it); give the run folder to continue with {option}")
    return runs[-1]


def _pre_expansion(baseline: Path) -> bool:
    try:
        return bool(json.loads(baseline.read_text()).get("pre_expansion"))
    except (OSError, ValueError, AttributeError):
        return False


def sealed(run_dir: Path) -> bool:
    """Whether the folder was sealed (its manifest written): the run it belongs to has ended."""
    return (run_dir / MANIFEST).exists()


class RunContext:
    """One run in one process: its id and start, the run lock while held, the folder's heartbeat, its record, its
    seal. `params` is the params file the run acts on (a notebook re-opened with an edited file replaces it)."""

    def __init__(self, params: Params, run_dir: Path | None, run_id: str = "", started: float | None = None) -> None:
        self.params = params
        self.run_dir = run_dir
        self.run_id = run_id or new_run_id()
        self.started = time.time() if started is None else started
        self.lock: RunLock | None = None
        self.heartbeat = Heartbeat(run_dir) if run_dir is not None else None

    def take_lock(self, command: str, take_over: bool = False) -> RunLock:
        """Take the cluster's run lock for `command` (RunLocked names a live holder; `take_over` replaces a dead
        one's); its heartbeat keeps it until `release`."""
        self.lock = RunLock(self.params.model.cluster.seed, self.params.credentials(), self.run_id, command,
                            str(self.run_dir or "")).acquire(take_over)
        return self.lock

    def release(self) -> bool:
        """Give the run lock back; whether it was still ours (False when none was held)."""
        lock, self.lock = self.lock, None
        return lock.release() if lock is not None else False

    @contextlib.contextmanager
    def holding(self, command: str, take_over: bool = False) -> Iterator[RunLock]:
        """Hold the run lock for the duration of a `with` block."""
        lock = self.take_lock(command, take_over)
        try:
            yield lock
        finally:
            self.release()

    def working(self) -> contextlib.AbstractContextManager:
        """The run folder's heartbeat ticking for the duration of a `with` block (nothing without a run folder)."""
        return self.heartbeat if self.heartbeat is not None else contextlib.nullcontext()

    def record(self, command: str, exit_code: int, **details) -> dict:
        """This invocation as provenance.json records it: who ran which code where, when, on which params, how it
        ended."""
        return audit.invocation(command, self.run_id, self.params, self.started, time.time(), exit_code=exit_code,
                                **details)

    def seal(self, command: str, exit_code: int, ran: list[SectionResult], notebooks_dir: Path = NOTEBOOKS_DIR,
             **details) -> dict:
        """End the run: stop its watchers, write provenance (this invocation and the sections it `ran`), the params
        copy and index.html (listing the sections of `notebooks_dir`), then the manifest last. Returns
        audit.finish's answer and the watchers stopped."""
        record = self.record(command, exit_code, sections=[
            {"name": s.name, "status": s.status, "summary": s.summary, "seconds": round(s.seconds, 2)} for s in ran],
            **details)
        stopped = watchers.stop_all(self.run_dir)
        audit.record(self.run_dir, self.params, record, known_secrets())
        write_index(self.run_dir, ran, available(notebooks_dir))
        return {**audit.finish(self.run_dir, self.run_id, known_secrets()), "stopped": stopped}

    def seal_recorded(self, command: str) -> dict:
        """Seal a folder no runner sealed (a run stepped through by hand, `runbook seal`) from the verdicts its
        sections recorded (exit code 1 when one failed)."""
        done = earlier_results(self.run_dir)
        return self.seal(command, 1 if any(s.status == "fail" for s in done) else 0, done)

    def reseal(self, command: str, exit_code: int) -> dict:
        """After a command acted in a folder sealed before: its record added to provenance and a new manifest (the
        index stays as the run wrote it)."""
        return audit.seal(self.run_dir, self.params, self.record(command, exit_code), known_secrets())
