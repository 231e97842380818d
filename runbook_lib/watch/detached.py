"""Detached worker processes: they outlive the notebook kernel that starts them and any process can stop them.

A worker runs as `python -m <module> <args>` in its own session (a kernel shutdown or Ctrl-C does not reach it),
gets its settings and secrets as JSON on stdin (never in argv, the environment or a file), stops when a flag file
appears, when its folder disappears or at a deadline, and is identified by its command line, not by pid alone.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import pandas as pd


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


class StopFlag:
    """In a worker: set once the stop file exists, its folder is gone, SIGTERM arrived or the deadline passed."""

    def __init__(self, stop_file: Path, deadline: float, check_every_s: float = 0.1) -> None:
        self.stop_file = stop_file
        self.deadline = deadline
        self.check_every_s = check_every_s
        self.reason = ""
        self._next_check = 0.0
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
