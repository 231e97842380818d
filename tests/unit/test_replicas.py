"""A second copy first: which target masters lack an in-sync replica, and how the mover's guard answers."""

from __future__ import annotations

import pytest

from runbook_lib.cluster.replicas import replica_checks, require_replicas, unreplicated_targets
from runbook_lib.cluster.topology import NodeView, Topology, parse_cluster_nodes
from runbook_lib.config import Credentials
from runbook_lib.exceptions import CheckFailed

# aaa..ccc the old masters (ddd replicates aaa); nnn a new empty master with replica rrr; mmm a new master alone;
# ppp a new master whose only replica qqq is flagged failing.
NODES = """\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
ccc 127.0.0.1:7002@17002 master - 0 1 3 connected 10923-16383
ddd 127.0.0.1:7003@17003 slave aaa 0 1 1 connected
nnn 127.0.0.1:7006@17006 master - 0 1 4 connected
rrr 127.0.0.1:7007@17007 slave nnn 0 1 4 connected
mmm 127.0.0.1:7008@17008 master - 0 1 5 connected
ppp 127.0.0.1:7010@17010 master - 0 1 6 connected
qqq 127.0.0.1:7011@17011 slave,fail ppp 0 1 6 disconnected
"""
CREDS = Credentials()
UP = {"127.0.0.1:7003": "up", "127.0.0.1:7007": "up", "127.0.0.1:7011": "up"}


def topology(text: str = NODES) -> Topology:
    return Topology(seed="127.0.0.1:7000", views={"127.0.0.1:7000": NodeView("127.0.0.1:7000", parse_cluster_nodes(text))})


def test_a_master_with_a_replica_in_sync_is_covered_by_id_or_address():
    topo = topology()
    assert unreplicated_targets(topo, ["nnn", "aaa"], UP.get) == []
    assert unreplicated_targets(topo, ["127.0.0.1:7006"], UP.get) == []


def test_no_replica_a_failing_replica_or_an_unknown_node_count_as_unreplicated():
    topo = topology()
    assert unreplicated_targets(topo, ["mmm", "ppp", "127.0.0.1:7012", "bbb"], UP.get) == [
        "127.0.0.1:7008", "127.0.0.1:7010", "127.0.0.1:7012", "127.0.0.1:7001"]


def test_a_replica_whose_link_is_down_or_that_does_not_answer_is_not_in_sync():
    topo = topology()
    assert unreplicated_targets(topo, ["nnn"], {"127.0.0.1:7007": "down"}.get) == ["127.0.0.1:7006"]
    assert unreplicated_targets(topo, ["nnn"], {}.get) == ["127.0.0.1:7006"]


def test_one_replica_in_sync_is_enough():
    text = NODES + "sss 127.0.0.1:7009@17009 slave nnn 0 1 4 connected\n"
    assert unreplicated_targets(topology(text), ["nnn"], {"127.0.0.1:7009": "up", "127.0.0.1:7007": "down"}.get) == []


def test_a_replica_is_not_a_target():
    assert unreplicated_targets(topology(), ["rrr"], UP.get) == ["127.0.0.1:7007"]


def test_require_refuses_naming_each_master_and_the_way_out():
    with pytest.raises(CheckFailed) as e:
        require_replicas(topology(), CREDS, ["nnn", "mmm", "ppp"], allow=False, link_status=UP.get)
    message = str(e.value)
    assert "127.0.0.1:7008: no replica attached" in message and "127.0.0.1:7010" in message
    assert "127.0.0.1:7006" not in message
    assert "25_add_replicas" in message and "migration.allow_master_without_replica: true" in message
    assert e.value.exit_code == 1


def test_require_passes_when_every_target_has_a_replica_in_sync():
    checks = require_replicas(topology(), CREDS, ["nnn"], allow=False, link_status=UP.get)
    assert [(c.name, c.status) for c in checks] == [("replica of 127.0.0.1:7006 in sync", "pass")]
    assert "127.0.0.1:7007" in checks[0].detail


def test_require_warns_when_allowed():
    checks = require_replicas(topology(), CREDS, ["nnn", "mmm"], allow=True, link_status=UP.get)
    assert [c.status for c in checks] == ["pass", "warn"]
    assert "one copy" in checks[1].detail and "allow_master_without_replica" in checks[1].detail


def test_replica_checks_never_raise_and_report_missing_as_asked():
    topo = topology()
    assert [c.status for c in replica_checks(topo, CREDS, ["mmm"], allow=False, link_status=UP.get)] == ["fail"]
    plan = replica_checks(topo, CREDS, ["mmm", "nnn"], allow=False, missing="warn", link_status=UP.get)
    assert [c.status for c in plan] == ["warn", "pass"]
    assert "25_add_replicas" in plan[0].detail
