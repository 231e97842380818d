"""The probe's pure parts: error kinds, latency statistics per batch and per window, gaps, the timeline, summaries,
reading files that workers are still writing, and settings validation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import redis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MovedError,
    SlotNotCoveredError,
    TryAgainError,
)

from runbook_lib.config import Credentials, load_params
from runbook_lib.exceptions import BadInput, ParamsError
from runbook_lib.watch.detached import read_appended_csv
from runbook_lib.watch.timeline import batch_windows, label
from runbook_lib.watch.traffic import (
    COLUMNS,
    TrafficProbe,
    classify,
    error_kinds,
    latency_stats,
    longest_gap,
    per_batch,
    per_window,
    read_records,
    summarize,
)


def records(rows: list[tuple]) -> pd.DataFrame:
    """Records from (ts, op, latency_ms, outcome) tuples."""
    return pd.DataFrame([{"ts": ts, "worker": 0, "op": op, "key": f"p:t:0:{i}", "latency_ms": lat, "outcome": out,
                          "error": "", "note": ""} for i, (ts, op, lat, out) in enumerate(rows)], columns=COLUMNS)


def steady(start: float, end: float, step: float = 0.1, latency: float = 1.0) -> list[tuple]:
    n = round((end - start) / step)
    return [(start + i * step, "set", latency, "ok") for i in range(n)]


@pytest.mark.parametrize("error, kind", [
    (redis.TimeoutError("Timeout reading from socket"), "timeout"),
    (redis.ConnectionError("Connection refused"), "connection"),
    (ClusterDownError("CLUSTERDOWN The cluster is down"), "clusterdown"),
    (TryAgainError("TRYAGAIN"), "tryagain"),
    (MovedError("3999 127.0.0.1:6381"), "redirect"),
    (AskError("3999 127.0.0.1:6381"), "redirect"),
    (ClusterError("TTL exhausted."), "redirect_loop"),
    (SlotNotCoveredError("Slot 5 not covered"), "slot_not_covered"),
    (redis.ResponseError("OOM command not allowed"), "response"),
    (AttributeError("'NoneType' object has no attribute 'redis_connection'"), "ask-unknown-node"),
    (ValueError("boom"), "ValueError"),
])
def test_classify(error, kind):
    assert classify(error) == kind


def test_latency_stats_counts_failures_and_data_errors_apart():
    df = records([(0.0, "set", 1.0, "ok"), (0.5, "get", 3.0, "ok"), (1.0, "get", 2.0, "lost"),
                  (2.0, "set", 100.0, "timeout")])
    s = latency_stats(df)
    assert (s["ops"], s["errors"], s["lost"]) == (4, 1, 1)
    assert s["p50_ms"] == 2.5 and s["max_ms"] == 100.0 and s["avg_ms"] == pytest.approx(26.5)
    assert s["ops_per_s"] == 2.0
    assert latency_stats(df, seconds=4.0)["ops_per_s"] == 1.0
    empty = latency_stats(df.iloc[:0], seconds=1.0)
    assert empty["ops"] == 0 and empty["ops_per_s"] == 0 and math.isnan(empty["p99_ms"])
    assert error_kinds(df) == {"timeout": 1}


def test_longest_gap_is_the_longest_time_without_a_served_request():
    df = records([*steady(0, 1), (1.0, "set", 5.0, "connection"), (1.5, "get", 1.0, "clusterdown"),
                  *steady(3.0, 4.0)])
    gap, at = longest_gap(df)
    assert gap == pytest.approx(3.001 - 0.901) and at == pytest.approx(0.901)
    only_failures = records([(0.0, "set", 1.0, "timeout"), (2.0, "set", 1000.0, "timeout")])
    assert longest_gap(only_failures) == (pytest.approx(3.0), 0.0)
    assert all(math.isnan(v) for v in longest_gap(only_failures.iloc[:0]))


def test_per_batch_has_baseline_batches_pauses_and_after_compared_with_the_baseline():
    df = records([*steady(0, 10, latency=1.0), *steady(10, 12, latency=2.0), *steady(12, 13, latency=1.0),
                  *steady(13, 14, latency=3.0), *steady(14, 16, latency=1.0)])
    table = per_batch(df, [(2, 13.0, 14.0), (1, 10.0, 12.0)]).set_index("window")
    assert list(table.index) == ["baseline", "batch 1", "batch 2", "pauses", "after"]
    assert table.loc["batch 1", "batch"] == 1 and pd.isna(table.loc["baseline", "batch"])
    assert table.loc["batch 1", "ops"] == 20 and table.loc["batch 1", "ops_per_s"] == 10
    assert table.loc["batch 2", "p99_ms"] == 3.0 and table.loc["pauses", "ops"] == 10
    assert table.loc["batch 1", "p99_vs_baseline_pct"] == pytest.approx(100.0)
    assert table.loc["baseline", "seconds"] == pytest.approx(10.0)
    no_batches = per_batch(df, [])
    assert list(no_batches["window"]) == ["baseline"] and no_batches["ops"].iloc[0] == len(df)


def test_per_window_keeps_empty_windows():
    df = records([(0.1, "set", 1.0, "ok"), (0.6, "set", 1.0, "ok"), (3.2, "get", 4.0, "lost")])
    table = per_window(df, 1.0)
    assert list(table["ts"]) == [0.0, 1.0, 2.0, 3.0]
    assert list(table["ops"]) == [2, 0, 0, 1] and list(table["lost"]) == [0, 0, 0, 1]
    assert per_window(df.iloc[:0]).empty


def test_batch_windows_pair_journal_events_and_an_open_batch_ends_now():
    journal = [{"event": "batch_start", "batch": 1, "ts": 10.0}, {"event": "slot_assigned", "ts": 10.5},
               {"event": "batch_end", "batch": 1, "ts": 11.0}, {"event": "batch_start", "batch": 2, "ts": 12.0}]
    assert batch_windows(journal, now=15.0) == [(1, 10.0, 11.0), (2, 12.0, 15.0)]
    assert batch_windows([]) == []


def test_label_marks_batch_and_phase():
    df = pd.DataFrame({"ts": [5.0, 10.0, 10.9, 11.0, 12.5, 14.0], "v": range(6)})
    out = label(df, [(1, 10.0, 11.0), (2, 12.0, 13.0)])
    assert out["batch"].tolist() == [pd.NA, 1, 1, pd.NA, 2, pd.NA]
    assert out["phase"].tolist() == ["baseline", "batch", "batch", "pause", "batch", "after"]
    assert label(df, [])["phase"].eq("baseline").all() and "batch" not in df.columns


def test_summary_verdicts():
    df = records([*steady(0, 1), (1.0, "get", 1.0, "ok")])
    good = summarize(df, acknowledged=10, verified=10)
    assert good.ok and [c.status for c in good.checks()] == ["pass", "pass", "pass"]
    assert good.to_dict()["ok"] is True and good.writes == 10 and good.reads == 1
    bad = summarize(records([*steady(0, 1), (1.0, "get", 1.0, "timeout")]), acknowledged=10, verified=9,
                    lost_writes=["p:t:0:3"], killed=[123])
    assert not bad.ok and [c.status for c in bad.checks()] == ["fail", "fail", "warn"]
    assert "p:t:0:3" in bad.checks()[1].detail
    assert summarize(df.iloc[:0]).to_dict()["p99_ms"] is None


def test_reading_a_file_a_worker_is_writing(tmp_path):
    path = tmp_path / "worker-0.csv"
    lines = ["ts,worker,op,key,latency_ms,outcome,error,note"]
    lines += [f"{100 + i * 0.01:.6f},0,set,p:t:0:{i},0.2,ok,," for i in range(50_000)]
    path.write_text("\n".join(lines) + "\n" + "100.5,0,se")
    everything = read_records(path)
    assert len(everything) == 50_000 and everything["latency_ms"].dtype == float
    tail = read_records(path, since=590.0)
    assert len(tail) == 1000 and tail["ts"].min() >= 590.0 and tail["key"].iloc[-1] == "p:t:0:49999"
    header_only = tmp_path / "empty.csv"
    header_only.write_text(lines[0] + "\n")
    assert read_records(header_only).empty and read_appended_csv(header_only, since=0).empty


@pytest.mark.parametrize("settings", [{"prefix": "runbook:{probe}:"}, {"prefix": ""}, {"rate": 0},
                                      {"read_ratio": 1.5}, {"processes": 0}, {"ttl_s": 10}])
def test_probe_settings_are_checked(settings, tmp_path):
    with pytest.raises(BadInput, match="traffic probe"):
        TrafficProbe(["127.0.0.1:7000"], Credentials(), tmp_path, **settings)


def test_attach_without_a_probe_says_so(tmp_path):
    with pytest.raises(BadInput, match="no traffic probe was started"):
        TrafficProbe.attach(tmp_path)


def test_probe_params_are_validated_with_the_key_named(tmp_path):
    path = tmp_path / "params.yaml"
    base = 'cluster: {seed: "127.0.0.1:7000"}\nnew_masters: [{address: "127.0.0.1:7006"}]\n'
    path.write_text(base + 'probe: {enabled: true, rate: 50, prefix: "app:probe:"}\n')
    probe = load_params(path).model.probe
    assert (probe.enabled, probe.rate, probe.processes, probe.prefix) == (True, 50.0, 2, "app:probe:")
    path.write_text(base + 'probe: {prefix: "probe:{tag}:"}\n')
    with pytest.raises(ParamsError, match="probe.prefix"):
        load_params(path)
    path.write_text(base + "probe: {rate: 100, burst: 5}\n")
    with pytest.raises(ParamsError, match="probe.burst: unknown key"):
        load_params(path)
