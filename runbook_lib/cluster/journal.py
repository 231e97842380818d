"""The run journal: every change to the cluster appended as a JSON line, flushed and fsynced before the next."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

FAILPOINT_ENV = "RUNBOOK_FAILPOINT"


class Journal:
    """Append-only JSON-lines record of changes; each entry is durable before `record` returns (thread-safe)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._fd: int | None = None
        self._written = 0
        self._synced = 0

    def record(self, event: str, **fields) -> dict:
        """Append one event with a UTC timestamp and make it durable before returning.

        Group commit: concurrent workers append under one lock, and one fdatasync covers every line written before
        it started, so parallel movers do not queue behind each other's syncs.
        """
        now = time.time()
        entry = {"ts": now, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "event": event, **fields}
        line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.write(self._fd, line)
            self._written += 1
            mine = self._written
        with self._sync_lock:
            if self._synced < mine:
                covered = self._written
                os.fdatasync(self._fd)
                self._synced = covered
        return entry

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def entries(self) -> Iterator[dict]:
        """Every entry so far, oldest first (a torn last line from a crash is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue

    def read_from(self, offset: int) -> tuple[list[dict], int]:
        """The complete entries appended from byte `offset` on, and the offset after them: a line still being
        written waits for the next read, so followers (progress, the pace governor) read each entry once."""
        if not self.path.exists():
            return [], offset
        with open(self.path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        entries = []
        for line in chunk[:end].splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return entries, offset + end

    def open_slots(self) -> dict[int, dict]:
        """Slots this journal opened and never assigned, closed or found done: slot → the entry that opened it, with
        its `source` and `target`. A rescue (keys of a slot moved from a master that does not own it back to the
        owner) is open from its `slot_rescue` intent to its `slot_rescued`, as a move from the owner to the owner,
        unless a move of the same slot is open too, which then comes first."""
        moves: dict[int, dict] = {}
        rescues: dict[int, dict] = {}
        for e in self.entries():
            event = e["event"]
            if event == "slot_open":
                moves[e["slot"]] = e
            elif event == "slots_open":
                moves.update({s: e for s in e["slots"]})
            elif event in ("slot_assigned", "slot_closed", "slot_done"):
                moves.pop(e["slot"], None)
                rescues.pop(e["slot"], None)
            elif event == "slots_assigned":
                for s in e["slots"]:
                    moves.pop(s, None)
            elif event == "slot_rescue":
                rescues[e["slot"]] = {**e, "source": e["owner"], "target": e["owner"]}
            elif event == "slot_rescued":
                rescues.pop(e["slot"], None)
        return {**rescues, **moves}

    def last(self, *events: str) -> dict | None:
        """The latest entry of one of these events."""
        found = None
        for e in self.entries():
            if e["event"] in events:
                found = e
        return found


_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Crash the process with SIGKILL here when RUNBOOK_FAILPOINT names this point ("name" or "name:N" for the Nth hit).

    Tests use it to stop the mover at exact protocol steps, like a power cut; it does nothing otherwise.
    """
    wanted = os.environ.get(FAILPOINT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
