"""Progress while a section works, fed by the run's journal: slots moved of the plan, keys, the pace, the clients'
p99 against the budget, and the time left (tqdm's estimate from the rate so far).

The journal is the one source: the mover, the governor and every section write to it, so the same bar works for
`runbook run` (whose notebooks run in another process) and under a running JupyterLab cell.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from runbook_lib.cluster.journal import Journal


@dataclass
class Progress:
    """What the journal says so far about the migration in progress (pure state, fed line by line)."""

    total: int | None = None
    slots: int = 0
    keys: int = 0
    pace: dict | None = None
    last_event: str = ""
    started: float | None = None

    def feed(self, entry: dict) -> None:
        """Take one journal entry into account."""
        event = entry.get("event", "")
        self.last_event = event
        if event == "migration_start":
            self.total, self.slots, self.keys, self.started = int(entry.get("moves", 0)), 0, 0, entry.get("ts")
        elif event == "slots_assigned":
            self.slots += len(entry.get("slots", []))
        elif event == "keys_migrated":
            self.keys += sum(int(n) for n in entry.get("slots", {}).values())
        elif event == "pace":
            self.pace = entry

    def postfix(self) -> str:
        """keys, the pace and the clients' p99 against the budget, for the bar's tail."""
        parts = [f"keys {self.keys:,}"]
        p = self.pace
        if p:
            parts.append(f"pace {p['slots_per_s']:g} slots/s ({p['action']})")
            if p.get("p99_ms") is not None and p.get("limit_ms"):
                parts.append(f"p99 {p['p99_ms']:.2f} ms of {p['limit_ms']:.2f} ms budget")
            elif p.get("ratio") is not None:
                parts.append(f"p99 x{p['ratio']:.2f} of baseline (budget x{p['limit']:.2f})")
        return ", ".join(parts)


@dataclass
class JournalFollower:
    """A thread that reads new journal lines every `interval_s` and shows them as a tqdm bar (slots of the plan once
    the migration started; elapsed time and the last event before)."""

    path: Path
    desc: str = "working"
    interval_s: float = 1.0
    file: IO | None = None
    state: Progress = field(default_factory=Progress)
    _offset: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _bar: tqdm | None = None

    def __enter__(self) -> "JournalFollower":
        if self.path.exists():
            self._offset = self.path.stat().st_size
        self._thread = threading.Thread(target=self._loop, name="journal-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def read(self) -> list[dict]:
        """Complete journal lines appended since the last read."""
        entries, self._offset = Journal(self.path).read_from(self._offset)
        return entries

    def poll(self) -> None:
        """Feed new entries and redraw the bar."""
        for entry in self.read():
            self.state.feed(entry)
        s = self.state
        if s.total is None:
            return
        if self._bar is None:
            out = self.file or sys.stderr
            tty = hasattr(out, "isatty") and out.isatty()
            self._bar = tqdm(total=s.total, unit="slot", desc=self.desc, file=out, mininterval=1 if tty else 30,
                             dynamic_ncols=tty, ascii=not tty)
        self._bar.set_postfix_str(s.postfix(), refresh=False)
        self._bar.update(s.slots - self._bar.n)


def follow(journal_path: Path, desc: str, file: IO | None = None, interval_s: float = 1.0) -> JournalFollower:
    """A context manager showing the progress of whatever the journal records while the block runs."""
    return JournalFollower(Path(journal_path), desc=desc, interval_s=interval_s, file=file)

