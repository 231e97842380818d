"""The big-key scan's pure parts: which node reads a shard, the pacer its threads share, which keys get detail, the
JSON of where each shard was read."""

from __future__ import annotations

import threading

from runbook_lib.checks import Check
from runbook_lib.cluster.readers import choose
from runbook_lib.cluster.topology import NodeEntry
from runbook_lib.sections import bigkeys
from runbook_lib.sections.bigkeys import ScanResult, ShardScan, _Tally
from runbook_lib.sections.keyscan import Pacer

MASTER = NodeEntry(id="m", address="10.0.0.1:7000", flags=frozenset({"master"}), master_id=None, config_epoch=1,
                   link_state="connected", ip="10.0.0.1", port=7000)


def replica(n: int, flags: frozenset[str] = frozenset({"slave"})) -> NodeEntry:
    return NodeEntry(id=f"r{n}", address=f"10.0.0.{n}:7001", flags=flags, master_id="m", config_epoch=1,
                     link_state="connected", ip=f"10.0.0.{n}", port=7001)


def listing(*entries: tuple[int, str, int]) -> dict:
    """A master's INFO replication listing replicas (n, state, lag)."""
    return {f"slave{i}": {"ip": f"10.0.0.{n}", "port": 7001, "state": state, "offset": 100, "lag": lag}
            for i, (n, state, lag) in enumerate(entries)}


UP = {"master_link_status": "up", "master_sync_in_progress": 0}


def test_an_in_sync_replica_is_read():
    source = choose(MASTER, [replica(2)], {"10.0.0.2:7001": UP}, listing((2, "online", 0)), 10.0)
    assert (source.node, source.role) == ("10.0.0.2:7001", "replica")
    assert "in sync" in source.reason


def test_the_first_in_sync_replica_wins_over_one_that_lags():
    source = choose(MASTER, [replica(2), replica(3)], {"10.0.0.2:7001": UP, "10.0.0.3:7001": UP},
                    listing((2, "online", 30), (3, "online", 1)), 10.0)
    assert source.node == "10.0.0.3:7001"


def test_the_master_when_no_replica_is_in_sync_with_each_reason():
    replicas = [replica(2), replica(3), replica(4), replica(5, frozenset({"slave", "fail"})), replica(6)]
    own = {"10.0.0.2:7001": {"master_link_status": "down"}, "10.0.0.3:7001": UP, "10.0.0.4:7001": UP,
           "10.0.0.6:7001": None}
    source = choose(MASTER, replicas, own, listing((3, "online", 11), (4, "wait_bgsave", 0)), 10.0)
    assert (source.node, source.role) == (MASTER.address, "master")
    for why in ("10.0.0.2:7001: master_link_status:down", "10.0.0.3:7001: lag 11 s, over 10 s",
                "10.0.0.4:7001: its master lists it as wait_bgsave", "10.0.0.5:7001: flagged failing",
                "10.0.0.6:7001: does not answer"):
        assert why in source.reason


def test_a_replica_in_full_sync_or_unlisted_is_not_read():
    syncing = {**UP, "master_sync_in_progress": 1}
    assert choose(MASTER, [replica(2)], {"10.0.0.2:7001": syncing}, listing((2, "online", 0)), 10.0).role == "master"
    unlisted = choose(MASTER, [replica(2)], {"10.0.0.2:7001": UP}, {}, 10.0)
    assert unlisted.role == "master" and "does not list it" in unlisted.reason


def test_a_shard_without_replicas_is_read_on_its_master():
    source = choose(MASTER, [], {}, {}, 10.0)
    assert (source.role, source.reason) == ("master", "the shard has no replica")


def test_threads_share_one_pacer_schedule():
    """Four threads spending 100 commands 25 times each at 1000/s: every spend is booked on one schedule, so the
    waits asked for are 0.1 s, 0.2 s, ... 10 s, as if one thread had sent all 10 000 commands."""
    waits: list[float] = []
    lock = threading.Lock()

    def sleep(seconds: float) -> None:
        with lock:
            waits.append(seconds)

    pacer = Pacer(1000.0, clock=lambda: 0.0, sleep=sleep)

    def spend() -> None:
        for _ in range(25):
            pacer.spend(100)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pacer.sent == 10000
    assert sorted(round(w, 6) for w in waits) == [round(0.1 * i, 6) for i in range(1, 101)]


def test_an_unpaced_pacer_never_waits():
    pacer = Pacer(None, clock=lambda: 0.0, sleep=lambda s: (_ for _ in ()).throw(AssertionError("slept")))
    pacer.spend(10 ** 6)
    assert pacer.sent == 10 ** 6


def test_detail_only_for_big_keys_and_top_candidates():
    tally = _Tally(threshold_bytes=1000, top_n=2)
    assert tally.pick([5, 50, 7, 2000, 1]) == [1, 3]
    tally.add_page([(0, 50), (1, 2000)], [bigkeys.KeyStat("a", "n", 0, "string", 50, 50),
                                         bigkeys.KeyStat("b", "n", 1, "string", 2000, 2000)])
    assert tally.pick([40, 60, 3000]) == [1, 2]
    assert tally.pick([10, 20]) == []
    assert tally.per_slot == {0: {"keys": 1, "bytes": 50}, 1: {"keys": 1, "bytes": 2000}}
    assert [s.key for s in tally.big.values()] == ["b"]


def test_where_each_shard_was_read_survives_json_and_is_checked():
    shards = [ShardScan("a:1", "b:1", "replica", "in sync (master_link_status:up, lag 0 s)", 10),
              ShardScan("c:1", "c:1", "master", "the shard has no replica", 5)]
    result = ScanResult(top=[], per_slot={7: {"keys": 15, "bytes": 900}}, big=[], keys_scanned=15, seconds=1.0,
                        shards=shards, commands=17)
    back = bigkeys.from_json(bigkeys.to_json(result, 10))
    assert back.shards == shards and back.commands == 17 and back.per_slot == result.per_slot
    assert [c.status for c in bigkeys.source_checks(result)] == ["pass", "warn"]
    assert bigkeys.source_checks(result)[1] == Check("big-key scan of c:1's shard", "warn",
                                                     "scanned on master c:1 (the shard has no replica), 5 keys")


def test_a_bigkeys_json_from_before_reads_back_without_shards():
    old = {"threshold_bytes": 10, "keys_scanned": 1, "seconds": 0.1, "top": [], "big": [],
           "per_slot": {"3": {"keys": 1, "bytes": 60}}}
    back = bigkeys.from_json(old)
    assert back.shards == [] and back.per_slot == {3: {"keys": 1, "bytes": 60}}
