"""An expansion across four IPv6 hosts (network namespaces) whose nodes announce their host names, over TLS with
certificates that name the hosts only: the runbook must verify every node by name."""

from __future__ import annotations

import subprocess

import pytest
import redis

from runbook_lib.addresses import parse_address, resolve
from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import observe, read_view
from runbook_lib.sandbox import Sandbox, SandboxLayout, changed_keys, network
from runbook_lib.sections.validate import key_count
from tests.conftest import PORT_OFFSET, loosen, run_expansion

pytestmark = pytest.mark.integration
PORT = 8200 + PORT_OFFSET
KEYS = 3000
MISSING = network.unavailable()
LAYOUT = SandboxLayout(port=PORT, hosts=4, ipv6=True, announce_hostnames=True)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    if MISSING:
        pytest.skip(f"needs network namespaces: {MISSING}")
    sb = Sandbox(tmp_path_factory.mktemp("multihost-tls") / "sandbox")
    sb.up(LAYOUT, keys=KEYS, progress=False, tls=True)
    loosen(sb.root / "params.yaml")
    yield sb
    sb.down()


@pytest.fixture(scope="module")
def run(sandbox, runbook_bin):
    return run_expansion(sandbox, runbook_bin, "run-tls6")


def test_hosts_are_ipv6_and_certificates_name_hosts_only(sandbox):
    hosts = sandbox.hosts()
    assert all(":" in h.ip and resolve(h.name) == [h.ip] for h in hosts)
    san = subprocess.run(["openssl", "x509", "-in", str(sandbox.root / "tls" / "redis.crt"), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=True).stdout
    assert all(f"DNS:{h.name}" in san for h in hosts) and "IP" not in san


def test_a_node_reached_by_ip_fails_verification_by_name(sandbox):
    """The check that makes the rest meaningful: the certificates do not cover the IPs the cluster knows."""
    host = sandbox.hosts()[0]
    with pytest.raises(redis.ConnectionError, match="certificate"):
        node_client(f"[{host.ip}]:{PORT}", sandbox.credentials()).ping()
    assert node_client(sandbox.address(PORT), sandbox.credentials()).ping()


def test_nodes_announce_their_host_names(sandbox):
    creds = sandbox.credentials()
    view = read_view(node_client(sandbox.address(PORT), creds), sandbox.address(PORT))
    assert all(e.hostname.endswith(".test") and ":" in e.ip for e in view.entries.values())
    assert {e.address for e in view.entries.values()} == {sandbox.address(p) for p in range(PORT, PORT + 6)}
    client = cluster_client([sandbox.address(PORT)], creds)
    try:
        client.set("runbook:test:by-name", "1")
        assert {n.host for n in client.get_nodes()} <= {h.name for h in sandbox.hosts()}
    finally:
        client.delete("runbook:test:by-name")
        client.close()


def test_run_succeeds(run):
    proc, _ = run
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_redis_cli_check_is_clean_and_data_unchanged(run, sandbox, redis_cli):
    creds = sandbox.credentials()
    tls = sandbox.root / "tls"
    env = {"REDISCLI_AUTH": creds.password, "PATH": "/usr/bin:/bin"}
    check = subprocess.run([redis_cli, "--tls", "--cacert", str(tls / "ca.crt"), "--cert", str(tls / "client.crt"),
                            "--key", str(tls / "client.key"), "--cluster", "check", sandbox.address(PORT)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 16384 slots covered" in check.stdout and "[ERR]" not in check.stdout
    assert f"{KEYS} keys in 4 masters" in check.stdout
    topo = observe(sandbox.address(PORT), creds)
    owned = topo.slots_by_master()
    assert len(topo.masters()) == 4 and all(abs(len(owned[m.id]) - 4096) <= 1 for m in topo.masters())
    new = topo.by_address(sandbox.address(LAYOUT.new_master_ports[0]))
    assert new is not None and new.is_master and parse_address(new.address)[0].endswith(".test")
    assert key_count(topo, creds) == KEYS
    assert changed_keys(sandbox.address(PORT), creds, KEYS) == []

