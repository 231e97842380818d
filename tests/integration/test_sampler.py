"""Metrics on a real sandbox: rows for every node with plausible values, the detached sampler with the probe in one
tidy table, gates evaluated from fresh samples, and a frozen node reported down."""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest

from runbook_lib.cluster.connection import cluster_client
from runbook_lib.config import Gates
from runbook_lib.watch.gates import evaluate, gate_values, values_from
from runbook_lib.watch.metrics_table import TABLE_FILE, tidy, write_table
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.sampler import NodePoller, Sampler, read_samples
from tests.conftest import module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NODES = [f"127.0.0.1:{PORT + i}" for i in range(6)]
MASTERS, REPLICAS = NODES[:3], NODES[3:]


sandbox = module_sandbox(PORT, 1000, replicas=1, new_masters=0)


def test_poller_gives_every_node_plausible_values(sandbox):
    poller = NodePoller(SEED, sandbox.credentials())
    assert sorted(poller.discover()) == NODES
    poller.poll()
    client = cluster_client([SEED], sandbox.credentials())
    for i in range(300):
        client.set(f"metrics:{i}", "x" * 100)
    time.sleep(0.3)
    rows = pd.DataFrame(poller.poll())
    poller.close()
    wide = rows.pivot_table(index="node", columns="metric", values="value")
    assert sorted(wide.index) == NODES
    assert (wide["up"] == 1).all()
    assert wide["cpu_pct"].between(0, 100 * (os.cpu_count() or 1)).all()
    assert wide["memory_pct"].between(0.01, 50).all(), "the sandbox holds a few MB of a 1 GB maxmemory"
    assert (wide["maxmemory_bytes"] == 1024 ** 3).all()
    assert (wide.loc[MASTERS, "ops_per_s"] > 0).all()
    assert set(rows.loc[rows["node"].isin(MASTERS), "role"]) == {"master"}
    assert set(rows.loc[rows["node"].isin(REPLICAS), "role"]) == {"replica"}
    assert (wide.loc[REPLICAS, "master_link_up"] == 1).all()
    assert wide.loc[REPLICAS, "repl_lag_ms"].between(0, 200).all()
    assert (wide.loc[REPLICAS, "repl_lag_bytes"] >= 0).all()
    assert wide.loc[REPLICAS, "repl_ack_lag_s"].between(0, 2).all()


def test_sampler_and_probe_make_one_tidy_table_and_pass_the_gates(sandbox, tmp_path):
    creds = sandbox.credentials()
    sampler = Sampler(SEED, creds, tmp_path, interval_s=0.5)
    sampler.start()
    probe = TrafficProbe([SEED], creds, tmp_path, rate=200, processes=1)
    probe.start()
    try:
        time.sleep(1.5)
        batch_start = time.time()
        time.sleep(1.0)
        batch_end = time.time()
        time.sleep(1.0)
        values = gate_values(tmp_path, window_s=2.0)
    finally:
        probe.stop()
        killed = Sampler.attach(tmp_path).stop()
    assert killed == [] and sampler.alive() == []
    assert values.fresh and values.nodes == 6 and values.down_nodes == []
    assert values.probe_ops > 100 and 0 < values.avg_latency_ms < values.p99_latency_ms
    checks = {c.name: c for c in evaluate(values, Gates(), baseline_p99_ms=values.p99_latency_ms)}
    assert all(c.status == "pass" for c in checks.values()), checks

    table = tidy(tmp_path, [(1, batch_start, batch_end)])
    assert list(table.columns) == ["ts", "utc", "node", "role", "metric", "value", "batch", "phase"]
    assert set(table["node"]) == set(NODES) | {"probe"}
    assert (table[table["node"] != "probe"].groupby("node")["ts"].nunique() >= 4).all()
    assert {"cpu_pct", "memory_pct", "ops_per_s", "repl_lag_ms", "p99_ms", "errors", "lost"} <= set(table["metric"])
    assert set(table["phase"]) == {"baseline", "batch", "after"}
    assert set(table["batch"].dropna()) == {1}
    assert table["ts"].is_monotonic_increasing
    path = write_table(tmp_path, [(1, batch_start, batch_end)])
    assert path == tmp_path.resolve() / TABLE_FILE
    assert len(pd.read_csv(path)) == len(table)


def test_a_frozen_replica_is_down_and_fails_the_gate(sandbox):
    pid = sandbox.running_pids()[PORT + 3]
    poller = NodePoller(SEED, sandbox.credentials(), timeout=0.3)
    poller.poll()
    os.kill(pid, signal.SIGSTOP)
    try:
        rows = pd.DataFrame(poller.poll())
    finally:
        os.kill(pid, signal.SIGCONT)
    poller.close()
    assert rows.loc[(rows["node"] == REPLICAS[0]) & (rows["metric"] == "up"), "value"].tolist() == [0]
    values = values_from(rows, None, now=rows["ts"].max(), window_s=5)
    statuses = {c.name: c.status for c in evaluate(values, Gates())}
    assert statuses["all nodes up"] == "fail" and statuses["average latency < 5 ms"] == "warn"
    assert read_samples("/nonexistent").empty
