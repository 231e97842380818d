"""A watcher run as background workers (the probe's, the sampler's), recorded in a folder of the run folder: its state
file, its start (each worker spawned and waited for until it is ready), which of its workers still run, and its stop.

The processes themselves (spawned detached, identified by their command line, stopped, their stop flag) are
`detached`'s; this is what the probe and the sampler add on top of it in the same way, so that a watcher started in
one process is found and stopped from any other by its run folder alone.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

from runbook_lib.config import Credentials
from runbook_lib.exceptions import BadInput, RunbookError
from runbook_lib.watch import detached

STOP_FILE = "stop"


class BackgroundWorkers:
    """Workers run as `python -m <module> --dir <run_dir>/<folder> ...`, recorded in `<folder>/<state_file>`
    (settings, pids, when started and stopped) and stopped by the file `<folder>/stop`.

    A subclass names its folder, state file, module and `title` (for messages), says what its state holds
    (`_new_state`) and how many workers it runs; each worker writes a log, and its ready file once it works.
    """

    folder: ClassVar[str]
    state_file: ClassVar[str]
    module: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, run_dir: str | Path, creds: Credentials | None, max_runtime_s: float) -> None:
        self.creds = creds
        self.max_runtime_s = max_runtime_s
        self.dir = Path(run_dir).resolve() / self.folder
        self._procs: list[subprocess.Popen] = []

    @classmethod
    def was_started(cls, run_dir: str | Path) -> bool:
        """Whether one was ever started in this run folder (by any process)."""
        return (Path(run_dir).resolve() / cls.folder / cls.state_file).exists()

    @classmethod
    def recorded(cls, run_dir: str | Path) -> dict:
        """The state file of the one started in a run folder, to attach to it; BadInput when none was started."""
        path = Path(run_dir).resolve() / cls.folder / cls.state_file
        if not path.exists():
            raise BadInput(f"no {cls.title} was started in {Path(run_dir).resolve()} ({path} does not exist)")
        return json.loads(path.read_text())

    @property
    def state_path(self) -> Path:
        return self.dir / self.state_file

    def state(self) -> dict:
        return json.loads(self.state_path.read_text()) if self.state_path.exists() else {}

    def _write_state(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def _marker(self) -> str:
        return f"{self.module} --dir {self.dir} "

    def _new_state(self) -> dict:
        """The settings the workers get in their state, besides when they started and their maximum run time."""
        raise NotImplementedError

    def _workers(self) -> int:
        return 1

    def _worker_args(self, worker: int) -> list[str]:
        """A worker's command-line arguments after `--dir <folder>`."""
        return ["--worker", str(worker)]

    def _worker_name(self, worker: int) -> str:
        return f"{self.title} worker {worker}"

    def _files(self, worker: int) -> tuple[Path, Path]:
        """(log, ready file) of a worker."""
        return self.dir / f"worker-{worker}.log", self.dir / f"worker-{worker}.ready"

    def alive(self) -> list[int]:
        """Pids of the workers that still run (each confirmed by its command line naming this folder)."""
        for proc in self._procs:
            proc.poll()
        return [p for p in self.state().get("pids", []) if detached.is_running(p, self._marker())]

    def start(self, ready_timeout_s: float = 15.0) -> None:
        """Start the workers and return once each one is ready; stop them all and raise with its log if one fails."""
        if self.creds is None:
            raise BadInput(f"the {self.title} needs credentials to start")
        if self.alive():
            raise BadInput(f"a {self.title} is already running in {self.dir}; stop it first")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / STOP_FILE).unlink(missing_ok=True)
        workers = range(self._workers())
        for worker in workers:
            self._files(worker)[1].unlink(missing_ok=True)
        state = {**self._new_state(), "max_runtime_s": self.max_runtime_s, "started": time.time(), "stopped": None,
                 "pids": []}
        payload = {"state": state, "credentials": asdict(self.creds)}
        self._procs = [detached.spawn(self.module, ["--dir", str(self.dir), *self._worker_args(w)], payload,
                                      self._files(w)[0]) for w in workers]
        state["pids"] = [p.pid for p in self._procs]
        self._write_state(state)
        deadline = time.monotonic() + ready_timeout_s
        for worker, proc in zip(workers, self._procs):
            log, ready = self._files(worker)
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    self.stop(timeout_s=2.0)
                    lines = log.read_text(errors="replace").strip().splitlines()
                    raise RunbookError(f"{self._worker_name(worker)} did not start: "
                                       f"{lines[-1] if lines else 'no output'} (log: {log})")
                time.sleep(0.02)

    def stop(self, timeout_s: float = 10.0) -> list[int]:
        """Stop the workers (each ends what it is doing and flushes); returns the pids that had to be signalled, also
        kept in the state as `killed`."""
        state = self.state()
        if not state:
            raise BadInput(f"no {self.title} was started in {self.dir}")
        killed = detached.stop(state.get("pids", []), self._marker(), self.dir / STOP_FILE, timeout_s)
        for proc in self._procs:
            proc.poll()
        state["stopped"] = state.get("stopped") or time.time()
        state["killed"] = sorted(set(state.get("killed", [])) | set(killed))
        self._write_state(state)
        return killed


def stop_flag(folder: Path, state: dict) -> detached.StopFlag:
    """In a worker: its stop flag (the folder's stop file, its state's maximum run time, the run folder's heartbeat)."""
    return detached.StopFlag(folder / STOP_FILE, deadline=state["started"] + state["max_runtime_s"],
                             heartbeat=folder.parent / detached.HEARTBEAT_FILE)

