"""Gates and the adaptive throttle: before each batch, fresh samples decide go, slow down, or pause the run.

A failing gate halves the batch, the slots in flight, the keys per MIGRATE and the slot rate and doubles the pause,
then measures again; gates that keep failing for `gates.pause_after_s` pause the run between batches (no slot open),
with a message naming the gate, and `runbook resume` goes on. Passing gates restore the configured pace one step at a
time. Every decision is journaled.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from runbook_lib.checks import Check
from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Migration
from runbook_lib.exceptions import PaceStop
from runbook_lib.watch.gates import evaluate, gate_values
from runbook_lib.watch.timeline import moving_windows

Gate = Callable[[float | None], list[Check]]


class GatePaused(PaceStop):
    """A gate kept failing: the run paused between batches with the cluster consistent."""


@dataclass
class Decision:
    """One throttle decision, for the journal and the batch chart."""

    ts: float
    batch: int
    action: str
    failing: list[str]
    slots_per_batch: int
    slots_in_flight: int
    migrates_per_round_trip: int
    keys_per_migrate: int
    pause_s: float
    max_slots_per_s: float


def slower(s: Migration) -> Migration:
    """One step down: half the batch, slots in flight, MIGRATEs per round trip, keys per MIGRATE and slot rate (when
    one is set), twice the pause (at least 0.5 s)."""
    return s.model_copy(update={
        "slots_per_batch": max(1, s.slots_per_batch // 2), "slots_in_flight": max(1, s.slots_in_flight // 2),
        "migrates_per_round_trip": max(1, s.migrates_per_round_trip // 2),
        "keys_per_migrate": max(10, s.keys_per_migrate // 2),
        "pause_between_batches_s": min(10.0, max(0.5, s.pause_between_batches_s * 2)),
        "max_slots_per_s": min(s.max_slots_per_s, max(0.5, s.max_slots_per_s / 2)) if s.max_slots_per_s else 0.0})


def faster(s: Migration, limit: Migration) -> Migration:
    """One step back up towards the configured pace, never beyond it."""
    return s.model_copy(update={
        "slots_per_batch": min(limit.slots_per_batch, s.slots_per_batch * 2),
        "slots_in_flight": min(limit.slots_in_flight, s.slots_in_flight * 2),
        "migrates_per_round_trip": min(limit.migrates_per_round_trip, s.migrates_per_round_trip * 2),
        "keys_per_migrate": min(limit.keys_per_migrate, s.keys_per_migrate * 2),
        "pause_between_batches_s": max(limit.pause_between_batches_s, s.pause_between_batches_s / 2)
        if s.pause_between_batches_s > limit.pause_between_batches_s else limit.pause_between_batches_s,
        "max_slots_per_s": min(limit.max_slots_per_s, s.max_slots_per_s * 2) if limit.max_slots_per_s else 0.0})


@dataclass
class Throttle:
    """Decides the pace of each batch from a gate; `settings` is the pace the next batch uses."""

    configured: Migration
    gate: Gate
    journal: Journal
    pause_after_s: float = 60.0
    settings: Migration = None
    decisions: list[Decision] = field(default_factory=list)
    sleep: Callable[[float], None] = time.sleep
    min_window_s: float = 1.0

    def __post_init__(self) -> None:
        if self.settings is None:
            self.settings = self.configured

    def _decide(self, batch: int, action: str, failing: list[Check]) -> None:
        s = self.settings
        d = Decision(ts=time.time(), batch=batch, action=action, failing=[f"{c.name}: {c.detail}" for c in failing],
                     slots_per_batch=s.slots_per_batch, slots_in_flight=s.slots_in_flight,
                     migrates_per_round_trip=s.migrates_per_round_trip, keys_per_migrate=s.keys_per_migrate,
                     pause_s=s.pause_between_batches_s, max_slots_per_s=s.max_slots_per_s)
        self.decisions.append(d)
        self.journal.record("gate", **asdict(d))

    def before_group(self) -> Migration:
        """A fixed pace changes only between batches."""
        return self.settings

    def idle(self) -> AbstractContextManager[None]:
        """Nothing measures between batches, so a wait needs nothing stopped."""
        return nullcontext()

    def end(self) -> None:
        """Nothing runs between batches."""

    def before_batch(self, batch: int) -> Migration:
        """Evaluate the gate; returns the pace for the next batch, or pauses the run.

        A failing gate slows the pace one step and the next batch moves at it, so the gate judges latency while slots
        move, not the idle time after a slow-down (an idle cluster always passes). At the slowest pace it waits and
        measures again (only what came after the wait began counts), and pauses after `pause_after_s`.
        """
        first_failure = None
        since = None
        while True:
            failing = [c for c in self.gate(since) if c.status == "fail"]
            if not failing:
                if first_failure is None and self.settings != self.configured:
                    self.settings = faster(self.settings, self.configured)
                    self._decide(batch, "faster", [])
                elif first_failure is None:
                    self._decide(batch, "go", [])
                else:
                    self._decide(batch, "go after slowing", [])
                return self.settings
            now = time.time()
            first_failure = first_failure or now
            if now - first_failure >= self.pause_after_s:
                self._decide(batch, "pause", failing)
                names = ", ".join(c.name for c in failing)
                raise GatePaused(f"paused before batch {batch}: {names} kept failing for {self.pause_after_s:.0f} s "
                                 f"({failing[0].detail}). No slot is open and the cluster is consistent. Find the "
                                 "cause (load, a slow node) or change the gate in params, then `runbook resume`")
            slowed = slower(self.settings)
            if slowed != self.settings and first_failure == now:
                self.settings = slowed
                self._decide(batch, "slow down", failing)
                return self.settings
            self._decide(batch, "wait", failing)
            since = time.time()
            self.sleep(max(self.settings.pause_between_batches_s, self.min_window_s))


def _moving_window(run_dir: str | Path, window_s: float, reach_s: float = 120.0):
    """The window whose probe samples the gate judges: the latest `window_s` seconds during which slots were open
    or being handed over (from the journal), looking back at most `reach_s`; the plain last `window_s` before any
    slot moved. Returns (window length back from now, the moving spans in it or None)."""
    now = time.time()
    spans = [(max(a, now - reach_s), min(b, now)) for a, b in moving_windows(Journal(Path(run_dir) / "journal.jsonl")
                                                                                .entries(), now) if b > now - reach_s]
    if not spans:
        return window_s, None
    covered, start = 0.0, now
    for a, b in reversed(spans):
        start = max(a, b - (window_s - covered))
        covered += b - start
        if covered >= window_s:
            break
    return max(now - start, 0.5), [(a, b) for a, b in spans if b > start]


def run_gate(run_dir: str | Path, gates: Gates, baseline_p99_ms: float | None, window_s: float = 5.0) -> Gate:
    """The gate of a run folder: the sampler's node metrics over the last `window_s`, and the probe's latencies over
    the last `window_s` seconds in which slots moved (not the pauses between them)."""

    def gate(since: float | None = None) -> list[Check]:
        if since is not None:
            window, spans = min(window_s, max(0.5, time.time() - since)), None
        else:
            window, spans = _moving_window(run_dir, window_s)
        return evaluate(gate_values(run_dir, window_s=window, spans=spans), gates, baseline_p99_ms,
                        budget_floor_ms=gates.latency_floor_ms)
    return gate
