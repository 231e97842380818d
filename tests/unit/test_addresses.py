"""Addresses as production writes them: names, IPv4, bracketed IPv6, matched against what CLUSTER NODES reports."""

from __future__ import annotations

import socket

import pytest

from runbook_lib import addresses
from runbook_lib.addresses import format_address, meet_address, parse_address, resolve, same_node
from runbook_lib.cluster.topology import NodeView, Topology, parse_cluster_nodes

NAMES = {"redis-1.prod.example": ["10.0.0.5", "2001:db8::5"], "redis-6.prod.example": ["2001:db8::6"]}


@pytest.fixture
def resolver(monkeypatch):
    """getaddrinfo answering for a few production-like names (as /etc/hosts or DNS would), the real one otherwise."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in NAMES:
            return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))
                    for ip in NAMES[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    addresses.forget_resolved()
    yield
    addresses.forget_resolved()


@pytest.mark.parametrize("written, expected", [
    ("10.0.0.5:7000", ("10.0.0.5", 7000)),
    ("redis-1.prod.example:7000", ("redis-1.prod.example", 7000)),
    ("[2001:db8::5]:7000", ("2001:db8::5", 7000)),
    ("2001:db8::5:7000", ("2001:db8::5", 7000)),
])
def test_parse_accepts_names_ipv4_and_ipv6(written, expected):
    assert parse_address(written) == expected


@pytest.mark.parametrize("bad", ["redis-1", "redis-1:", ":7000", "a:b:7000", "[2001:db8::5:7000", "h:70000",
                                 "2001:db8::5"])
def test_parse_refuses_malformed(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_format_brackets_ipv6_only():
    assert format_address("2001:db8::5", 7000) == "[2001:db8::5]:7000"
    assert format_address("10.0.0.5", 7000) == "10.0.0.5:7000"
    assert parse_address(format_address("2001:db8::5", 7000)) == ("2001:db8::5", 7000)


def test_resolve_gives_every_family(resolver):
    assert resolve("redis-1.prod.example") == ["10.0.0.5", "2001:db8::5"]
    assert resolve("2001:0db8:0::5") == ["2001:db8::5"]
    assert resolve("no-such-host.invalid") == []


def test_same_node_by_ip_name_and_hostname(resolver):
    assert same_node("[2001:db8::5]:7000", "2001:db8::5", 7000)
    assert same_node("[2001:db8:0:0::5]:7000", "2001:db8::5", 7000)
    assert same_node("redis-1.prod.example:7000", "10.0.0.5", 7000)
    assert same_node("redis-1.prod.example:7000", "2001:db8::5", 7000)
    assert same_node("redis-9.k8s.example:7000", "10.9.9.9", 7000, hostname="redis-9.k8s.example")


def test_same_node_fails_on_port_ip_or_unresolvable(resolver):
    assert not same_node("redis-1.prod.example:7001", "10.0.0.5", 7000)
    assert not same_node("redis-1.prod.example:7000", "10.0.0.6", 7000)
    assert not same_node("no-such-host.invalid:7000", "10.0.0.5", 7000)
    assert not same_node("10.0.0.5:7000", "2001:db8::5", 7000)
    assert not same_node("garbage", "10.0.0.5", 7000)


def test_meet_address_resolves_to_the_seeds_family(resolver):
    assert meet_address("redis-1.prod.example:7000", like="2001:db8::1") == ("2001:db8::5", 7000)
    assert meet_address("redis-1.prod.example:7000", like="10.0.0.1") == ("10.0.0.5", 7000)
    assert meet_address("[2001:db8::7]:7000") == ("2001:db8::7", 7000)
    with pytest.raises(ValueError, match="does not resolve"):
        meet_address("no-such-host.invalid:7000")


NODES = """\
aaa 10.0.0.5:7000@17000 myself,master - 0 0 1 connected 0-8191
bbb 2001:db8::6:7000@17000 master - 0 1 2 connected 8192-16383
ccc 10.0.0.7:7000@17000,localhost slave aaa 0 1 1 connected
ddd 10.0.0.8:7000@17000,unresolvable.invalid slave bbb 0 1 1 connected
"""


def _topology() -> Topology:
    return Topology(seed="10.0.0.5:7000", views={"10.0.0.5:7000": NodeView("10.0.0.5:7000", parse_cluster_nodes(NODES))})


def test_entries_keep_ip_port_and_announced_hostname(resolver):
    entries = parse_cluster_nodes(NODES)
    assert (entries["bbb"].ip, entries["bbb"].port, entries["bbb"].address) == ("2001:db8::6", 7000, "[2001:db8::6]:7000")
    assert entries["ccc"].hostname == "localhost" and entries["ccc"].address == "localhost:7000"
    assert entries["ccc"].ip == "10.0.0.7" and entries["ccc"].bus_port == 17000
    assert entries["ddd"].hostname == "unresolvable.invalid" and entries["ddd"].address == "10.0.0.8:7000"


def test_by_address_matches_as_production_writes_it(resolver):
    topo = _topology()
    assert topo.by_address("redis-1.prod.example:7000").id == "aaa"
    assert topo.by_address("redis-6.prod.example:7000").id == "bbb"
    assert topo.by_address("[2001:db8::6]:7000").id == "bbb"
    assert topo.by_address("unresolvable.invalid:7000").id == "ddd"
    assert topo.by_address("localhost:7000").id == "ccc"
    assert topo.by_address("redis-1.prod.example:7001") is None


def test_known_as_names_both_spellings(resolver):
    topo = _topology()
    assert topo.known_as("redis-1.prod.example:7000") == "redis-1.prod.example:7000 (10.0.0.5:7000 in the cluster)"
    assert topo.known_as("10.0.0.5:7000") == "10.0.0.5:7000"
    assert topo.known_as("localhost:7000") == "localhost:7000 (10.0.0.7:7000 in the cluster)"
    assert topo.known_as("new.prod.example:7000") == "new.prod.example:7000"


def test_same_address_by_resolution(resolver):
    from runbook_lib.addresses import same_address
    assert same_address("redis-1.prod.example:7000", "10.0.0.5:7000")
    assert same_address("redis-1.prod.example:7000", "[2001:db8::5]:7000")
    assert not same_address("redis-1.prod.example:7000", "10.0.0.5:7001")
    assert not same_address("redis-6.prod.example:7000", "10.0.0.5:7000")
    assert not same_address("no-such-host.invalid:7000", "10.0.0.5:7000")


def test_monitoring_lists_a_joined_node_once_however_params_spell_it(resolver):
    from runbook_lib.sections.monitoring import monitored_nodes
    members = [{"address": "10.0.0.5:7000", "role": "master", "new": True}]
    rows = monitored_nodes(members, ["redis-1.prod.example:7000", "redis-6.prod.example:7000"], [])
    assert [(r["address"], r["joined"]) for r in rows] == [("10.0.0.5:7000", True), ("redis-6.prod.example:7000", False)]


def test_other_hosts_grouped_by_machine_with_both_spellings(resolver):
    from runbook_lib.sections import preflight
    from runbook_lib.sections.host import machines, rdb_copy_hint
    grouped = machines(["10.0.0.5:7000", "redis-1.prod.example:7001", "redis-6.prod.example:7000"])
    assert grouped == {"redis-1.prod.example (10.0.0.5)": ["10.0.0.5:7000", "redis-1.prod.example:7001"],
                       "redis-6.prod.example (2001:db8::6)": ["redis-6.prod.example:7000"]}
    check = preflight.kernel_checks(["10.0.0.5:7000", "redis-1.prod.example:7001"])[-1]
    assert check.status == "warn" and "Not checked on these 1 hosts" in check.detail
    assert "redis-1.prod.example (10.0.0.5) (nodes 10.0.0.5:7000, redis-1.prod.example:7001)" in check.detail
    assert rdb_copy_hint("[2001:db8::6]:7000", "/data/dump.rdb", "/backup") == \
        "`scp [2001:db8::6]:/data/dump.rdb /backup/` and compare `sha256sum` on both hosts"
