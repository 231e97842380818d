"""The gates (docs/design.md, The pace): what the last seconds of a run look like to them (the worst
node for CPU, memory and replication lag from the sampler, the probe's latency) and their verdicts against the
params' thresholds and the latency budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.config import Gates
from runbook_lib.watch import timeline
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import latency_stats
from runbook_lib.watch.sampler import Sampler, read_samples


def node_summary(samples: pd.DataFrame) -> pd.DataFrame:
    """Per node over the given samples: mean CPU % and ops/s, last memory % and up, max replication lag (ms)."""
    if samples.empty:
        return pd.DataFrame(columns=["node", "role", "up", "cpu_pct", "memory_pct", "ops_per_s", "repl_lag_ms",
                                     "last_ts"])
    ordered = samples.sort_values("ts", kind="stable")
    by = ordered.groupby(["node", "metric"])["value"]
    mean, last, peak = by.mean().unstack(), by.last().unstack(), by.max().unstack()
    out = pd.DataFrame(index=pd.Index(sorted(ordered["node"].unique()), name="node"))
    out["role"] = ordered[ordered["role"] != "unknown"].groupby("node")["role"].last().reindex(out.index)
    out["role"] = out["role"].fillna("unknown")
    for name, frame in (("up", last), ("cpu_pct", mean), ("memory_pct", last), ("ops_per_s", mean),
                        ("repl_lag_ms", peak)):
        out[name] = frame[name].reindex(out.index) if name in frame.columns else np.nan
    out["last_ts"] = ordered.groupby("node")["ts"].max()
    return out.reset_index()


@dataclass
class GateValues:
    """What the gates judge, over the last `window_s` seconds: the worst node for each metric, and the probe."""

    window_s: float
    nodes: int
    sample_age_s: float
    fresh: bool
    down_nodes: list[str]
    cpu_pct: float | None
    cpu_node: str
    memory_pct: float | None
    memory_node: str
    replication_lag_ms: float | None
    lag_node: str
    avg_latency_ms: float | None
    p99_latency_ms: float | None
    probe_ops: int
    per_node: list[dict] = field(default_factory=list)


def _worst(summary: pd.DataFrame, column: str) -> tuple[float | None, str]:
    values = summary[["node", column]].dropna()
    if values.empty:
        return None, ""
    row = values.loc[values[column].astype(float).idxmax()]
    return float(row[column]), str(row["node"])


def values_from(samples: pd.DataFrame, records: pd.DataFrame | None, now: float, window_s: float,
                interval_s: float = 1.0) -> GateValues:
    """GateValues from samples and probe records (pure): only rows in (now - window_s, now] count."""
    recent = samples[(samples["ts"] > now - window_s) & (samples["ts"] <= now)]
    summary = node_summary(recent)
    cpu, cpu_node = _worst(summary, "cpu_pct")
    mem, mem_node = _worst(summary, "memory_pct")
    lag, lag_node = _worst(summary, "repl_lag_ms")
    age = now - float(recent["ts"].max()) if len(recent) else float("inf")
    avg = p99 = None
    ops = 0
    if records is not None:
        window = records[(records["ts"] > now - window_s) & (records["ts"] <= now)]
        if len(window):
            stats = latency_stats(window)
            avg, p99, ops = stats["avg_ms"], stats["p99_ms"], stats["ops"]
    down = summary.loc[summary["up"] == 0, "node"].tolist()
    return GateValues(window_s=window_s, nodes=len(summary), sample_age_s=age,
                      fresh=age <= max(3 * interval_s, 3.0), down_nodes=down,
                      cpu_pct=cpu, cpu_node=cpu_node, memory_pct=mem, memory_node=mem_node,
                      replication_lag_ms=lag, lag_node=lag_node, avg_latency_ms=avg, p99_latency_ms=p99,
                      probe_ops=ops, per_node=summary.to_dict("records"))


def gate_values(run_dir: str | Path, window_s: float = 10.0, now: float | None = None,
                spans: list[tuple[float, float]] | None = None) -> GateValues:
    """GateValues of a run folder from the sampler's file and the probe's records (if a probe was started); with
    `spans`, only the probe records inside them (the times slots moved).

    With `now` in the past this gives the baseline: e.g. the window just before the first batch.
    """
    now = time.time() if now is None else now
    samples = read_samples(run_dir, since=now - window_s)
    records = None
    if TrafficProbe.was_started(run_dir):
        records = TrafficProbe.attach(run_dir).records(since=now - window_s)
        if spans is not None:
            records = records[timeline.inside(records["ts"].to_numpy(float), spans)]
    interval = Sampler.recorded(run_dir)["interval_s"] if Sampler.was_started(run_dir) else 1.0
    return values_from(samples, records, now, window_s, interval)


def evaluate(values: GateValues, gates: Gates, baseline_p99_ms: float | None = None,
             budget_floor_ms: float = 0.0) -> list[Check]:
    """The article's thresholds (strictly below each) and the latency budget against the baseline p99 (pure).

    Missing node samples fail (the mover must not go on blind); missing probe latency only warns, since the probe
    is optional against production. `budget_floor_ms` widens the budget to at least baseline + that much: a
    sub-millisecond p99 varies by more than 10 % between quiet windows.
    """
    checks = [Check("fresh samples", "pass" if values.fresh and values.nodes else "fail",
                    f"{values.nodes} nodes sampled, newest sample {values.sample_age_s:.1f} s old"
                    if values.nodes else "no node samples in the window; is the sampler running?"),
              Check("all nodes up", "fail" if values.down_nodes else "pass",
                    "down: " + ", ".join(values.down_nodes) if values.down_nodes else f"{values.nodes} nodes answered")]
    w = f"{values.window_s:.0f} s"
    checks.append(_threshold("CPU", values.cpu_pct, gates.cpu_pct, "%", f"mean over {w}, worst node {values.cpu_node}",
                             missing="fail"))
    checks.append(_threshold("memory", values.memory_pct, gates.memory_pct, "%", f"of maxmemory, worst node "
                             f"{values.memory_node}", missing="fail"))
    checks.append(_threshold("replication lag", values.replication_lag_ms, gates.replication_lag_ms, "ms",
                             f"max over {w}, worst replica {values.lag_node}", missing="warn",
                             why_missing="no replica sampled"))
    probe = f"traffic probe, {values.probe_ops} requests over {w}"
    checks.append(_threshold("average latency", values.avg_latency_ms, gates.avg_latency_ms, "ms", probe))
    checks.append(_threshold("p99 latency", values.p99_latency_ms, gates.p99_latency_ms, "ms", probe))
    if values.p99_latency_ms is None or baseline_p99_ms is None:
        checks.append(Check(f"p99 within {gates.latency_budget_pct:g} % of baseline", "warn",
                            "not measured: " + ("no baseline" if baseline_p99_ms is None else "no probe latency")))
    else:
        limit = max(baseline_p99_ms * (1 + gates.latency_budget_pct / 100), baseline_p99_ms + budget_floor_ms)
        checks.append(Check(f"p99 within {gates.latency_budget_pct:g} % of baseline",
                            "pass" if values.p99_latency_ms <= limit else "fail",
                            f"p99 {values.p99_latency_ms:.2f} ms, baseline {baseline_p99_ms:.2f} ms, "
                            f"limit {limit:.2f} ms"))
    return checks


def _threshold(name: str, value: float | None, limit: float, unit: str, where: str, missing: str = "warn",
               why_missing: str = "not measured (is the probe running?)") -> Check:
    title = f"{name} < {limit:g} {unit}"
    if value is None or value != value:
        return Check(title, missing, why_missing if missing == "warn" else f"no {name} samples in the window")
    return Check(title, "pass" if value < limit else "fail", f"{value:.2f} {unit} ({where})")

