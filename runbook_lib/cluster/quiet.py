"""Quiet spells: short times, every `migration.quiet_every_s` while slots move, in which no slot is open and none
is being handed over. The clients' latency in them is the control the verdict and the governor compare the moving
times with: measured in the same minutes, on the same machine, under the same load, so a drift of the machine's
load moves both sides alike (the way canary analysis compares a canary with a baseline running beside it).

A spell starts once every worker of the batch has closed or handed over its group of slots and `HANDOVER_TAIL_S`
has passed after the last hand-over (a hand-over disturbs clients a little after it: MOVED, a topology refresh), so
the spell and the moving times never overlap. Its start and end are journaled (`quiet_start` with the seconds the
workers waited to drain, `quiet_end`), which is how the report tells what the spells cost in time.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from runbook_lib.cluster.journal import Journal

HANDOVER_TAIL_S = 1.0
"""A slot counts as moving until this long after its hand-over (MOVED, topology refreshes follow it)."""


FIRST_SPELL_S = 5.0
"""The first spell comes this soon after the first batch starts (then every `every_s`): until there is a control the
governor can only judge against the pre-move baseline, which the run's own load has often drifted from."""


class QuietSpells:
    """The barrier the mover's workers pass before each group of slots: when a spell is due, every worker waits until
    all have arrived (or finished their slots), one of them keeps the spell, then all go on."""

    def __init__(self, journal: Journal, every_s: float, quiet_s: float, tail_s: float = HANDOVER_TAIL_S,
                 now: Callable[[], float] = time.time) -> None:
        self.journal, self.every_s, self.quiet_s, self.tail_s = journal, every_s, quiet_s, tail_s
        self._now = now
        self._cond = threading.Condition()
        self._workers = 0
        self._arrived = 0
        self._spell = 0
        self._keeper = False
        self._due: float | None = None
        self._first_arrival = 0.0
        self.spells = 0
        self.spent_s = 0.0

    @property
    def enabled(self) -> bool:
        return self.every_s > 0 and self.quiet_s > 0

    def start_batch(self, workers: int) -> None:
        """A batch starts with this many workers; the first spell is due `FIRST_SPELL_S` (at most `every_s`) after the
        first batch starts."""
        with self._cond:
            self._workers, self._arrived = workers, 0
            if self._due is None:
                self._due = self._now() + min(self.every_s, FIRST_SPELL_S)

    def worker_done(self) -> None:
        """A worker has no slot left (or stopped): the others no longer wait for it."""
        with self._cond:
            self._workers = max(0, self._workers - 1)
            self._cond.notify_all()

    def before_group(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Return at once unless a spell is due; then wait for the other workers and the spell (one worker keeps
        it: waits out the hand-over tail, journals, stays quiet `quiet_s`). `stopping` ends the wait early."""
        if not self.enabled:
            return
        with self._cond:
            if self._due is None or self._now() < self._due:
                return
            spell = self._spell
            self._arrived += 1
            if self._arrived == 1:
                self._first_arrival = self._now()
            while spell == self._spell and not stopping():
                if not self._keeper and self._arrived >= self._workers:
                    self._keeper = True
                    self._keep()
                    return
                self._cond.wait(0.1)

    def _keep(self) -> None:
        """The spell itself, run by one worker holding the condition only between its waits."""
        drained = self._now() - self._first_arrival
        self._wait_until(self._now() + self.tail_s)
        start = self._now()
        self.journal.record("quiet_start", drained_s=round(drained, 3), tail_s=self.tail_s)
        self._wait_until(start + self.quiet_s)
        end = self._now()
        self.journal.record("quiet_end", seconds=round(end - start, 3))
        self.spells += 1
        self.spent_s += end - self._first_arrival
        self._due = end + self.every_s
        self._arrived, self._keeper = 0, False
        self._spell += 1
        self._cond.notify_all()

    def _wait_until(self, deadline: float) -> None:
        while (left := deadline - self._now()) > 0:
            self._cond.wait(left)
