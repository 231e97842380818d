"""What the MIGRATEs cost each source, read from the journal: how many, the bytes they carried, how long they blocked
the source (a source serves no client while a round of MIGRATEs runs) and the duty cycle, the share of the time slots
moved that the source spent blocked. A request to a source meets a MIGRATE about as often as the duty cycle says, so
the duty cycle against the 1 % that p99 tolerates is the cost that matters to the clients."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

from runbook_lib.watch.timeline import MOVE_TAIL_S, moving_windows

COLUMNS = ["source", "drains", "migrates", "keys", "MB", "blocked_s", "mean_migrate_ms", "max_round_ms",
           "MB_per_s_blocked", "duty_pct", "rested_s"]


def migrate_costs(entries: Iterable[dict], names: dict[str, str] | None = None) -> list[dict]:
    """One row per source master (named by `names` where given) from the journal's `keys_migrated` events: drains,
    MIGRATEs, keys, MB, seconds blocked, mean ms per MIGRATE, the longest round, MB/s while blocked, the duty
    cycle against the seconds slots moved, and the seconds it rested to keep within `migration.max_duty_pct`
    (pure). Journals written before block times were recorded give none."""
    entries = list(entries)
    names = names or {}
    last = max((float(e["ts"]) for e in entries), default=0.0) + MOVE_TAIL_S
    moving_s = sum(b - a for a, b in moving_windows(entries, now=last))
    totals = _per_source(entries)
    rows = []
    for source, t in sorted(totals.items(), key=lambda kv: names.get(kv[0], kv[0])):
        blocked_s = t["block_ms"] / 1000
        rows.append({
            "source": names.get(source, source), "drains": t["drains"], "migrates": t["migrates"], "keys": t["keys"],
            "MB": round(t["bytes"] / 1e6, 3), "blocked_s": round(blocked_s, 3),
            "mean_migrate_ms": round(t["block_ms"] / t["migrates"], 3) if t["migrates"] else None,
            "max_round_ms": round(t["max_round_ms"], 3),
            "MB_per_s_blocked": round(t["bytes"] / 1e6 / blocked_s, 2) if blocked_s > 0 else None,
            "duty_pct": round(100 * blocked_s / moving_s, 2) if moving_s > 0 else None,
            "rested_s": round(t["rested_ms"] / 1000, 3)})
    return rows


def blocked_rate(entries: Iterable[dict]) -> dict | None:
    """The MIGRATE cost of a whole migration, for estimates (pure): bytes, keys and MIGRATEs moved, seconds blocked
    summed over the sources, bytes per blocked second, and seconds blocked per MIGRATE; None when the journal
    recorded no block time."""
    totals = _per_source(entries).values()
    bytes_, keys, migrates = (sum(t[k] for t in totals) for k in ("bytes", "keys", "migrates"))
    block_ms = sum(t["block_ms"] for t in totals)
    if block_ms <= 0 or not migrates:
        return None
    return {"bytes": bytes_, "keys": keys, "migrates": migrates, "blocked_s": block_ms / 1000,
            "bytes_per_blocked_s": bytes_ / (block_ms / 1000), "s_per_migrate": block_ms / 1000 / migrates}


def _per_source(entries: Iterable[dict]) -> dict[str, dict]:
    """The `keys_migrated` events that recorded block times, summed per source: drains, MIGRATEs, keys, bytes, block
    ms, the longest round and the ms rested."""
    totals: dict[str, dict] = defaultdict(lambda: {"drains": 0, "migrates": 0, "keys": 0, "bytes": 0, "block_ms": 0.0,
                                                   "max_round_ms": 0.0, "rested_ms": 0.0})
    for e in entries:
        if e.get("event") != "keys_migrated" or "block_ms" not in e:
            continue
        t = totals[e["source"]]
        t["drains"] += 1
        t["migrates"] += int(e.get("migrates", 0))
        t["keys"] += sum(int(n) for n in e.get("slots", {}).values())
        t["bytes"] += int(e.get("bytes", 0))
        t["block_ms"] += float(e["block_ms"])
        t["max_round_ms"] = max(t["max_round_ms"], float(e.get("max_block_ms", 0.0)))
        t["rested_ms"] += float(e.get("rested_ms", 0.0))
    return totals
