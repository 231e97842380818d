"""Detached worker processes: they outlive the notebook kernel that starts them and any process can stop them.

A worker runs as `python -m <module> <args>` in its own session (a kernel shutdown or Ctrl-C does not reach it),
gets its settings and secrets as JSON on stdin (never in argv, the environment or a file), stops when a flag file
appears, when its folder disappears, at a deadline, or when no live run has touched the run folder's heartbeat file
for its idle limit (a notebook left open, a kernel killed), and is identified by its command line, not by pid alone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd

HEARTBEAT_FILE = "watch.heartbeat"
IDLE_ENV = "RUNBOOK_WATCH_IDLE_S"
IDLE_S = 1800.0
"""Watchers stop by themselves after this long without a heartbeat from a live run (env RUNBOOK_WATCH_IDLE_S)."""
HEARTBEAT_EVERY_S = 10.0


def idle_limit_s() -> float:
    """The idle limit new watchers get: RUNBOOK_WATCH_IDLE_S when set (seconds, > 0), else IDLE_S."""
    raw = os.environ.get(IDLE_ENV, "")
    try:
        value = float(raw) if raw else IDLE_S
    except ValueError:
        value = IDLE_S
    return value if value > 0 else IDLE_S


def start_heartbeat(run_dir: Path, idle_s: float) -> Path:
    """Create (or renew) a run folder's heartbeat file, holding the idle limit its watchers obey."""
    path = Path(run_dir) / HEARTBEAT_FILE
    path.write_text(json.dumps({"idle_stop_s": idle_s, "created": time.time()}))
    return path


def touch_heartbeat(run_dir: Path) -> bool:
    """A live run is working in this folder: renew its heartbeat, when its watchers have one; whether it had."""
    try:
        os.utime(Path(run_dir) / HEARTBEAT_FILE)
        return True
    except OSError:
        return False


def end_heartbeat(run_dir: Path) -> None:
    """The run's watchers stopped: remove the heartbeat file (nothing touches a sealed folder)."""
    (Path(run_dir) / HEARTBEAT_FILE).unlink(missing_ok=True)


class Heartbeat:
    """Touches a run folder's heartbeat every `every_s` from a thread while something works there (a notebook cell,
    a CLI command); `start`/`stop`, or use it as a context manager."""

    def __init__(self, run_dir: Path, every_s: float = HEARTBEAT_EVERY_S) -> None:
        self.run_dir, self.every_s = Path(run_dir), every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Heartbeat":
        if self._thread is None:
            self._stop.clear()
            touch_heartbeat(self.run_dir)
            self._thread = threading.Thread(target=self._beat, name="runbook-heartbeat", daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.every_s):
            touch_heartbeat(self.run_dir)

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=self.every_s + 1)
            self._thread = None
            touch_heartbeat(self.run_dir)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def spawn(module: str, args: list[str], payload: dict, log_path: Path) -> subprocess.Popen:
    """Start `python -m module *args` detached, with `payload` as JSON on its stdin and output appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(payload).encode())
    proc.stdin.close()
    return proc


def read_payload() -> dict:
    """In a worker: the JSON payload its starter wrote to stdin."""
    return json.loads(sys.stdin.read() or "{}")


def run_main(name: str, work: Callable[[dict], str]) -> int:
    """A worker's entry point: run `work` on the payload, print why it stopped (or its traceback); the exit code."""
    try:
        reason = work(read_payload())
    except Exception as e:
        traceback.print_exc()
        print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
        return 1
    print(f"{name} stopped: {reason}", flush=True)
    return 0


def is_running(pid: int, marker: str) -> bool:
    """True when pid is alive (not a zombie) and its command line contains `marker` (guards against pid reuse)."""
    proc = Path(f"/proc/{pid}")
    if not proc.parent.exists():
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return False
    return state != "Z" and marker in cmdline


def stop(pids: list[int], marker: str, stop_file: Path, timeout_s: float = 10.0) -> list[int]:
    """Ask workers to stop (flag file), wait, then SIGTERM, then SIGKILL; returns the pids that needed a signal."""
    stop_file.parent.mkdir(parents=True, exist_ok=True)
    stop_file.touch()
    _wait_gone(pids, marker, timeout_s)
    signalled = [p for p in pids if is_running(p, marker)]
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        alive = [p for p in signalled if is_running(p, marker)]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        _wait_gone(alive, marker, wait_s)
    return signalled


def _wait_gone(pids: list[int], marker: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(is_running(p, marker) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def idle_for(heartbeat: Path, now: float) -> tuple[float, float] | None:
    """(seconds since the heartbeat was touched, its idle limit), or None without a readable heartbeat file."""
    try:
        limit = float(json.loads(heartbeat.read_text())["idle_stop_s"])
        return now - heartbeat.stat().st_mtime, limit
    except (OSError, ValueError, KeyError, TypeError):
        return None


class StopFlag:
    """In a worker: set once the stop file exists, its folder is gone, SIGTERM arrived, the deadline passed, or the
    run folder's `heartbeat` file (when given and present) went untouched for its idle limit."""

    def __init__(self, stop_file: Path, deadline: float, check_every_s: float = 0.1,
                 heartbeat: Path | None = None, heartbeat_every_s: float = 2.0) -> None:
        self.stop_file = stop_file
        self.deadline = deadline
        self.check_every_s = check_every_s
        self.heartbeat = heartbeat
        self.heartbeat_every_s = heartbeat_every_s
        self.reason = ""
        self._next_check = 0.0
        self._next_heartbeat = 0.0
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        self.reason = "SIGTERM"

    def is_set(self) -> bool:
        """Cheap to call in a tight loop: the file system is looked at every `check_every_s` at most."""
        if self.reason:
            return True
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_every_s
        if self.stop_file.exists():
            self.reason = "stop requested"
        elif not self.stop_file.parent.exists():
            self.reason = f"{self.stop_file.parent} was removed"
        elif time.time() > self.deadline:
            self.reason = "maximum run time reached"
        elif self.heartbeat is not None and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_every_s
            idle = idle_for(self.heartbeat, time.time())
            if idle is not None and idle[0] > idle[1]:
                self.reason = (f"idle: no live run touched {self.heartbeat.name} for {idle[0]:.0f} s (limit "
                               f"{idle[1]:.0f} s, {IDLE_ENV})")
        return bool(self.reason)


def read_appended_csv(path: Path, since: float | None = None, dtype: dict | None = None) -> pd.DataFrame:
    """A CSV a worker appends to, whose first column is a time: complete lines only (a worker may be mid-line), and
    with `since` only rows from that time on, found by reading back from the end of the file rather than all of it."""
    with open(path, "rb") as f:
        header = f.readline()
        start = f.tell()
        size = f.seek(0, io.SEEK_END)
        pos, step = size, 1 << 18
        while since is not None and pos > start:
            pos = max(start, pos - step)
            f.seek(pos)
            if pos > start:
                f.readline()
            first = f.readline()
            try:
                if first.endswith(b"\n") and float(first.split(b",", 1)[0]) < since:
                    break
            except ValueError:
                pass
            step *= 2
        f.seek(start if since is None else pos)
        if since is not None and pos > start:
            f.readline()
        body = f.read(max(0, size - f.tell()))
    body = body[:body.rfind(b"\n") + 1]
    if not header or not body:
        return pd.DataFrame(columns=header.decode().strip().split(",") if header else [])
    df = pd.read_csv(io.BytesIO(header + body), dtype=dtype, keep_default_na=False)
    first_col = df.columns[0]
    df[first_col] = df[first_col].astype(float)
    return df if since is None else df[df[first_col] >= since].reset_index(drop=True)
