"""The run's metrics table: the sampler's node samples and the probe's per-second latency in one tidy table, with UTC
time, batch and phase, saved as `metrics.csv` in the run folder.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from runbook_lib.watch import timeline
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import per_window
from runbook_lib.watch.sampler import COLUMNS, read_samples

TABLE_FILE = "metrics.csv"
PROBE_METRICS = ("ops", "ops_per_s", "errors", "lost", "p50_ms", "p99_ms", "avg_ms", "max_ms")


def probe_rows(records: pd.DataFrame, window_s: float = 1.0) -> pd.DataFrame:
    """The probe's per-window statistics as tidy rows (node "probe", role "client")."""
    windows = per_window(records, window_s)
    if windows.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows = windows.melt(id_vars="ts", value_vars=list(PROBE_METRICS), var_name="metric", value_name="value")
    rows["node"], rows["role"] = "probe", "client"
    return rows[COLUMNS].dropna(subset=["value"])


def tidy(run_dir: str | Path, windows: list[timeline.BatchWindow] | None = None,
         probe_window_s: float = 1.0) -> pd.DataFrame:
    """One table of the run: node samples and the probe's per-second latency, with UTC time, batch and phase."""
    parts = [read_samples(run_dir)]
    if TrafficProbe.was_started(run_dir):
        parts.append(probe_rows(TrafficProbe.attach(run_dir).records(), probe_window_s))
    parts = [p for p in parts if len(p)] or parts[:1]
    table = pd.concat(parts, ignore_index=True)
    table = table.sort_values(["ts", "node", "metric"], kind="stable").reset_index(drop=True)
    table.insert(1, "utc", pd.to_datetime(table["ts"], unit="s", utc=True))
    return timeline.label(table, windows or [])


def write_table(run_dir: str | Path, windows: list[timeline.BatchWindow] | None = None) -> Path:
    """Save tidy() as metrics.csv in the run folder and return its path."""
    path = Path(run_dir).resolve() / TABLE_FILE
    tidy(run_dir, windows).to_csv(path, index=False)
    return path

