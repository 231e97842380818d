"""The run's timeline: batch windows from the journal, and time-stamped rows labelled with the batch they fall in."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import pandas as pd

from runbook_lib.cluster.quiet import HANDOVER_TAIL_S

BatchWindow = tuple[int, float, float]


def batch_windows(entries: Iterable[dict], now: float | None = None) -> list[BatchWindow]:
    """(batch, start, end) from the journal's batch_start/batch_end events, in journal order.

    A batch that started and has not ended yet (a run in progress, or one that crashed) ends at `now`.
    """
    windows: list[BatchWindow] = []
    open_batches: dict[int, float] = {}
    for entry in entries:
        if entry.get("event") == "batch_start":
            open_batches[int(entry["batch"])] = float(entry["ts"])
        elif entry.get("event") == "batch_end" and int(entry["batch"]) in open_batches:
            number = int(entry["batch"])
            windows.append((number, open_batches.pop(number), float(entry["ts"])))
    end = time.time() if now is None else now
    windows += [(number, start, max(start, end)) for number, start in open_batches.items()]
    return sorted(windows, key=lambda w: w[1])


MOVE_TAIL_S = HANDOVER_TAIL_S
"""A handover disturbs clients after it too (MOVED, a topology refresh): a slot counts as moving until this long
after it was handed over; the mover's quiet spells start only after it."""


def moving_windows(entries: Iterable[dict], now: float | None = None,
                   tail_s: float = MOVE_TAIL_S) -> list[tuple[float, float]]:
    """(start, end) of the times slots were moving: from each group's `slots_open` to `tail_s` after its
    `slots_assigned` (or its batch's end, or `now`), merged where they overlap. Longer pacer sleeps and gate waits
    between groups are not in them, so latency "during the migration" is latency while slots really moved; the
    verdict and the budget governor judge the same windows."""
    spans: list[tuple[float, float]] = []
    opened: dict[int, float] = {}
    for entry in entries:
        event = entry.get("event")
        if event == "slots_open":
            for s in entry["slots"]:
                opened.setdefault(int(s), float(entry["ts"]))
        elif event in ("slots_assigned", "slot_closed", "slot_done"):
            slots = entry.get("slots", [entry.get("slot")])
            starts = [opened.pop(int(s)) for s in slots if s is not None and int(s) in opened]
            if starts:
                spans.append((min(starts), float(entry["ts"]) + tail_s))
        elif event == "batch_end" and opened:
            spans.append((min(opened.values()), float(entry["ts"])))
            opened.clear()
    end = time.time() if now is None else now
    if opened:
        spans.append((min(opened.values()), end))
    spans = [(a, min(b, end)) for a, b in spans if a < end]
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def quiet_windows(entries: Iterable[dict], now: float | None = None) -> list[tuple[float, float]]:
    """(start, end) of the mover's quiet spells (`quiet_start` to `quiet_end`, or `now` for one still going): the
    times in which nothing moved, whose client latency is the control the moving times are compared with."""
    spans: list[tuple[float, float]] = []
    started: float | None = None
    for entry in entries:
        event = entry.get("event")
        if event == "quiet_start":
            started = float(entry["ts"])
        elif event == "quiet_end" and started is not None:
            spans.append((started, float(entry["ts"])))
            started = None
        elif event == "batch_end" and started is not None:
            spans.append((started, float(entry["ts"])))
            started = None
    if started is not None:
        spans.append((started, max(started, time.time() if now is None else now)))
    return spans


def quiet_cost(entries: Iterable[dict]) -> dict:
    """What the quiet spells cost in time: spells, seconds quiet, seconds lost (the workers' drain, the hand-over
    tail and the spell), and that as a share of the migration's wall time (first slot opened to last handed over)."""
    entries = list(entries)
    starts = [e for e in entries if e.get("event") == "quiet_start"]
    quiet = sum(end - start for start, end in quiet_windows(entries))
    lost = quiet + sum(float(e.get("drained_s", 0)) + float(e.get("tail_s", 0)) for e in starts)
    opened = [float(e["ts"]) for e in entries if e.get("event") == "slots_open"]
    done = [float(e["ts"]) for e in entries if e.get("event") == "slots_assigned"]
    wall = max(done) - min(opened) if opened and done else 0.0
    return {"spells": len(starts), "quiet_s": round(quiet, 2), "cost_s": round(lost, 2),
            "migration_s": round(wall, 2), "share": round(lost / wall, 4) if wall > 0 else 0.0}


def inside(ts: np.ndarray, spans: list[tuple[float, float]]) -> np.ndarray:
    """Which timestamps fall in one of the [start, end) spans."""
    mask = np.zeros(len(ts), dtype=bool)
    for start, end in spans:
        mask |= (ts >= start) & (ts < end)
    return mask


def label(df: pd.DataFrame, windows: Iterable[BatchWindow], ts_col: str = "ts") -> pd.DataFrame:
    """A copy of `df` with `batch` (the batch a row's timestamp falls in, else <NA>) and `phase` columns.

    Phases: "baseline" before the first batch, "batch" inside one, "pause" between batches, "after" the last one.
    Without windows every row is "baseline". Windows are [start, end): a row at a batch's end belongs to what follows.
    """
    out = df.copy()
    ordered = sorted(windows, key=lambda w: w[1])
    ts = out[ts_col].to_numpy(dtype=float)
    batch = np.full(len(out), -1, dtype=np.int64)
    phase = np.full(len(out), "baseline", dtype=object)
    if ordered:
        phase[ts >= ordered[0][1]] = "pause"
        phase[ts >= max(end for _, _, end in ordered)] = "after"
        for number, start, end in ordered:
            inside = (ts >= start) & (ts < end)
            batch[inside] = number
            phase[inside] = "batch"
    out["batch"] = pd.arrays.IntegerArray(batch, mask=batch < 0)
    out["phase"] = phase
    return out


PACE_COLUMNS = ["t", "slots_per_s", "keys_per_s", "pace_slots_per_s", "p99_ms", "requests", "limit_ms"]


def pace_series(entries: Iterable[dict], latencies: pd.DataFrame | None = None, bin_s: float = 1.0) -> pd.DataFrame:
    """Per `bin_s` from the first slot opened to the last handed over: slots handed over and keys moved per second,
    the pace the governor set (slots/s), the clients' p99 and request count (probe records with `ts` and
    `latency_ms`), and the budget's limit in ms, for the pace chart (pure)."""
    entries = list(entries)
    done = [(float(e["ts"]), len(e["slots"])) for e in entries if e.get("event") == "slots_assigned"]
    keys = [(float(e["ts"]), sum(int(n) for n in e["slots"].values())) for e in entries
            if e.get("event") == "keys_migrated"]
    paces = [e for e in entries if e.get("event") == "pace"]
    starts = [float(e["ts"]) for e in entries if e.get("event") == "slots_open"]
    if not starts or not done:
        return pd.DataFrame(columns=PACE_COLUMNS)
    t0, t1 = min(starts), max(t for t, _ in done)
    edges = np.arange(t0, t1 + bin_s, bin_s)
    out = pd.DataFrame({"t": edges[:-1] - t0 if len(edges) > 1 else [0.0]})
    n = len(out)

    def per_bin(points: list[tuple[float, int]]) -> np.ndarray:
        idx = np.clip(((np.array([p[0] for p in points]) - t0) // bin_s).astype(int), 0, n - 1)
        return np.bincount(idx, weights=[p[1] for p in points], minlength=n)[:n] / bin_s if points else np.zeros(n)
    out["slots_per_s"] = per_bin(done)
    out["keys_per_s"] = per_bin(keys)
    mids = t0 + out["t"].to_numpy() + bin_s / 2
    pace_ts = np.array([float(e["ts"]) for e in paces])
    which = np.searchsorted(pace_ts, mids, side="right") - 1 if len(pace_ts) else np.full(n, -1)
    out["pace_slots_per_s"] = [paces[i]["slots_per_s"] if i >= 0 else np.nan for i in which]
    out["limit_ms"] = [paces[i].get("limit_ms") if i >= 0 else np.nan for i in which]
    out["limit_ms"] = out["limit_ms"].astype(float)
    out["p99_ms"], out["requests"] = np.nan, 0
    if latencies is not None and len(latencies):
        ts = latencies["ts"].to_numpy(float)
        keep = (ts >= t0) & (ts < t0 + n * bin_s)
        idx = ((ts[keep] - t0) // bin_s).astype(int)
        lat = pd.Series(latencies["latency_ms"].to_numpy(float)[keep]).groupby(idx)
        out.loc[lat.size().index, "requests"] = lat.size().to_numpy()
        out.loc[lat.size().index, "p99_ms"] = lat.quantile(0.99).to_numpy()
    out = out[PACE_COLUMNS]
    out.attrs["t0"] = t0
    return out


def migrations(entries: Iterable[dict]) -> dict[str, list[dict]]:
    """A run folder's journal cut at its first `rollback_start`: the expansion's entries and the rollback's (empty
    when there was none), so each is timed on its own (pure)."""
    entries = list(entries)
    cut = next((i for i, e in enumerate(entries) if e.get("event") == "rollback_start"), len(entries))
    return {"expansion": entries[:cut], "rollback": entries[cut:]}


def achieved_pace(entries: Iterable[dict]) -> dict | None:
    """What a finished migration achieved while slots moved: slots, keys and bytes (MEMORY USAGE of what the
    MIGRATEs carried), the seconds from its first slot opened to its last handed over, slots/s, keys/s, bytes/s, and
    the node ids it moved from and to (None when nothing was handed over); pure."""
    entries = list(entries)
    assigned = [e for e in entries if e.get("event") == "slots_assigned"]
    opened = [float(e["ts"]) for e in entries if e.get("event") == "slots_open"]
    if not assigned or not opened:
        return None
    seconds = max(float(e["ts"]) for e in assigned) - min(opened)
    slots = sum(len(e["slots"]) for e in assigned)
    drained = [e for e in entries if e.get("event") == "keys_migrated"]
    keys = sum(sum(int(n) for n in e["slots"].values()) for e in drained)
    nbytes = sum(int(e.get("bytes", 0)) for e in drained)
    if seconds <= 0 or slots < 2:
        return None
    nodes = sorted({e[k] for e in assigned for k in ("source", "target") if e.get(k)})
    return {"slots": slots, "keys": keys, "bytes": nbytes, "seconds": round(seconds, 2), "slots_per_s": slots / seconds,
            "keys_per_s": keys / seconds, "bytes_per_s": nbytes / seconds, "nodes": nodes,
            "started": min(opened), "ended": max(float(e["ts"]) for e in assigned)}
