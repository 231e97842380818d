"""An A/A test of the latency verdict on a real sandbox: the traffic probe runs while no slot moves, the mover's
timeline (moving spans and quiet spells, shaped by `Migration()`'s defaults) is laid over its records as a journal,
and the verdict moving vs control, computed as the report computes it, must not fail and its interval must contain
1.0: both sides come from one process, so any difference is noise, which the interval has to cover.

Measured on the 2-core test machine by sliding this layout over 5 minutes of idle probe traffic (230 placements):
the interval missed 1.0 in 10 % of them and failed in 2 %; with five cycles instead of three, 5 % and 1 %. The
control is short (three spells of 2 s), and a short control misses the rare stalls the long moving side holds."""

from __future__ import annotations

import math
import time

import pytest

from runbook_lib.cluster.quiet import HANDOVER_TAIL_S
from runbook_lib.config import Migration
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.timeline import inside, moving_windows, quiet_windows
from runbook_lib.watch.verdict import latency_verdict, p99_ratio_interval
from tests.conftest import module_sandbox, port_block

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
CYCLES = 3
"""Moving spans, each followed by a quiet spell: three give the control six seconds, as a minute of moving does."""
SLOT_EVERY_S = 0.4
"""One fake slot opened every this long while "moving" (2.5 slots/s; the tails merge them into one span)."""
SLOT_OPEN_S = 0.1

sandbox = module_sandbox(PORT, 2000, new_masters=0)


def fake_journal(start: float, settings: Migration, cycles: int) -> tuple[list[dict], float]:
    """The journal a mover would leave from `start`: slots opened and handed over for `quiet_every_s`, then, after
    the hand-over tail (from when the next group would have started), a quiet spell of `quiet_s`, `cycles` times;
    and the time it ends."""
    entries: list[dict] = [{"event": "batch_start", "batch": 1, "ts": start}]
    t, slot = start, 0
    for _ in range(cycles):
        due = t + settings.quiet_every_s
        while t < due:
            entries.append({"event": "slots_open", "slots": [slot], "ts": t})
            entries.append({"event": "slots_assigned", "slots": {str(slot): 10}, "ts": t + SLOT_OPEN_S})
            slot, t = slot + 1, t + SLOT_EVERY_S
        quiet = t + HANDOVER_TAIL_S
        entries.append({"event": "quiet_start", "drained_s": 0.0, "tail_s": HANDOVER_TAIL_S, "ts": quiet})
        entries.append({"event": "quiet_end", "seconds": settings.quiet_s, "ts": quiet + settings.quiet_s})
        t = quiet + settings.quiet_s
    entries.append({"event": "batch_end", "batch": 1, "ts": t})
    return entries, t


def test_moving_vs_control_on_traffic_where_nothing_moves_does_not_fail_and_covers_one(sandbox, tmp_path):
    settings = Migration()
    probe = TrafficProbe([SEED], sandbox.credentials(), tmp_path, rate=100.0, stock_processes=1)
    probe.start()
    try:
        start = time.time() + 1.0
        entries, end = fake_journal(start, settings, CYCLES)
        time.sleep(end - time.time() + 0.5)
    finally:
        probe.stop()
    records = probe.records()
    probe.cleanup()

    ts, latency = records["ts"].to_numpy(float), records["latency_ms"].to_numpy(float)
    moving = inside(ts, moving_windows(entries, now=end))
    control = inside(ts, quiet_windows(entries, now=end))
    assert not (moving & control).any(), "a quiet spell never overlaps the moving times"
    assert control.sum() >= 0.8 * CYCLES * settings.quiet_s * 100, f"{control.sum()} control samples"
    assert moving.sum() >= 0.8 * CYCLES * settings.quiet_every_s * 100, f"{moving.sum()} moving samples"

    interval = p99_ratio_interval(latency[control], latency[moving], baseline_ts=ts[control], during_ts=ts[moving])
    ratio, low, high = interval
    assert math.isfinite(low) and math.isfinite(high), f"no interval: {interval}"
    assert latency_verdict(interval, 10.0) != "fail", f"A/A failed: p99 ratio x{ratio:.2f} [{low:.2f}, {high:.2f}]"
    assert low <= 1.0 <= high, f"A/A interval misses 1.0: x{ratio:.2f} [{low:.2f}, {high:.2f}]"
