"""The probe's pure parts: error kinds, latency statistics per batch and per window, gaps (cluster-wide and per
master), the timeline, summaries (failures by client), the pacing schedule (no coordinated omission), reading files
that workers are still writing (and files from before the service_ms, client and node columns), and settings
validation."""

from __future__ import annotations

import math

import numpy as np
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
from runbook_lib.watch.probe import TrafficProbe, schedule
from runbook_lib.watch.probe_client import classify
from runbook_lib.watch.probe_stats import (
    COLUMNS,
    error_kinds,
    error_kinds_by_client,
    latency_stats,
    longest_gap,
    longest_gap_per_node,
    longest_unanswered_per_node,
    ops_by_client,
    per_batch,
    per_window,
    read_records,
    summarize,
)
from runbook_lib.watch.timeline import batch_windows, label


def records(rows: list[tuple], client: str | None = None, node: str | None = None) -> pd.DataFrame:
    """Records from (ts, op, latency_ms, outcome) tuples; client and node are left empty (NaN) unless given."""
    return pd.DataFrame([{"ts": ts, "worker": 0, "op": op, "key": f"p:t:0:{i}", "latency_ms": lat, "outcome": out,
                          "error": "", "note": "", "service_ms": lat, "client": client, "node": node}
                         for i, (ts, op, lat, out) in enumerate(rows)], columns=COLUMNS)


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
    (AttributeError("'Foo' object has no attribute 'bar'"), "AttributeError"),
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
    assert good.ok and [c.status for c in good.checks()] == ["pass", "pass", "warn", "pass"], "no stock client ran"
    assert good.to_dict()["ok"] is True and good.writes == 10 and good.reads == 1
    assert good.ops_by_client == {"patched": 11} and good.errors_by_client == {"patched": {}}
    bad = summarize(records([*steady(0, 1), (1.0, "get", 1.0, "timeout")]), acknowledged=10, verified=9,
                    lost_writes=["p:t:0:3"], killed=[123])
    assert not bad.ok and [c.status for c in bad.checks()] == ["fail", "fail", "warn", "warn"]
    assert "p:t:0:3" in bad.checks()[1].detail
    assert summarize(df.iloc[:0]).to_dict()["p99_ms"] is None


def test_stock_client_failures_are_failed_requests_counted_by_kind_and_client():
    patched = records([*steady(0, 1), (1.0, "get", 1.0, "ok")], client="patched", node="m:1")
    stock = records([*steady(0, 1), (0.5, "get", 0.3, "ask-unknown-node"), (0.7, "set", 0.2, "ask-unknown-node"),
                     (0.9, "set", 2000.0, "timeout")], client="stock", node="m:2")
    df = pd.concat([patched, stock], ignore_index=True).sort_values("ts", kind="stable")
    assert error_kinds_by_client(df) == {"patched": {}, "stock": {"ask-unknown-node": 2, "timeout": 1}}
    assert ops_by_client(df) == {"patched": 11, "stock": 13}
    summary = summarize(df, acknowledged=20, verified=20)
    assert not summary.ok and summary.errors == 3 and summary.stock_errors == 3
    assert summary.errors_by_kind == {"ask-unknown-node": 2, "timeout": 1}
    checks = {c.name: c for c in summary.checks()}
    assert checks["probe: no failed request"].status == "fail"
    assert "stock clients: 3 of 13 failed (ask-unknown-node: 2, timeout: 1)" in checks["probe: no failed request"].detail
    assert checks["probe: stock clients measured"].status == "pass"
    data = summary.to_dict()
    assert data["errors_by_client"]["stock"] == {"ask-unknown-node": 2, "timeout": 1} and data["stock_errors"] == 3
    assert set(data["longest_gap_by_node"]) == {"m:1", "m:2"}
    assert error_kinds_by_client(records([(0.0, "set", 1.0, "timeout")])) == {"patched": {"timeout": 1}}, \
        "records without a client column (older files) are the patched workers'"


def test_longest_gap_per_node_finds_the_master_that_stopped_serving():
    rows = []
    for i in range(200):  # 10 s at 20 requests/s, round robin over three masters; m:2 fails from 4 s to 6 s
        ts, node = i * 0.05, f"m:{i % 3}"
        outcome = "timeout" if node == "m:2" and 4.0 <= ts < 6.0 else "ok"
        rows.append({"ts": ts, "worker": 0, "op": "set", "key": f"k{i}", "latency_ms": 1.0, "outcome": outcome,
                     "error": "", "note": "", "service_ms": 1.0, "client": "stock", "node": node})
    df = pd.DataFrame(rows, columns=COLUMNS)
    gaps = longest_gap_per_node(df)
    assert set(gaps) == {"m:0", "m:1", "m:2"}
    gap, at = gaps["m:2"]
    assert gap == pytest.approx(6.101 - 3.851) and at == pytest.approx(3.851), "m:2's last success before, first after"
    assert gaps["m:0"][0] == pytest.approx(0.15, abs=1e-6) and gaps["m:1"][0] == pytest.approx(0.15, abs=1e-6)
    assert longest_gap(df)[0] == pytest.approx(0.1), "cluster-wide the other masters kept serving"
    assert longest_gap_per_node(df.iloc[:0]) == {}
    assert longest_gap_per_node(df.assign(node="")) == {}, "records without a node are left out"


def test_a_stall_on_one_master_is_a_gap_on_every_master_but_unanswered_only_on_it():
    """One worker, round robin over m:0 and m:1, 100 requests/s; the request to m:0 scheduled at 1.0 s takes 300 ms.
    The worker sends nothing to m:1 meanwhile, so m:1's gap grows too; only m:0 was asked and did not answer."""
    rows, clock, k = [], 0.0, 0
    while clock < 2.0:
        scheduled = max(k * 0.01, 0.0)
        sent = max(clock, scheduled)
        node = f"m:{k % 2}"
        service = 0.3 if node == "m:0" and scheduled >= 1.0 and not any(r["service_ms"] > 100 for r in rows) else 0.001
        clock = sent + service
        rows.append({"ts": scheduled, "worker": 0, "op": "get", "key": f"k{k}", "latency_ms": (clock - scheduled) * 1000,
                     "outcome": "ok", "error": "", "note": "", "service_ms": service * 1000, "client": "patched",
                     "node": node})
        k += 1
    df = pd.DataFrame(rows, columns=COLUMNS)
    gaps, unanswered = longest_gap_per_node(df), longest_unanswered_per_node(df)
    assert gaps["m:0"][0] == pytest.approx(0.32, abs=0.015) and gaps["m:1"][0] == pytest.approx(0.30, abs=0.015)
    assert unanswered["m:0"][0] == pytest.approx(0.3, abs=0.002) and unanswered["m:0"][1] == pytest.approx(1.0)
    assert unanswered["m:1"][0] < 0.01


class FakeClock:
    """A monotonic clock that only moves when the code under test sleeps or a simulated request takes time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "the schedule must not spin"
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_schedule_turns_one_stall_into_many_slow_samples():
    """200 requests/s for 2 s, each taking 0.5 ms, but the first one due after 1 s stalls for 300 ms: about
    T*R/1000 = 60 requests are late, each timed from its scheduled send time; none is dropped."""
    clock, latency, service = FakeClock(), [], []
    stalled = False
    for scheduled in schedule(0.005, lambda: clock.now >= 2.0, clock=clock, sleep=clock.sleep):
        sent = clock.now
        clock.now += 0.3 if scheduled >= 1.0 and not stalled else 0.0005
        stalled = stalled or scheduled >= 1.0
        latency.append((clock.now - scheduled) * 1000)
        service.append((clock.now - sent) * 1000)
    latency, service = np.array(latency), np.array(service)
    assert len(latency) == pytest.approx(400, abs=1), "every scheduled request was sent, the backlog too"
    assert (service > 10).sum() == 1, "a closed-loop probe would have seen one slow request"
    assert 60 <= (latency > 10).sum() <= 70, "the stall shows as about T*R/1000 slow samples"
    assert 11 <= (latency >= 250).sum() <= 12, "latencies fall from 300 ms by 4.5 ms a request (5 ms less 0.5 ms)"
    assert latency.max() == pytest.approx(300.0)
    assert latency[-100:].max() < 1, "after the backlog the worker is back on schedule"
    assert max(clock.sleeps) <= 0.1


def test_the_schedule_sleeps_in_naps_and_stops_between_them():
    clock = FakeClock()
    sent = list(schedule(3600.0, lambda: clock.now > 0.25, clock=clock, sleep=clock.sleep))
    assert sent == [0.0] and clock.now == pytest.approx(0.3) and clock.sleeps == [0.1, 0.1, 0.1]


def test_reading_a_file_a_worker_is_writing(tmp_path):
    path = tmp_path / "worker-0.csv"
    lines = ["ts,worker,op,key,latency_ms,outcome,error,note"]
    lines += [f"{100 + i * 0.01:.6f},0,set,p:t:0:{i},0.2,ok,," for i in range(50_000)]
    path.write_text("\n".join(lines) + "\n" + "100.5,0,se")
    everything = read_records(path)
    assert len(everything) == 50_000 and everything["latency_ms"].dtype == float
    tail = read_records(path, since=590.0)
    assert len(tail) == 1000 and tail["ts"].min() >= 590.0 and tail["key"].iloc[-1] == "p:t:0:49999"
    assert (everything["client"] == "patched").all() and (everything["node"] == "").all()
    assert (everything["service_ms"] == everything["latency_ms"]).all(), "an older file: service_ms = latency_ms"
    assert list(everything.columns) == COLUMNS
    current = tmp_path / "worker-1.csv"
    current.write_text(",".join(COLUMNS) + "\n" + "100.000000,1,get,p:t:1:0,250.500,ok,,,0.400,stock,127.0.0.1:7001\n"
                       + "100.005000,1,set,p:t:1:1,3.000,ask-unknown-node,AttributeError: x,,0.300,stock,\n")
    df = read_records(current)
    assert df["client"].tolist() == ["stock", "stock"] and df["node"].tolist() == ["127.0.0.1:7001", ""]
    assert df["service_ms"].tolist() == [0.4, 0.3] and df["latency_ms"].tolist() == [250.5, 3.0]
    header_only = tmp_path / "empty.csv"
    header_only.write_text(lines[0] + "\n")
    assert read_records(header_only).empty and read_appended_csv(header_only, since=0).empty


@pytest.mark.parametrize("settings", [{"prefix": "runbook:{probe}:"}, {"prefix": ""}, {"rate": 0},
                                      {"read_ratio": 1.5}, {"processes": 0}, {"ttl_s": 10}, {"stock_processes": -1},
                                      {"stock_processes": 33}])
def test_probe_settings_are_checked(settings, tmp_path):
    with pytest.raises(BadInput, match="traffic probe"):
        TrafficProbe(["127.0.0.1:7000"], Credentials(), tmp_path, **settings)


def test_workers_are_patched_then_stock(tmp_path):
    assert TrafficProbe(["127.0.0.1:7000"], Credentials(), tmp_path).clients == ["patched", "patched", "stock"]
    probe = TrafficProbe(["127.0.0.1:7000"], Credentials(), tmp_path, processes=1, stock_processes=2)
    assert probe.clients == ["patched", "stock", "stock"]
    assert TrafficProbe(["127.0.0.1:7000"], Credentials(), tmp_path, stock_processes=0).clients == ["patched"] * 2


def test_attach_without_a_probe_says_so(tmp_path):
    with pytest.raises(BadInput, match="no traffic probe was started"):
        TrafficProbe.attach(tmp_path)


def test_probe_params_are_validated_with_the_key_named(tmp_path):
    path = tmp_path / "params.yaml"
    base = 'cluster: {seed: "127.0.0.1:7000"}\nnew_masters: [{address: "127.0.0.1:7006"}]\n'
    path.write_text(base + 'probe: {enabled: true, rate: 50, prefix: "app:probe:"}\n')
    probe = load_params(path).model.probe
    assert (probe.enabled, probe.rate, probe.processes, probe.prefix) == (True, 50.0, 2, "app:probe:")
    assert probe.stock_processes == 1, "stock clients run by default: their failures are what applications see"
    path.write_text(base + 'probe: {prefix: "probe:{tag}:"}\n')
    with pytest.raises(ParamsError, match="probe.prefix"):
        load_params(path)
    path.write_text(base + "probe: {rate: 100, burst: 5}\n")
    with pytest.raises(ParamsError, match="probe.burst: unknown key"):
        load_params(path)
