"""CLUSTER NODES parsing: slot ranges, open-slot markers, roles; and slot range formatting."""

from runbook_lib.cluster.topology import (
    NodeView,
    Topology,
    format_ranges,
    parse_cluster_nodes,
    parse_ranges,
)

NODES = """\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461-<-bbb]
bbb 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
ccc 127.0.0.1:7002@17002,host.example master - 0 1 3 connected 10923-16383
ddd 127.0.0.1:7003@17003 slave aaa 0 1 1 connected
"""

OTHER = """\
bbb 127.0.0.1:7001@17001 myself,master - 0 1 2 connected 5461-10922 [5461->-aaa]
aaa 127.0.0.1:7000@17000 master - 0 0 1 connected 0-5460
ccc 127.0.0.1:7002@17002 master - 0 1 3 connected 10923-16383
ddd 127.0.0.1:7003@17003 slave aaa 0 1 1 connected
"""


def test_parse_entries():
    entries = parse_cluster_nodes(NODES)
    assert entries["aaa"].importing == {5461: "bbb"}
    assert len(entries["aaa"].slots) == 5461
    assert entries["ccc"].address == "127.0.0.1:7002"
    assert entries["ddd"].master_id == "aaa" and not entries["ddd"].is_master


def test_topology_views():
    topo = Topology(seed="127.0.0.1:7000", views={
        "127.0.0.1:7000": NodeView("127.0.0.1:7000", parse_cluster_nodes(NODES)),
        "127.0.0.1:7001": NodeView("127.0.0.1:7001", parse_cluster_nodes(OTHER)),
    })
    assert [m.address for m in topo.masters()] == ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
    assert topo.uncovered() == []
    assert {(o["node"], o["slot"], o["state"]) for o in topo.open_slots()} == {
        ("127.0.0.1:7000", 5461, "importing"), ("127.0.0.1:7001", 5461, "migrating")}
    assert topo.disagreements() == []
    assert [r.address for r in topo.replicas_of("aaa")] == ["127.0.0.1:7003"]


def test_disagreement_is_reported():
    changed = OTHER.replace("5461-10922 [5461->-aaa]", "5462-10922").replace("0-5460", "0-5461")
    topo = Topology(seed="127.0.0.1:7000", views={
        "127.0.0.1:7000": NodeView("127.0.0.1:7000", parse_cluster_nodes(NODES)),
        "127.0.0.1:7001": NodeView("127.0.0.1:7001", parse_cluster_nodes(changed)),
    })
    assert topo.disagreements() == ["127.0.0.1:7001 disagrees with 127.0.0.1:7000 on the owner of 1 slots"]


def test_ranges_round_trip():
    slots = {0, 1, 2, 5, 7, 8, 16383}
    assert format_ranges(slots) == "0-2,5,7-8,16383"
    assert parse_ranges(format_ranges(slots)) == slots
