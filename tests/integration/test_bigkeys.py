"""Big-key scan against a real sandbox cluster: sizes, slots, per-slot totals, read on in-sync replicas (the master
when a shard has none), every command paid for on the shared pacer."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client, node_client, readonly_client
from runbook_lib.cluster.topology import observe
from runbook_lib.sandbox import Sandbox, SandboxLayout
from runbook_lib.sections.bigkeys import (
    big_keys_in_slots,
    keys_per_slot,
    scan,
    slot_table,
)
from runbook_lib.sections.keyscan import Pacer, size_page
from tests.conftest import port_block

pytestmark = pytest.mark.integration

PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
MB = 1024 * 1024
BIG_STRING = "big:{x}"
BIG_HASH = "bighash:{y}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 3-master sandbox with 5000 sample keys plus a 12 MB string and a 12 MB hash."""
    sandbox = Sandbox(tmp_path_factory.mktemp("bigkeys-sandbox"))
    try:
        sandbox.up(SandboxLayout(port=PORT), keys=5000, persistence=False, progress=False)
        creds = sandbox.credentials()
        client = cluster_client([SEED], creds)
        client.set(BIG_STRING, "x" * (12 * MB))
        client.hset(BIG_HASH, mapping={f"field:{i}": "h" * 1000 for i in range(12 * 1024)})
        client.close()
        topo = observe(SEED, creds)
        yield topo, creds
    finally:
        sandbox.down()


@pytest.fixture(scope="module")
def result(cluster):
    topo, creds = cluster
    return scan(topo, creds, threshold_bytes=10 * MB, count=500, top_n=20, progress=False)


SCAN_COMMANDS = ("scan", "memory|usage", "type", "strlen", "hlen", "llen", "scard", "zcard", "xlen")
"""What the scan sends per page (INFO commandstats names); the pacer is charged for each of them."""


def _owner(topo, key: str) -> str:
    owner_id = topo.reference.owners()[key_slot(key.encode())]
    return topo.nodes[owner_id].address


def _replica_of(topo, key: str) -> str:
    owner_id = topo.reference.owners()[key_slot(key.encode())]
    return topo.replicas_of(owner_id)[0].address


def _reset_stats(topo, creds) -> None:
    for entry in topo.nodes.values():
        node_client(entry.address, creds).config_resetstat()


def _scan_calls(address: str, creds) -> int:
    stats = node_client(address, creds).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in SCAN_COMMANDS)


def _total_keys(topo, creds) -> int:
    return sum(node_client(m.address, creds).dbsize() for m in topo.masters())


def test_big_keys_found_with_slot_and_owner(cluster, result):
    topo, _ = cluster
    big = {s.key: s for s in result.big}
    assert set(big) == {BIG_STRING, BIG_HASH}
    for key, kind in ((BIG_STRING, "string"), (BIG_HASH, "hash")):
        stat = big[key]
        assert stat.slot == key_slot(key.encode())
        assert stat.node == _owner(topo, key)
        assert stat.type == kind
        assert stat.bytes >= 10 * MB
    assert big[BIG_STRING].length == 12 * MB
    assert big[BIG_HASH].length == 12 * 1024


def test_totals_match_the_cluster(cluster, result):
    topo, creds = cluster
    total = _total_keys(topo, creds)
    assert total == 5002
    assert result.keys_scanned == total
    assert sum(t["keys"] for t in result.per_slot.values()) == total
    assert sum(keys_per_slot(result).values()) == total
    assert all(t["bytes"] > 0 for t in result.per_slot.values())
    assert result.seconds > 0


def test_top_is_sorted_and_led_by_the_big_keys(result):
    sizes = [s.bytes for s in result.top]
    assert len(result.top) == 20
    assert sizes == sorted(sizes, reverse=True)
    assert {s.key for s in result.top[:2]} == {BIG_STRING, BIG_HASH}
    assert len({(s.node, s.key) for s in result.top}) == 20


def test_helpers(result):
    rows = slot_table(result)
    assert len(rows) == len(result.per_slot)
    assert [r["bytes"] for r in rows] == sorted((r["bytes"] for r in rows), reverse=True)
    assert rows[0]["big_keys"] == 1
    assert rows[0]["slot"] in {key_slot(BIG_STRING.encode()), key_slot(BIG_HASH.encode())}
    string_slot, hash_slot = key_slot(BIG_STRING.encode()), key_slot(BIG_HASH.encode())
    assert [s.key for s in big_keys_in_slots(result, {string_slot})] == [BIG_STRING]
    assert {s.key for s in big_keys_in_slots(result, {string_slot, hash_slot})} == {BIG_STRING, BIG_HASH}
    assert big_keys_in_slots(result, set(range(16384)) - {string_slot, hash_slot}) == []


def test_threshold_above_everything_finds_nothing(cluster):
    topo, creds = cluster
    result = scan(topo, creds, threshold_bytes=100 * MB, top_n=3, progress=False)
    assert result.big == []
    assert [s.key for s in result.top[:2]] in ([BIG_STRING, BIG_HASH], [BIG_HASH, BIG_STRING])
    assert len(result.top) == 3


def test_every_shard_is_read_on_its_replica_not_its_master(cluster):
    topo, creds = cluster
    _reset_stats(topo, creds)
    result = scan(topo, creds, threshold_bytes=10 * MB, count=500, progress=False)
    masters = topo.masters()
    assert [(s.shard_master, s.node, s.role) for s in result.shards] == [
        (m.address, topo.replicas_of(m.id)[0].address, "replica") for m in masters]
    assert all("in sync" in s.reason for s in result.shards)
    assert [_scan_calls(m.address, creds) for m in masters] == [0, 0, 0]
    assert all(_scan_calls(topo.replicas_of(m.id)[0].address, creds) > 0 for m in masters)
    assert sum(s.keys for s in result.shards) == result.keys_scanned == 5002


def test_the_pacer_is_charged_for_every_command_sent(cluster):
    topo, creds = cluster
    _reset_stats(topo, creds)
    rate = 20000.0
    started = time.monotonic()
    result = scan(topo, creds, threshold_bytes=10 * MB, count=500, max_ops_per_s=rate, progress=False)
    sent = sum(_scan_calls(e.address, creds) for e in topo.nodes.values())
    assert result.commands == sent
    assert result.keys_scanned <= sent < 1.2 * result.keys_scanned, "one MEMORY USAGE per key, little more"
    assert time.monotonic() - started >= sent / rate
    assert result.keys_scanned == 5002


def test_a_shard_whose_replica_is_out_of_sync_is_read_on_its_master(cluster):
    topo, creds = cluster
    master = topo.masters()[0]
    replica = node_client(topo.replicas_of(master.id)[0].address, creds)
    replica.config_set("masterauth", "wrong")
    replica.client_kill_filter(_type="master")
    try:
        deadline = time.monotonic() + 15
        while replica.info("replication")["master_link_status"] == "up":
            assert time.monotonic() < deadline, "the replica's link did not go down"
            time.sleep(0.1)
        _reset_stats(topo, creds)
        result = scan(topo, creds, threshold_bytes=10 * MB, count=500, progress=False)
    finally:
        replica.config_set("masterauth", creds.password)
    first, *others = result.shards
    assert (first.node, first.role) == (master.address, "master")
    assert "master_link_status:down" in first.reason
    assert [s.role for s in others] == ["replica", "replica"]
    assert _scan_calls(master.address, creds) > 0
    assert result.keys_scanned == 5002
    deadline = time.monotonic() + 30
    while replica.info("replication")["master_link_status"] != "up":
        assert time.monotonic() < deadline, "the replica did not sync again"
        time.sleep(0.2)


def test_per_slot_bytes_are_the_memory_usage_sums_on_the_node_scanned(cluster, result):
    topo, creds = cluster
    scanned = {s.shard_master: s.node for s in result.shards}
    owners = topo.reference.owners()
    address = {e.id: e.address for e in topo.nodes.values()}
    slots = sorted(result.per_slot)[::300] + [key_slot(BIG_STRING.encode()), key_slot(BIG_HASH.encode())]
    for slot in slots:
        client = readonly_client(scanned[address[owners[slot]]], creds)
        keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10000)
        assert result.per_slot[slot] == {"keys": len(keys), "bytes": sum(client.memory_usage(k) for k in keys)}


def test_keys_gone_meanwhile_are_skipped(cluster):
    topo, creds = cluster
    address = _replica_of(topo, BIG_STRING)
    page = size_page(readonly_client(address, creds), address, [b"gone:{x}", BIG_STRING.encode()], Pacer(None),
                     lambda sizes: list(range(len(sizes))))
    assert [s.key for s in page.detailed] == [BIG_STRING]
    assert page.sizes == [(key_slot(BIG_STRING.encode()), page.detailed[0].bytes)]
