"""The multi-host sandbox's plan (names, namespaces, private addresses unique to a port) and its /etc/hosts block."""

from __future__ import annotations

import ipaddress

import pytest

from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import network


def test_plan_gives_each_host_a_name_namespace_and_private_address():
    hosts = network.plan(28100, 4)
    assert [h.name for h in hosts] == [f"redis-{i}.rb28100.test" for i in range(1, 5)]
    assert [h.namespace for h in hosts] == [f"rb28100h{i}" for i in range(4)]
    ips = [ipaddress.ip_address(h.ip) for h in hosts]
    assert len(set(ips)) == 4 and all(ip.is_private and ip.version == 4 for ip in ips)
    assert all(len(f"rb{65535}v{i}") <= 15 for i in range(8)), "interface names fit IFNAMSIZ"


def test_plan_ranges_differ_by_port_and_ipv6_is_unique_local():
    assert {h.ip for h in network.plan(28100, 2)}.isdisjoint(h.ip for h in network.plan(28200, 2))
    six = [ipaddress.ip_address(h.ip) for h in network.plan(28200, 2, ipv6=True)]
    assert all(ip.version == 6 and ip in ipaddress.ip_network("fc00::/7") for ip in six)


def test_plan_refuses_a_port_it_cannot_encode():
    with pytest.raises(SandboxError, match="port 80"):
        network.plan(80, 2)


def test_hosts_file_block_is_added_replaced_and_removed(tmp_path, monkeypatch):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    monkeypatch.setattr(network, "HOSTS_FILE", hosts)
    network._edit_hosts_file("# runbook sandbox /a", ["10.0.0.1 a.test"])
    network._edit_hosts_file("# runbook sandbox /b", ["10.0.0.2 b.test"])
    network._edit_hosts_file("# runbook sandbox /a", ["10.0.0.3 a.test"])
    text = hosts.read_text()
    assert "10.0.0.1" not in text and "10.0.0.3 a.test" in text and "10.0.0.2 b.test" in text
    network._edit_hosts_file("# runbook sandbox /a", [])
    network._edit_hosts_file("# runbook sandbox /b", [])
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def test_remove_without_a_record_does_nothing(tmp_path):
    assert network.remove(tmp_path) == []
