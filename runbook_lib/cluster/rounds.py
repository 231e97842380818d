"""The MIGRATE rounds of a drain and their byte pacing: keys cut into MIGRATEs of at most `keys_per_migrate` keys and,
with `max_migrate_ms`, of the bytes a source moves in that time at its measured throughput (allowed big keys alone,
with their own timeout); at most `migrates_per_round_trip` MIGRATEs per round trip, so a source serves its clients
between rounds; each round timed to measure the source's MIGRATE throughput and, with `max_duty_pct`, followed by a
rest that keeps the share of time the source is blocked within the duty cycle (`duty_for`)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import redis

from runbook_lib.cluster.journal import failpoint
from runbook_lib.cluster.nodes import Nodes, TopologyChanged
from runbook_lib.config import Migration

INITIAL_MIGRATE_BYTES_PER_S = 20e6
"""Until a source's MIGRATE throughput is measured, assume this (cautious: loopback measures several times it)."""


def chunk_by_bytes(keys: list[bytes], sizes: dict[bytes, int], limit: int | None) -> list[list[bytes]]:
    """Split keys, in order, into runs of at most `limit` bytes by `sizes` (unknown size: 0), one key at least each
    (pure); no limit: one run."""
    if not keys:
        return []
    if limit is None:
        return [list(keys)]
    runs: list[list[bytes]] = [[]]
    total = 0
    for k in keys:
        size = sizes.get(k, 0)
        if runs[-1] and total + size > limit:
            runs.append([])
            total = 0
        runs[-1].append(k)
        total += size
    return runs


def duty_for(block_s: float, headroom_s: float, max_duty_pct: float) -> float:
    """The share of its time a source may spend in rounds that block it for `block_s` each (pure).

    A request that arrives during a round waits for the rest of it: uniformly up to `block_s`. With a share d of the
    time blocked, about a share d of requests wait, and the p99 of their wait is `block_s * (1 - 0.01 / d)`; keeping
    that within the headroom the budget leaves gives d <= 1 % / (1 - headroom / block). So a round within the headroom
    needs no rest (1.0), a much longer one tends to `max_duty_pct` (no headroom known: `max_duty_pct`), and 0 turns
    the spacing off (1.0)."""
    if max_duty_pct <= 0 or block_s <= 0:
        return 1.0
    if headroom_s <= 0:
        return max_duty_pct / 100
    if block_s <= headroom_s:
        return 1.0
    return min(1.0, (max_duty_pct / 100) / (1 - headroom_s / block_s))


def rest_after(block_s: float, duty: float) -> float:
    """The rest after a round of `block_s` that keeps the source's blocked share at `duty` (pure)."""
    return 0.0 if duty >= 1.0 else block_s * (1 / duty - 1)


@dataclass
class RoundTimes:
    """What a drain's rounds cost their source: each round's seconds (a bound on how long it blocked the source:
    the source runs a round's MIGRATEs back to back and serves no client meanwhile, the round trip from here
    included) and the seconds waited for the source's rest before them."""

    blocked: list[float] = field(default_factory=list)
    rested: float = 0.0


class Rounds:
    """MIGRATE rounds from source masters, sized and timed by each source's throughput; `settings` gives the pace's
    settings of the moment, `threshold` and `allowed` the big-key params."""

    def __init__(self, nodes: Nodes, settings: Callable[[], Migration], threshold: int | None,
                 allowed: dict[str, int]) -> None:
        self.nodes = nodes
        self._settings = settings
        self.threshold = threshold
        self.allowed = allowed
        self._throughput: dict[str, float] = {}
        self._turns: dict[str, threading.Lock] = {}
        self._free_at: dict[str, float] = {}
        self._guard = threading.Lock()

    @property
    def settings(self) -> Migration:
        return self._settings()

    def migrate(self, src_id: str, migrates: list[tuple], then: list[tuple],
                weights: list[int] | None = None) -> tuple[list, RoundTimes]:
        """MIGRATEs at most `migrates_per_round_trip` per round trip, then `then` with the last: a source serves its
        clients between rounds. A client timeout counts as a failed MIGRATE for the commands of its round. With
        `weights` (bytes per MIGRATE) each round measures the source's MIGRATE throughput. With `max_duty_pct` the
        rounds to one source go one at a time, each after the source's rest (`duty_for`).

        Returns the replies and what the rounds cost (`RoundTimes`)."""
        depth = self.settings.migrates_per_round_trip
        rounds = [list(range(i, min(i + depth, len(migrates)))) for i in range(0, len(migrates), depth)] or [[]]
        out: list = []
        times = RoundTimes()
        for n, indices in enumerate(rounds):
            commands = [migrates[i] for i in indices] + (then if n == len(rounds) - 1 else [])
            with self._turn(src_id, times, spaced=bool(indices)):
                started = time.monotonic()
                try:
                    out.extend(self.nodes.pipeline(src_id, commands, raise_on_error=False))
                except TopologyChanged as e:
                    if not isinstance(e.__cause__, redis.TimeoutError):
                        raise
                    out.extend([e.__cause__] * len(commands))
                    if indices:
                        times.blocked.append(time.monotonic() - started)
                    continue
                seconds = time.monotonic() - started
                if indices:
                    times.blocked.append(seconds)
            if weights:
                self._measured(src_id, sum(weights[i] for i in indices), seconds)
            failpoint("drain.round")
        return out, times

    @contextmanager
    def _turn(self, src_id: str, times: RoundTimes, spaced: bool) -> Iterator[None]:
        """The source's turn for one round: without spacing, now; with it, alone on the source, after its rest, and
        the next rest set from how long this round blocked it (`duty_for`)."""
        if not spaced or self.settings.max_duty_pct <= 0:
            yield
            return
        with self._guard:
            lock = self._turns.setdefault(src_id, threading.Lock())
        with lock:
            wait = self._free_at.get(src_id, 0.0) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                times.rested += wait
            started = time.monotonic()
            try:
                yield
            finally:
                block = time.monotonic() - started
                s = self.settings
                self._free_at[src_id] = time.monotonic() + rest_after(
                    block, duty_for(block, s.migrate_headroom_ms / 1000, s.max_duty_pct))

    def _measured(self, src_id: str, nbytes: int, seconds: float) -> None:
        """Fold one round's bytes per second into the source's MIGRATE throughput (EWMA, weight 0.3); rounds too
        small to time say nothing."""
        if nbytes < 4096 or seconds <= 0:
            return
        rate = nbytes / seconds
        old = self._throughput.get(src_id)
        self._throughput[src_id] = rate if old is None else 0.7 * old + 0.3 * rate

    def migrate_bytes(self, src_id: str) -> int | None:
        """The most bytes one MIGRATE from this source may carry so it blocks the source for at most
        `max_migrate_ms` at the throughput measured so far (None: no bound). One key always goes, however big."""
        if not self.settings.max_migrate_ms:
            return None
        rate = self._throughput.get(src_id, INITIAL_MIGRATE_BYTES_PER_S)
        return max(1, int(rate * self.settings.max_migrate_ms / 1000))

    def sizes(self, src_id: str, slot_keys: dict[int, list[bytes]]) -> dict[bytes, int]:
        """MEMORY USAGE of every listed key of open slots, in one round trip (a key just deleted or expired has no
        size); nothing when neither the big-key threshold nor the MIGRATE time bound needs sizes."""
        keys = [k for ks in slot_keys.values() for k in ks]
        if not keys or not (self.threshold or self.settings.max_migrate_ms):
            return {}
        sizes = self.nodes.pipeline(src_id, [("MEMORY", "USAGE", k) for k in keys], raise_on_error=False)
        return {k: n for k, n in zip(keys, sizes) if isinstance(n, int)}

    def groups(self, keys: list[bytes], sizes: dict[bytes, int] | None = None,
               limit: int | None = None) -> Iterator[tuple[list[bytes], int]]:
        """Keys for one MIGRATE each, with its timeout: allowed big keys alone with their own timeout, the rest in
        MIGRATEs of at most `limit` bytes by `sizes` (at least one key each)."""
        plain = [k for k in keys if k.decode(errors="replace") not in self.allowed]
        for part in chunk_by_bytes(plain, sizes or {}, limit):
            yield part, self.settings.migrate_timeout_ms
        for k in keys:
            name = k.decode(errors="replace")
            if name in self.allowed:
                yield [k], self.allowed[name]
