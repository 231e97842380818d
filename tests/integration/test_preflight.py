"""Preflight against a real sandbox: a config difference on a new node stops `runbook run` with nothing changed, a big
key is found in its slot, ports are probed (a closed one is caught), kernel settings and CPU are read, and the
monitoring files name every node, the unjoined new ones included."""

from __future__ import annotations

import json
import subprocess

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import nodes_table, observe
from runbook_lib.config import load_params
from runbook_lib.sections import bigkeys, monitoring, preflight
from tests.conftest import cluster_layout, module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW_MASTER = f"127.0.0.1:{PORT + 6}"
NEW_REPLICA = f"127.0.0.1:{PORT + 7}"
CLOSED_PORT = port_block(1)
CLOSED = f"127.0.0.1:{CLOSED_PORT}"
BIG_KEY = "big:{preflight}"
MB = 1024 * 1024


sandbox = module_sandbox(PORT, 2000)


@pytest.fixture(scope="module")
def params(sandbox):
    return load_params(sandbox.root / "params.yaml")


@pytest.fixture()
def topo(sandbox):
    return observe(SEED, sandbox.credentials())


def by_name(checks, name):
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, f"no single check named {name!r} in {[c.name for c in checks]}"
    return found[0]


def test_default_sandbox_has_no_fail_and_every_check_has_a_reason(sandbox, params, topo):
    found = preflight.run_checks(topo, params, sandbox.credentials())
    assert [c for c in found.checks if c.status == "fail"] == []
    assert all(c.status in ("pass", "warn") and c.detail for c in found.checks)
    for name in ("connectivity and auth", "version parity", "config parity", "data and bus ports",
                 "memory vs maxmemory", "clients vs maxclients", "host memory 127.0.0.1", "CPU", "cluster state",
                 "all slots covered", "no open slots", "nodes agree", "every master has a replica"):
        assert by_name(found.checks, name).status == "pass", by_name(found.checks, name)
    assert "redis 7" in by_name(found.checks, "version parity").detail
    assert {f.address for f in found.facts if f.new} == {NEW_MASTER, NEW_REPLICA}
    assert all(f.cpu_pct is not None and 0 <= f.cpu_pct < 100 for f in found.facts)
    assert len(preflight.headroom_table(found.facts)) == 8


def test_bus_ports_come_from_cluster_nodes_and_are_open(sandbox, params, topo):
    found = preflight.run_checks(topo, params, sandbox.credentials())
    rows = {r["node"]: r for r in found.ports}
    assert len(rows) == 8
    for address, r in rows.items():
        assert r["bus port"] == r["data port"] + 10000
        assert r["data"] == r["bus"] == "open"
        new = address in (NEW_MASTER, NEW_REPLICA)
        assert r["bus port from"] == ("its own CLUSTER NODES" if new else "CLUSTER NODES")


def test_a_closed_bus_port_fails(topo):
    probes = preflight.port_probes([SEED, CLOSED], topo, [], timeout=1.0)
    closed = next(r for r in probes if r["node"] == CLOSED)
    assert closed["bus port"] == CLOSED_PORT + 10000 and closed["bus port from"] == "data port + 10000"
    assert closed["bus"] != "open" and closed["data"] != "open"
    checks = preflight.port_checks(probes)
    assert [(c.name, c.status) for c in checks] == [(f"ports {CLOSED}", "fail")]
    assert f"bus port {CLOSED_PORT + 10000}" in checks[0].detail and "open both ports" in checks[0].detail


def test_kernel_settings_of_this_host_pass_or_warn_with_reasons():
    checks = preflight.kernel_checks([SEED, NEW_MASTER])
    assert [c.name for c in checks] == ["kernel vm.overcommit_memory", "kernel transparent_hugepage", "kernel vm.swappiness"]
    assert all(c.status in ("pass", "warn") and "(this host, 2 nodes)" in c.detail for c in checks)
    remote = preflight.kernel_checks([SEED, "203.0.113.10:7000"])
    assert remote[-1].name == "kernel settings on other hosts" and remote[-1].status == "warn"
    assert "not verifiable from here: 203.0.113.10" in remote[-1].detail


def test_config_difference_on_a_new_node_fails_and_run_stops_with_nothing_changed(sandbox, params, runbook_bin):
    creds = sandbox.credentials()
    new_master = node_client(NEW_MASTER, creds)
    ports = list(range(PORT, PORT + 8))
    before = cluster_layout(ports, creds)
    new_master.config_set("maxmemory-policy", "allkeys-lru")
    try:
        found = preflight.run_checks(observe(SEED, creds), params, creds)
        parity = by_name(found.checks, "config parity")
        assert parity.status == "fail"
        assert f"{NEW_MASTER} has 'allkeys-lru'" in parity.detail and "7 nodes have 'noeviction'" in parity.detail
        styled = preflight.config_styler(found.facts).to_html()
        assert "allkeys-lru" in styled and "#a30000" in styled

        out = sandbox.root.parent / "run-config-diff"
        proc = subprocess.run([runbook_bin, "run", "--params", str(sandbox.root / "params.yaml"), "--out", str(out)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "00_preflight: fail" in proc.stdout and "10_backup" not in proc.stdout
        verdict = json.loads((out / "results" / "00_preflight.json").read_text())
        assert verdict["status"] == "fail" and "config parity" in verdict["summary"]
        assert not (out / "backup").exists()
        assert cluster_layout(ports, creds) == before
        assert len(node_client(NEW_MASTER, creds).execute_command("CLUSTER", "NODES").splitlines()) == 1
    finally:
        new_master.config_set("maxmemory-policy", "noeviction")


def test_a_big_key_is_found_in_its_slot(sandbox, params, topo):
    creds = sandbox.credentials()
    client = cluster_client([SEED], creds)
    client.set(BIG_KEY, "x" * (11 * MB))
    try:
        settings = params.model.bigkeys
        scan, checks = preflight.scan_big_keys(observe(SEED, creds), settings, creds, progress=False)
        slot = key_slot(BIG_KEY.encode())
        owner = topo.nodes[topo.reference.owners()[slot]].address
        check = by_name(checks, f"big key {BIG_KEY}")
        assert check.status == "warn"
        assert f"slot {slot} on {owner}" in check.detail and f"MB string (length {11 * MB})" in check.detail
        assert f"the mover stops before slot {slot}" in check.detail
        assert scan.per_slot[slot]["bytes"] >= 11 * MB and scan.keys_scanned == 2001

        saved = bigkeys.from_json(json.loads(json.dumps(bigkeys.to_json(scan, settings.threshold_bytes))))
        assert saved.big == scan.big and saved.per_slot == scan.per_slot
        assert bigkeys.checks(saved, settings, {slot})[0].name == f"big key {BIG_KEY}"
        assert bigkeys.checks(saved, settings, {(slot + 1) % 16384})[0].status == "pass"

        allowed = settings.model_copy(update={"allow": {BIG_KEY: 60000}})
        assert "moves it alone with a 60000 ms MIGRATE timeout" in bigkeys.checks(scan, allowed)[0].detail
    finally:
        client.delete(BIG_KEY)
        client.close()


def test_monitoring_names_every_node_and_marks_the_new_ones(sandbox, params, topo, tmp_path):
    new = [NEW_MASTER, NEW_REPLICA]
    nodes = monitoring.monitored_nodes(nodes_table(topo, new), [NEW_MASTER], [NEW_REPLICA])
    assert len(nodes) == 8
    assert {n["address"]: (n["role"], n["joined"]) for n in nodes if n["new"]} == {
        NEW_MASTER: ("master", False), NEW_REPLICA: ("replica", False)}
    files = monitoring.generate(tmp_path / "monitoring", nodes)
    rows = monitoring.validate(files)
    assert not [r for r in rows if r["status"] == "fail"]
    named = [r for r in rows if r["check"] == "names every node"]
    assert {r["file"] for r in named} >= {"prometheus.yml", "grafana-dashboard.json"}
    assert all(r["status"] == "pass" for r in named)
    scrape = (tmp_path / "monitoring" / "prometheus.yml").read_text()
    assert f"redis://{NEW_MASTER}" in scrape and "new_node: 'true'" in scrape
    assert monitoring.seeds_ready(nodes)["status"] == "warn"
    assert [r["alert"] for r in monitoring.alert_rows(files["alerts.yml"])][:2] == ["RedisClusterStateNotOk",
                                                                                  "RedisClusterSlotsFail"]
