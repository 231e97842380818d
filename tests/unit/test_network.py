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


@pytest.fixture
def hosts(tmp_path, monkeypatch):
    """A hosts file holding only localhost, standing in for /etc/hosts."""
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 localhost\n")
    monkeypatch.setattr(network, "HOSTS_FILE", path)
    return path


def test_hosts_file_block_is_added_replaced_and_removed(hosts):
    network._edit_hosts_file("# runbook sandbox /a", ["10.0.0.1 a.test"])
    network._edit_hosts_file("# runbook sandbox /b", ["10.0.0.2 b.test"])
    network._edit_hosts_file("# runbook sandbox /a", ["10.0.0.3 a.test"])
    text = hosts.read_text()
    assert "10.0.0.1" not in text and "10.0.0.3 a.test" in text and "10.0.0.2 b.test" in text
    network._edit_hosts_file("# runbook sandbox /a", [])
    network._edit_hosts_file("# runbook sandbox /b", [])
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def test_stale_blocks_naming_a_port_are_dropped_and_others_kept(hosts):
    network._edit_hosts_file("# runbook sandbox /gone", ["10.0.0.1 redis-1.rb7024.test"])
    network._edit_hosts_file("# runbook sandbox /live", ["10.0.0.2 redis-1.rb17024.test"])
    assert network._drop_host_names("rb7024")
    assert not network._drop_host_names("rb7024")
    text = hosts.read_text()
    assert "rb7024.test" not in text and "10.0.0.2 redis-1.rb17024.test" in text and text.startswith("127.0.0.1")


def test_remove_without_a_record_does_nothing(tmp_path):
    assert network.remove(tmp_path) == []


needs_namespaces = pytest.mark.skipif(bool(network.unavailable()), reason=network.unavailable() or "available")


@needs_namespaces
def test_create_clears_what_a_killed_sandbox_left_on_its_port_and_remove_takes_all_away(tmp_path):
    port, ip = 64999, network._ip()
    hosts = network.plan(port, 2)
    network._run(ip, "link", "add", network._bridge(port), "type", "bridge")
    network._run(ip, "netns", "add", hosts[0].namespace)
    network._run(ip, "link", "add", f"rb{port}v1", "type", "veth", "peer", "name", f"rb{port}p1")
    try:
        network.create(tmp_path, port, hosts)
        assert network.clear_stale(port + 1, 2) == []
    finally:
        removed = network.remove(tmp_path)
    assert f"namespace {hosts[1].namespace}" in removed and f"link {network._bridge(port)}" in removed
    assert network.clear_stale(port, 2) == [], "nothing of the sandbox is left"


@needs_namespaces
def test_create_refuses_a_namespace_a_process_still_runs_in(tmp_path):
    import subprocess
    port, ip = 64998, network._ip()
    hosts = network.plan(port, 1)
    network._run(ip, "netns", "add", hosts[0].namespace)
    sleeper = subprocess.Popen([*network.exec_prefix(hosts[0].namespace), "sleep", "30"])
    try:
        with pytest.raises(SandboxError, match=f"{hosts[0].namespace} is in use"):
            network.create(tmp_path, port, hosts)
    finally:
        sleeper.kill()
        sleeper.wait()
        network.clear_stale(port, 1)
