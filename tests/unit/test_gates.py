"""Gates (pure): the article's thresholds and the latency budget on crafted values, and the metric arithmetic
behind them (CPU from INFO deltas, memory, replication offsets, per-node summaries, windows)."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest

from runbook_lib.config import Gates
from runbook_lib.watch.gates import GateValues, evaluate, node_summary, values_from
from runbook_lib.watch.probe_stats import COLUMNS
from runbook_lib.watch.sampler import cpu_pct, memory_pct, offset_time

GOOD = GateValues(window_s=10, nodes=8, sample_age_s=0.4, fresh=True, down_nodes=[], cpu_pct=35.0, cpu_node="a:1",
                  memory_pct=40.0, memory_node="a:1", replication_lag_ms=3.0, lag_node="b:1", avg_latency_ms=0.4,
                  p99_latency_ms=1.0, probe_ops=2000)


def statuses(values: GateValues, gates: Gates | None = None, baseline: float | None = 1.0) -> dict[str, str]:
    return {c.name: c.status for c in evaluate(values, gates or Gates(), baseline)}


def failed(values: GateValues, **kw) -> list[str]:
    return [name for name, status in statuses(values, **kw).items() if status == "fail"]


def test_healthy_values_pass_every_gate():
    result = statuses(GOOD)
    assert result == {"fresh samples": "pass", "all nodes up": "pass", "CPU < 70 %": "pass", "memory < 80 %": "pass",
                      "replication lag < 500 ms": "pass", "average latency < 5 ms": "pass",
                      "p99 latency < 20 ms": "pass", "p99 within 10 % of baseline": "pass"}


@pytest.mark.parametrize("change, gate", [
    ({"cpu_pct": 70.0}, "CPU < 70 %"),
    ({"memory_pct": 85.0}, "memory < 80 %"),
    ({"replication_lag_ms": 500.0}, "replication lag < 500 ms"),
    ({"avg_latency_ms": 5.2, "p99_latency_ms": 8.0}, "average latency < 5 ms"),
    ({"down_nodes": ["a:2"]}, "all nodes up"),
    ({"fresh": False, "sample_age_s": 30.0}, "fresh samples"),
])
def test_each_threshold_fails_on_its_own(change, gate):
    assert failed(replace(GOOD, **change), baseline=None) == [gate]


def test_p99_over_its_threshold_also_breaks_the_budget():
    assert failed(replace(GOOD, p99_latency_ms=25.0), baseline=1.0) == ["p99 latency < 20 ms",
                                                                       "p99 within 10 % of baseline"]


def test_latency_budget_against_the_baseline():
    assert statuses(replace(GOOD, p99_latency_ms=1.10))["p99 within 10 % of baseline"] == "pass"
    assert statuses(replace(GOOD, p99_latency_ms=1.11))["p99 within 10 % of baseline"] == "fail"
    loose = Gates(latency_budget_pct=50.0)
    assert statuses(replace(GOOD, p99_latency_ms=1.4), gates=loose)["p99 within 50 % of baseline"] == "pass"
    assert statuses(GOOD, baseline=None)["p99 within 10 % of baseline"] == "warn"
    floored = {c.name: c.status for c in evaluate(replace(GOOD, p99_latency_ms=1.9), Gates(), 1.0, budget_floor_ms=1)}
    assert floored["p99 within 10 % of baseline"] == "pass"


def test_thresholds_come_from_the_params():
    strict = Gates(cpu_pct=30.0, replication_lag_ms=2.0)
    assert failed(GOOD, gates=strict) == ["CPU < 30 %", "replication lag < 2 ms"]


def test_missing_probe_warns_but_missing_node_samples_fail():
    no_probe = statuses(replace(GOOD, avg_latency_ms=None, p99_latency_ms=None, probe_ops=0))
    assert no_probe["average latency < 5 ms"] == no_probe["p99 latency < 20 ms"] == "warn"
    assert no_probe["p99 within 10 % of baseline"] == "warn"
    no_replicas = statuses(replace(GOOD, replication_lag_ms=None, lag_node=""))
    assert no_replicas["replication lag < 500 ms"] == "warn"
    blind = replace(GOOD, nodes=0, fresh=False, sample_age_s=math.inf, cpu_pct=None, memory_pct=None)
    assert set(failed(blind)) == {"fresh samples", "CPU < 70 %", "memory < 80 %"}


def test_cpu_memory_and_offset_arithmetic():
    assert cpu_pct({"used_cpu_sys": 1.0, "used_cpu_user": 2.0}, {"used_cpu_sys": 1.2, "used_cpu_user": 2.3}, 1.0) \
        == pytest.approx(50.0)
    assert math.isnan(cpu_pct({"used_cpu_sys": 0, "used_cpu_user": 0}, {"used_cpu_sys": 0, "used_cpu_user": 0}, 0))
    assert memory_pct({"used_memory": 512, "maxmemory": 1024}) == 50.0
    assert memory_pct({"used_memory": 100, "maxmemory": 0, "total_system_memory": 1000}) == 10.0
    history = [(10.0, 1000), (11.0, 3000), (12.0, 3000)]
    assert offset_time(history, 2000) == 10.5
    assert offset_time(history, 3000) == 11.0
    assert offset_time(history, 5000) == 12.0
    assert offset_time(history, 500) is None


def samples(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["ts", "node", "role", "metric", "value"])


def test_node_summary_and_window():
    df = samples([
        (100.0, "m:1", "master", "cpu_pct", 10.0), (101.0, "m:1", "master", "cpu_pct", 30.0),
        (101.0, "m:1", "master", "memory_pct", 12.0), (101.0, "m:1", "master", "up", 1),
        (100.0, "m:2", "master", "cpu_pct", 90.0), (108.0, "m:2", "master", "cpu_pct", 50.0),
        (108.0, "m:2", "master", "memory_pct", 20.0), (108.0, "m:2", "master", "up", 1),
        (108.0, "r:1", "replica", "repl_lag_ms", 4.0), (109.0, "r:1", "replica", "repl_lag_ms", 1.0),
        (109.0, "r:1", "unknown", "up", 0),
    ])
    summary = node_summary(df).set_index("node")
    assert summary.loc["m:1", "cpu_pct"] == 20.0 and summary.loc["m:2", "cpu_pct"] == 70.0
    assert summary.loc["r:1", "repl_lag_ms"] == 4.0 and summary.loc["r:1", "role"] == "replica"
    assert math.isnan(summary.loc["r:1", "cpu_pct"])
    probe = pd.DataFrame([{"ts": 100.0 + i / 10, "worker": 0, "op": "set", "key": f"k{i}", "latency_ms": 1.0 + i % 2,
                           "outcome": "ok", "error": "", "note": ""} for i in range(100)], columns=COLUMNS)
    recent = values_from(df, probe, now=109.5, window_s=5.0)
    assert (recent.cpu_pct, recent.cpu_node) == (50.0, "m:2")
    assert (recent.memory_pct, recent.replication_lag_ms, recent.down_nodes) == (20.0, 4.0, ["r:1"])
    assert recent.nodes == 2 and recent.fresh and recent.sample_age_s == pytest.approx(0.5)
    assert recent.probe_ops == 50 and recent.avg_latency_ms == pytest.approx(1.5, abs=0.05)
    whole = values_from(df, None, now=109.5, window_s=60.0)
    assert (whole.cpu_pct, whole.cpu_node, whole.avg_latency_ms) == (70.0, "m:2", None)
    stale = values_from(df, None, now=200.0, window_s=60.0)
    assert stale.nodes == 0 and not stale.fresh
    assert node_summary(df.iloc[:0]).empty
