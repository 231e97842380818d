"""The run's timeline: batch windows from the journal, and time-stamped rows labelled with the batch they fall in."""

from __future__ import annotations

import time
from typing import Iterable

import numpy as np
import pandas as pd

BatchWindow = tuple[int, float, float]
PHASES = ("baseline", "batch", "pause", "after")


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


def moving_windows(entries: Iterable[dict], now: float | None = None) -> list[tuple[float, float]]:
    """(start, end) of the times slots were open or being handed over: from each group's `slots_open` to its
    `slots_assigned` (or its batch's end, or `now`), merged where they overlap. Pacer sleeps and gate waits between
    groups are not in them, so latency "during the migration" is latency while slots really moved."""
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
                spans.append((min(starts), float(entry["ts"])))
        elif event == "batch_end" and opened:
            spans.append((min(opened.values()), float(entry["ts"])))
            opened.clear()
    if opened:
        spans.append((min(opened.values()), time.time() if now is None else now))
    merged: list[tuple[float, float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


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
