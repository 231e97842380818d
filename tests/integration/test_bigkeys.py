"""Big-key scan against a real sandbox cluster: sizes, slots, owners, per-slot totals, pacing."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.sandbox import Sandbox, SandboxLayout
from runbook_lib.sections.bigkeys import (
    _measure,
    _Pacer,
    big_keys_in_slots,
    keys_per_slot,
    scan,
    slot_table,
)
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


def _owner(topo, key: str) -> str:
    owner_id = topo.reference.owners()[key_slot(key.encode())]
    return topo.nodes[owner_id].address


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


def test_rate_limit_paces_the_scan(cluster):
    topo, creds = cluster
    rate = 20000.0
    started = time.monotonic()
    result = scan(topo, creds, threshold_bytes=10 * MB, count=500, max_ops_per_s=rate, progress=False)
    at_least = 2 * result.keys_scanned / rate
    assert time.monotonic() - started >= at_least
    assert result.keys_scanned == 5002


def test_keys_gone_meanwhile_are_skipped(cluster):
    topo, creds = cluster
    address = _owner(topo, BIG_STRING)
    stats = _measure(node_client(address, creds), address, [b"gone:{x}", BIG_STRING.encode()], _Pacer(None))
    assert [s.key for s in stats] == [BIG_STRING]
