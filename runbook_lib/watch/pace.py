"""The budget pace: a governor that sets how fast slots move from the clients' latency, about once a second.

`decide` is the controller, a pure function of one measurement: the ratio of the clients' p99 while slots moved in
the last window to the p99 of the reference, with its bootstrap interval (the verdict's own statistic,
watch/verdict.py), and the node gates of the article's section 1.5 (CPU, memory, replication lag, absolute latency).
The reference is the control, the probe's samples in the mover's recent quiet spells (`CONTROL_S`), measured in the
same minutes under the same load as the moving ones; the pre-move baseline stands in until the control has enough.
Requests a stalled probe worker owes count as late samples while the stall lasts (`TrafficProbe.outstanding`). It is
AIMD, the scheme TCP uses to find an unknown capacity from a noisy congestion signal:

- **Back off multiplicatively** (halve the slot rate, the slots in flight and the keys per MIGRATE) as soon as one
  window says the budget is exceeded or a node gate fails: a step up in latency is answered within one interval,
  and halving gets back under the limit in a few steps wherever the limit is. "Exceeded" is the point estimate over
  the limit while the interval says the clients are surely slower than at rest (its low end above 1), or the point
  estimate over twice the limit: a p99 of a few hundred requests jitters by tens of percent at rest, and backing
  off on that jitter would pin the pace to its floor for nothing.
- **Slow start**: until the first back-off a ramp doubles the rate (from the cautious 2 slots/s, the ceiling is
  five good windows away instead of sixteen), as TCP's slow start finds the neighbourhood of an unknown capacity
  before AIMD works within it.
- **Ramp additively** (one `step` of slots/s) when the point estimate is within the budget and the interval does
  not say the clients are surely slower than the reference (its low end at most 1); otherwise hold. Requiring the
  whole interval within +10 % would never ramp: the control is a few seconds of quiet spells, and its interval is
  tens of percent wide on shared cores, so the pace would stay at its cautious start whatever the clients felt. The
  asymmetry stays: a back-off needs a window surely over, a ramp only one not shown to hurt, and backing off halves
  while ramping adds a step.
- A window only counts samples taken since the last change of pace, so the pace is judged on what it did, and a
  window with too few requests holds (it cannot tell): a ramp needs `MIN_REQUESTS` (about 3 s at the probe's
  default 100 requests/s), a back-off `MIN_BACKOFF_REQUESTS`. The interval resamples whole seconds (the probe's
  slow samples come in runs), so it needs two seconds since the change: before that only a point estimate over
  twice the limit backs off, and nothing ramps. A running probe with no samples (a quiet spell, a wait between
  groups) is no evidence either: it holds. Only without a probe or a baseline do the node gates alone decide.

A proportional controller on the p99 would react to its noise (a 1-second p99 on shared cores jumps by tens of
percent between quiet windows); AIMD reacts to the sign of a sure measurement only, and its saw-tooth stays below
the limit on average, which is what the verdict judges. `Governor` runs `decide` in a thread while slots move,
journals every change with the measurement behind it (and the reference it judged by), hands the mover the pace before
each group of slots, does not tick while the run waits for its window (`idle`), and stops the run between slots when
gates keep failing at the slowest pace for `gates.pause_after_s`.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Migration
from runbook_lib.watch.gates import evaluate, gate_values
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.throttle import GatePaused
from runbook_lib.watch.timeline import inside, moving_windows, quiet_windows
from runbook_lib.watch.verdict import MIN_BLOCKS, effective_blocks, p99_ratio_interval, time_blocks

MIN_CONTROL_REQUESTS = 150
"""The control stands as the reference from this many requests (one 2 s spell at the probe's 100 requests/s): its
uncertainty is in the interval, and the baseline it replaces is the worse reference (the run's own load drifts
from it)."""
MIN_REQUESTS = 300
"""A window ramps only on at least this many client requests: a p99 rests on its few slowest (here 3)."""
MIN_BACKOFF_REQUESTS = 100
"""A window backs off on fewer: one over the budget on a hundred requests is reason enough to be careful."""

MIN_KEYS_PER_MIGRATE = 10
SLOTS_PER_FLIGHT = 2.0
"""Slots in flight follow the rate: one more slot in flight per this many slots/s (at least one)."""

BOOT = 300
MOVING_REACH = 4
"""The governor looks back at most this many `gates.window_s` for samples taken while slots moved."""
CONTROL_S = 120.0
"""The control is the probe's samples in the quiet spells of the last this many seconds: recent enough to share the
moving times' load, long enough for several spells (one every `migration.quiet_every_s`, 20 s by default: six
spells of 2 s, about 1 200 samples at the probe's default rate)."""
RECENT_ENTRIES = 20000
"""The journal entries the governor keeps (read once each, as they are appended) to find when slots moved."""


@dataclass(frozen=True)
class Level:
    """The pace: slot starts per second, slots in flight per source, keys per MIGRATE."""

    slots_per_s: float
    in_flight: int
    keys_per_migrate: int


@dataclass(frozen=True)
class Reading:
    """One window's measurement: requests (late ones included), p99 ratio to the reference with its interval (None:
    nothing to judge), the node gates that fail; `probing` says whether a probe with a baseline measures at all (if
    not, only the node gates can govern), `reference` which samples the window was judged against ("control": the
    recent quiet spells, "baseline": the pre-move baseline) and their p99, `late` how many of the requests are
    outstanding ones counted as late (`inflight.late_samples`)."""

    requests: int = 0
    ratio: float | None = None
    low: float | None = None
    high: float | None = None
    p99_ms: float | None = None
    failing: tuple[str, ...] = ()
    probing: bool = False
    reference: str | None = None
    reference_p99_ms: float | None = None
    late: int = 0
    moved_per_s: float | None = None
    """Slots handed over per second since the last change (None: not known)."""


USED_SHARE = 0.5
"""A ramp needs the mover to have used at least this share of the slot rate since the last change: a rate it did not
reach (slots one at a time until the clients know a new master, rests of the duty cycle, heavy slots) was not judged
by the clients, so raising it would be a guess (as TCP does not grow a window the application left unused)."""


@dataclass(frozen=True)
class Bounds:
    """The controller's limits: the ratio the budget allows, the ceilings and floors of the pace, the ramp step."""

    limit: float
    max_slots_per_s: float
    min_slots_per_s: float
    max_in_flight: int
    max_keys_per_migrate: int
    step: float

    @classmethod
    def of(cls, settings: Migration, gates: Gates, baseline_p99_ms: float | None) -> "Bounds":
        """Bounds from params: the budget ratio (widened by `gates.latency_floor_ms`), the ceilings of the settings,
        and a ramp step of a sixteenth of the ceiling (about 16 quiet windows from the floor to the ceiling)."""
        return cls(limit=budget_limit(gates, baseline_p99_ms), max_slots_per_s=settings.max_slots_per_s,
                   min_slots_per_s=settings.min_slots_per_s,
                   max_in_flight=settings.slots_in_flight, max_keys_per_migrate=settings.keys_per_migrate,
                   step=max(settings.min_slots_per_s, settings.max_slots_per_s / 16))


def budget_limit(gates: Gates, baseline_p99_ms: float | None) -> float:
    """The p99 ratio the budget allows: `gates.latency_budget_pct`, widened by `gates.latency_floor_ms` over a
    baseline so fast that a tenth of it is noise (pure)."""
    limit = 1 + gates.latency_budget_pct / 100
    if baseline_p99_ms:
        limit = max(limit, 1 + gates.latency_floor_ms / baseline_p99_ms)
    return limit


def start_level(settings: Migration) -> Level:
    """The cautious start: `start_slots_per_s`, with the slots in flight that rate gets and a quarter of the keys."""
    rate = min(settings.start_slots_per_s, settings.max_slots_per_s)
    return Level(rate, in_flight_for(rate, settings.slots_in_flight),
                 max(MIN_KEYS_PER_MIGRATE, min(settings.keys_per_migrate, settings.keys_per_migrate // 4)))


def in_flight_for(rate: float, ceiling: int) -> int:
    """Slots in flight for a slot rate: enough to keep that rate without piling slots open (pure)."""
    return max(1, min(ceiling, int(rate / SLOTS_PER_FLIGHT)))


def decide(level: Level, reading: Reading, bounds: Bounds, slow_start: bool = False) -> tuple[Level, str, str]:
    """The next pace, the action (ramp, back off, hold, slowest) and why, from one window's reading (pure). In
    `slow_start` (no back-off yet) a ramp doubles the rate instead of adding a step, as TCP's slow start does."""
    of = reading.reference or "baseline"
    over = (reading.ratio is not None and reading.requests >= MIN_BACKOFF_REQUESTS and reading.ratio > bounds.limit
            and ((reading.low is not None and reading.low > 1.0) or reading.ratio > 2 * bounds.limit))
    if reading.failing or over:
        why = "; ".join([*reading.failing, *([f"p99 x{reading.ratio:.2f} of {of} over the budget x"
                                              f"{bounds.limit:.2f}"] if over else [])])
        rate = max(bounds.min_slots_per_s, level.slots_per_s / 2)
        lower = Level(rate, max(1, min(level.in_flight // 2, in_flight_for(rate, bounds.max_in_flight))),
                      max(MIN_KEYS_PER_MIGRATE, level.keys_per_migrate // 2))
        return (lower, "back off", why) if lower != level else (level, "slowest", why)
    if reading.ratio is None and not reading.probing and not reading.requests:
        why = "node gates pass; no client latency measured (no probe or no baseline)"
    elif reading.ratio is None and reading.probing and not reading.reference:
        return level, "hold", "the probe measures but there is no reference yet (quiet spells or baseline) to judge by"
    elif reading.ratio is None or reading.requests < MIN_REQUESTS:
        return level, "hold", (f"{reading.requests} requests while slots moved since the last change: too few to "
                               "tell")
    elif reading.low is None or reading.high is None:
        return level, "hold", (f"p99 x{reading.ratio:.2f} of {of}, no interval yet (under two seconds of "
                               f"samples): not sure it is within x{bounds.limit:.2f}")
    elif reading.ratio > bounds.limit or reading.low > 1.0:
        return level, "hold", (f"p99 x{reading.ratio:.2f} [{reading.low:.2f}, {reading.high:.2f}] of {of}: "
                               + (f"over x{bounds.limit:.2f}, not surely slower than the {of}"
                                  if reading.ratio > bounds.limit else f"surely slower than the {of}, near the "
                                                                       f"limit x{bounds.limit:.2f}"))
    else:
        why = (f"p99 x{reading.ratio:.2f} [{reading.low:.2f}, {reading.high:.2f}] of {of}: within x{bounds.limit:.2f}"
               + ("" if reading.high <= bounds.limit else " (not yet sure)"))
    if reading.moved_per_s is not None and reading.moved_per_s < USED_SHARE * level.slots_per_s:
        return level, "hold", (f"{why}; but the mover used {reading.moved_per_s:.1f} of {level.slots_per_s:g} slots/s "
                               "since the last change, so a faster pace would not have been judged")
    rate = min(bounds.max_slots_per_s, level.slots_per_s * 2 if slow_start else level.slots_per_s + bounds.step)
    higher = Level(rate, in_flight_for(rate, bounds.max_in_flight),
                   min(bounds.max_keys_per_migrate, level.keys_per_migrate * 2))
    return (higher, "ramp", why) if higher != level else (level, "ceiling", why)


def settings_at(settings: Migration, level: Level) -> Migration:
    """The mover's settings at a pace: the level's rate, slots in flight and keys per MIGRATE (pure)."""
    return settings.model_copy(update={"max_slots_per_s": level.slots_per_s, "slots_in_flight": level.in_flight,
                                       "keys_per_migrate": level.keys_per_migrate})


def ratio_interval(baseline_ms: np.ndarray, window_ms: np.ndarray, baseline_ts: np.ndarray | None = None,
                   window_ts: np.ndarray | None = None) -> tuple[float, float, float]:
    """p99(window) / p99(baseline) with its 95 % bootstrap interval, by whole seconds of samples when the timestamps
    are given (the verdict's statistic; low and high NaN under two seconds), cheap enough to run every second."""
    return p99_ratio_interval(baseline_ms, window_ms, n_boot=BOOT, baseline_ts=baseline_ts, during_ts=window_ts)


@dataclass
class PaceDecision:
    """One change of pace with the measurement behind it, for the journal, the charts and the tables."""

    ts: float
    batch: int
    action: str
    reason: str
    slots_per_s: float
    slots_in_flight: int
    keys_per_migrate: int
    requests: int
    ratio: float | None
    low: float | None
    high: float | None
    p99_ms: float | None
    limit: float
    limit_ms: float | None
    failing: list[str]
    reference: str | None = None
    reference_p99_ms: float | None = None
    late: int = 0


Measure = Callable[[float], Reading]
"""Reads one window: the clients' latency since the given time, the node gates over the last `gates.window_s`."""


def run_measure(run_dir: str | Path, gates: Gates, baseline: dict, clock: Callable[[], float] = time.time) -> Measure:
    """The measurement of a run folder: the probe's latencies since the given time while slots moved (the windows
    the verdict judges, `timeline.moving_windows`), with the requests outstanding and already later than the limit,
    against the control of the recent quiet spells (the baseline until they have enough samples), and the sampler's
    node gates."""
    probing = TrafficProbe.was_started(run_dir) and bool(baseline.get("since") and baseline.get("p99_ms"))
    probe = TrafficProbe.attach(run_dir) if probing else None
    base_ms = base_ts = np.zeros(0)
    if probe is not None:
        at_rest = probe.records(since=baseline["since"])
        at_rest = at_rest[at_rest["ts"] <= baseline["ts"]]
        base_ms, base_ts = at_rest["latency_ms"].to_numpy(float), at_rest["ts"].to_numpy(float)
    limit = budget_limit(gates, baseline.get("p99_ms"))
    journal = Journal(Path(run_dir) / "journal.jsonl")
    journal_at = [0]
    recent: deque[dict] = deque(maxlen=RECENT_ENTRIES)

    def measure(since: float) -> Reading:
        now = clock()
        values = gate_values(run_dir, window_s=gates.window_s, now=now)
        failing = tuple(f"{c.name}: {c.detail}" for c in evaluate(values, gates) if c.status == "fail")
        if probe is None:
            return Reading(failing=failing)
        reach = now - gates.window_s * MOVING_REACH
        records = probe.records(since=min(reach, now - CONTROL_S))
        fresh, journal_at[0] = journal.read_from(journal_at[0])
        recent.extend(fresh)
        ts, lat = records["ts"].to_numpy(float), records["latency_ms"].to_numpy(float)
        quiet = inside(ts, quiet_windows(recent, now)) & (ts >= now - CONTROL_S)
        name, ref_ms, ref_ts = reference(lat[quiet], ts[quiet], base_ms, base_ts)
        if name is None:
            return Reading(failing=failing, probing=True)
        ref_p99 = float(np.percentile(ref_ms, 99))
        moving = moving_windows(recent, now)
        judged = inside(ts, moving) & (ts >= max(since, reach))
        late_ts, late_ms = probe.outstanding(now, since=max(since, reach))
        late = inside(late_ts, moving) & (late_ms > ref_p99 * limit)
        win_ms, win_ts = np.concatenate([lat[judged], late_ms[late]]), np.concatenate([ts[judged], late_ts[late]])
        found = Reading(requests=len(win_ms), failing=failing, probing=True, reference=name, reference_p99_ms=ref_p99,
                        late=int(late.sum()), moved_per_s=moved_per_s(recent, since, now))
        if len(win_ms) < MIN_BACKOFF_REQUESTS:
            return found
        ratio, low, high = ratio_interval(ref_ms, win_ms, ref_ts, win_ts)
        if not (math.isfinite(low) and math.isfinite(high)):
            low = high = None
        return replace(found, ratio=ratio, low=low, high=high, p99_ms=float(np.percentile(win_ms, 99)))
    return measure


def moved_per_s(entries: Iterable[dict], since: float, now: float) -> float | None:
    """Slots handed over per second from `since` to `now`, from journal entries (pure); None under a second."""
    if now - since < 1.0:
        return None
    moved = sum(len(e.get("slots", ())) for e in entries
                if e.get("event") == "slots_assigned" and since <= float(e["ts"]) <= now)
    return moved / (now - since)


def reference(control_ms: np.ndarray, control_ts: np.ndarray, base_ms: np.ndarray,
              base_ts: np.ndarray) -> tuple[str | None, np.ndarray, np.ndarray]:
    """What the moving samples are judged against (pure): the control of the quiet spells once it has
    `MIN_CONTROL_REQUESTS` and two seconds' worth of blocks (the verdict's `MIN_BLOCKS`; one spell at the probe's
    default rate), else the pre-move baseline when it has `MIN_REQUESTS`, else nothing (None)."""
    if len(control_ms) >= MIN_CONTROL_REQUESTS and effective_blocks(time_blocks(control_ts)) >= MIN_BLOCKS:
        return "control", control_ms, control_ts
    if len(base_ms) >= MIN_REQUESTS:
        return "baseline", base_ms, base_ts
    return None, control_ms, control_ts


@dataclass
class Governor:
    """The budget pace for the mover: a thread measures every `interval_s` while slots move and sets the level;
    the mover reads it before every group of slots (`before_group`)."""

    configured: Migration
    bounds: Bounds
    measure: Measure
    journal: Journal
    pause_after_s: float = 60.0
    interval_s: float = 1.0
    baseline_p99_ms: float | None = None
    level: Level = None
    decisions: list[PaceDecision] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _ticking: threading.Lock = field(default_factory=threading.Lock)
    _idle: int = 0
    _paused: str | None = None
    _changed: float = 0.0
    _backed_off: bool = False
    _slowest_since: float | None = None
    _batch: int = 0

    def __post_init__(self) -> None:
        if self.level is None:
            self.level = start_level(self.configured)

    @property
    def settings(self) -> Migration:
        return settings_at(self.configured, self.level)

    def before_batch(self, number: int) -> Migration:
        """Start measuring at the first batch; every batch moves at the current level."""
        self._batch = number
        if self._paused:
            raise GatePaused(self._paused)
        if self._thread is None:
            self._changed = self.clock()
            self._record("start", "cautious start", Reading())
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="pace-governor", daemon=True)
            self._thread.start()
        return self.settings

    def before_group(self) -> Migration:
        """The current level; stops the run here, between slots, once the governor paused it."""
        if self._paused:
            raise GatePaused(self._paused)
        return self.settings

    def end(self) -> None:
        """Stop measuring (the migration ended or stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @contextmanager
    def idle(self) -> Iterator[None]:
        """While the run waits (for its off-peak window), nothing is measured: no tick, so nothing ramps on an idle
        cluster; afterwards the pace is judged afresh, on what moved since the wait ended."""
        with self._ticking:
            self._idle += 1
        try:
            yield
        finally:
            with self._ticking:
                self._idle -= 1
                self._changed = self.clock()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s) and not self._paused:
            try:
                self.tick()
            except Exception as e:  # a measurement that fails must not kill the pace: hold, say why
                self._record("hold", f"measurement failed: {e}", Reading())

    def tick(self, now: float | None = None) -> str:
        """One measurement and decision; returns the action ("idle" while the run waits: nothing measured)."""
        with self._ticking:
            return "idle" if self._idle else self._tick(self.clock() if now is None else now)

    def _tick(self, now: float) -> str:
        if self._paused:
            return "pause"
        reading = self.measure(self._changed)
        level, action, why = decide(self.level, reading, self.bounds, slow_start=not self._backed_off)
        self._backed_off = self._backed_off or action in ("back off", "slowest")
        if action == "slowest":
            self._slowest_since = self._slowest_since or now
            if now - self._slowest_since >= self.pause_after_s:
                self._paused = (f"paused between slots: the gates kept failing at the slowest pace for "
                                f"{self.pause_after_s:.0f} s ({why}). No slot of this run is left open and the "
                                "cluster is consistent. Find the cause (load, a slow node) or change the gates in "
                                "params, then `runbook resume`")
                self._record("pause", why, reading)
                return "pause"
        else:
            self._slowest_since = None
        if level != self.level:
            self.level = level
            self._changed = now
            self._record(action, why, reading)
        elif action == "slowest" and self.decisions[-1].action != "slowest":
            self._record(action, why, reading)
        return action

    def _record(self, action: str, why: str, reading: Reading) -> None:
        lv, r = self.level, reading
        reference_p99 = r.reference_p99_ms or self.baseline_p99_ms
        d = PaceDecision(ts=time.time(), batch=self._batch, action=action, reason=why, slots_per_s=lv.slots_per_s,
                         slots_in_flight=lv.in_flight, keys_per_migrate=lv.keys_per_migrate, requests=r.requests,
                         ratio=_finite(r.ratio), low=_finite(r.low), high=_finite(r.high), p99_ms=_finite(r.p99_ms),
                         limit=self.bounds.limit, failing=list(r.failing),
                         limit_ms=reference_p99 * self.bounds.limit if reference_p99 else None,
                         reference=r.reference, reference_p99_ms=_finite(r.reference_p99_ms), late=r.late)
        self.decisions.append(d)
        self.journal.record("pace", **{k: v for k, v in asdict(d).items() if k != "ts"})


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else round(float(x), 4)


def governor(settings: Migration, gates: Gates, run_dir: str | Path, journal: Journal, baseline: dict) -> Governor:
    """The governor of a run folder, over its probe and sampler, against its baseline; a MIGRATE round's headroom
    (`migration.migrate_headroom_ms`, unless params set it) is what the budget leaves over the baseline p99."""
    bounds = Bounds.of(settings, gates, baseline.get("p99_ms"))
    if not settings.migrate_headroom_ms and baseline.get("p99_ms"):
        settings = settings.model_copy(update={"migrate_headroom_ms": baseline["p99_ms"] * (bounds.limit - 1)})
    return Governor(settings, bounds,
                    run_measure(run_dir, gates, baseline), journal, pause_after_s=gates.pause_after_s,
                    baseline_p99_ms=baseline.get("p99_ms"))

