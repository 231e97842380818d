"""An expansion across four hosts (network namespaces, each with its own address and host name), params naming the
nodes by host name while the cluster knows them by IP, with a 0.5 ms round trip where tc netem exists
(tests/expanded.py runs it and, at its teardown, checks that `down` removes every namespace, link and name;
tests/integration/test_expanded.py checks what every kind must show)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from runbook_lib.addresses import parse_address, resolve
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.config import load_params
from runbook_lib.exceptions import SandboxError
from runbook_lib.sandbox import Sandbox, SandboxLayout
from tests.conftest import port_block
from tests.expanded import NO_NAMESPACES, NO_NETEM, RTT_MS

pytestmark = pytest.mark.integration
NETEM_PORT = port_block()


def test_each_host_has_its_own_namespace_address_and_name(multihost_expansion):
    sandbox = multihost_expansion.sandbox
    hosts = sandbox.hosts()
    assert len(hosts) == 4 and len({h.ip for h in hosts}) == 4
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for h in hosts:
        assert h.namespace in listed and resolve(h.name) == [h.ip]
        assert not h.ip.startswith("127.")
    params = load_params(sandbox.root / "params.yaml").model
    assert params.cluster.seed == f"{hosts[0].name}:{multihost_expansion.kind.port}"
    assert all(parse_address(n.address)[0].endswith(".test") for n in params.new_masters)


def test_cluster_knows_ips_and_params_names_match_them(multihost_expansion):
    creds = multihost_expansion.creds
    params = load_params(multihost_expansion.params).model
    topo = observe(params.cluster.seed, creds)
    assert all(e.address == f"{e.ip}:{e.port}" and not e.hostname for e in topo.nodes.values())
    new = params.new_masters[0]
    master, replica = topo.by_address(new.address), topo.by_address(new.replica)
    assert master is not None and master.is_master and master.ip == resolve(parse_address(new.address)[0])[0]
    assert replica is not None and replica.master_id == master.id
    assert f"({master.ip}:{master.port} in the cluster)" in topo.known_as(new.address)
    assert len(topo.views) == 8, "the seed, named by host name, was read twice or a node was missed"


def test_preflight_and_backup_say_what_they_could_not_check_on_other_hosts(multihost_expansion):
    out = multihost_expansion.out
    checks = {c["name"]: c for c in json.loads((out / "results" / "00_preflight.json").read_text())["checks"]}
    kernel = checks["kernel settings on other hosts"]
    assert kernel["status"] == "warn" and "Not checked on these 4 hosts" in kernel["detail"]
    hosts = multihost_expansion.sandbox.hosts()
    assert all(h.ip in kernel["detail"] for h in hosts)
    for h in hosts[2:]:
        assert f"{h.name} ({h.ip}) (nodes " in kernel["detail"], "a host named and known by IP counts once"
    assert "sysctl vm.overcommit_memory" in kernel["detail"]
    backups = json.loads((out / "backup" / "backups.json").read_text())
    assert backups and all("on another host, not readable from here" in b["copy"] and "`scp " in b["copy"]
                           for b in backups)


def test_round_trip_is_emulated(multihost_expansion):
    if NO_NETEM:
        pytest.skip(f"no round trip emulated here: {NO_NETEM}")
    client = node_client(multihost_expansion.seed, multihost_expansion.creds)
    client.ping()
    start = time.perf_counter()
    for _ in range(20):
        client.ping()
    assert (time.perf_counter() - start) / 20 * 1000 >= RTT_MS * 0.9


def test_rtt_needs_netem_and_says_so_leaving_nothing(tmp_path):
    """Where tc netem is missing, asking for a round trip fails with tc's own words and leaves no namespace."""
    if NO_NAMESPACES:
        pytest.skip(f"needs network namespaces: {NO_NAMESPACES}")
    if not NO_NETEM:
        pytest.skip("tc netem works here; test_round_trip_is_emulated measures the delay instead")
    sb, port = Sandbox(tmp_path / "sandbox"), NETEM_PORT
    with pytest.raises(SandboxError, match="netem"):
        sb.up(SandboxLayout(port=port, hosts=2, rtt_ms=RTT_MS), keys=0, progress=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"rb{port}h" not in listed and f"rb{port}" not in open("/etc/hosts").read()
    assert not sb.running_pids()
