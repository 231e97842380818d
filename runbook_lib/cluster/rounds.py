"""The MIGRATE rounds of a drain and their byte pacing: keys cut into MIGRATEs of at most `keys_per_migrate` keys and,
with `max_migrate_ms`, of the bytes a source moves in that time at its measured throughput (allowed big keys alone,
with their own timeout); at most `migrates_per_round_trip` MIGRATEs per round trip, so a source serves its clients
between rounds; each round timed to measure the source's MIGRATE throughput."""

from __future__ import annotations

import time
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

    @property
    def settings(self) -> Migration:
        return self._settings()

    def migrate(self, src_id: str, migrates: list[tuple], then: list[tuple],
                weights: list[int] | None = None) -> tuple[list, list[float]]:
        """MIGRATEs at most `migrates_per_round_trip` per round trip, then `then` with the last: a source serves its
        clients between rounds. A client timeout counts as a failed MIGRATE for the commands of its round. With
        `weights` (bytes per MIGRATE) each round measures the source's MIGRATE throughput.

        Returns the replies and each round's seconds: the source runs a round's MIGRATEs back to back and serves no
        client meanwhile, so a round's time (the round trip from here included) bounds how long it blocked."""
        depth = self.settings.migrates_per_round_trip
        rounds = [list(range(i, min(i + depth, len(migrates)))) for i in range(0, len(migrates), depth)] or [[]]
        out: list = []
        blocked: list[float] = []
        for n, indices in enumerate(rounds):
            commands = [migrates[i] for i in indices] + (then if n == len(rounds) - 1 else [])
            started = time.monotonic()
            try:
                out.extend(self.nodes.pipeline(src_id, commands, raise_on_error=False))
            except TopologyChanged as e:
                if not isinstance(e.__cause__, redis.TimeoutError):
                    raise
                out.extend([e.__cause__] * len(commands))
                blocked.append(time.monotonic() - started)
                continue
            seconds = time.monotonic() - started
            if indices:
                blocked.append(seconds)
            if weights:
                self._measured(src_id, sum(weights[i] for i in indices), seconds)
            failpoint("drain.round")
        return out, blocked

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
