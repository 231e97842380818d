"""The probe's requests in flight, so that a stall is seen while it lasts, not only once its requests complete.

Each probe worker publishes the scheduled send time (epoch seconds) of the request it has in flight, 0 when none,
as one float64 in `probe/inflight.bin`, through a shared memory map: two stores per request, nothing the probe would
notice. A reader turns those times into the pseudo-samples of the outstanding requests (`late_samples`): a worker
stuck since its scheduled time t0 owes every send its schedule had due since, and each of them is already at least
`now - scheduled time` late, which is what it will show once it completes (no coordinated omission, as in the probe).
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np

INFLIGHT_FILE = "inflight.bin"
SLOT = np.dtype("<f8")
ROUNDING = 1e-9
"""Counts of intervals within this of a whole number are that number (epoch seconds divided by milliseconds)."""


class InFlight:
    """A worker's slot on the board: `sending(scheduled_ts)` before each request, `done()` after it."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        size = max(workers, index + 1) * SLOT.itemsize
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._slots = np.frombuffer(self._map, dtype=SLOT)
        self._index = index
        self.done()

    def sending(self, scheduled_ts: float) -> None:
        """The request scheduled at `scheduled_ts` (epoch seconds) is in flight."""
        self._slots[self._index] = scheduled_ts

    def done(self) -> None:
        """No request in flight."""
        self._slots[self._index] = 0.0

    def close(self) -> None:
        """Clear the slot and unmap the board (a stopped worker owes nothing)."""
        self.done()
        del self._slots
        self._map.close()


def in_flight(path: Path, workers: int) -> np.ndarray:
    """The scheduled send time of each worker's request in flight (0: none), as published on the board; empty when
    no worker has published yet."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return np.zeros(0, dtype=SLOT)
    n = min(workers, len(data) // SLOT.itemsize)
    return np.frombuffer(data[:n * SLOT.itemsize], dtype=SLOT).copy()


def late_samples(scheduled: np.ndarray, interval_s: float, now: float,
                 since: float = -math.inf) -> tuple[np.ndarray, np.ndarray]:
    """(ts, latency_ms) of the outstanding requests at `now` (pure): for each worker stuck since t0 (> 0), the sends
    its schedule had due at t0 + k * interval_s up to `now`, from `since` on, each at latency now - its time."""
    parts = []
    for t0 in scheduled[(scheduled > 0) & (scheduled <= now)]:
        first = math.ceil((since - t0) / interval_s - ROUNDING) if since > t0 else 0
        last = math.floor((now - t0) / interval_s + ROUNDING)
        parts.append(t0 + np.arange(first, last + 1) * interval_s)
    ts = np.concatenate(parts) if parts else np.zeros(0)
    return ts, (now - ts) * 1000.0
