"""An expansion across four IPv6 hosts (network namespaces) whose nodes announce their host names, over TLS with
certificates that name the hosts only: the runbook must verify every node by name (tests/expanded.py runs it;
tests/integration/test_expanded.py checks what every kind must show)."""

from __future__ import annotations

import subprocess

import pytest
import redis

from runbook_lib.addresses import parse_address, resolve
from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import observe, read_view

pytestmark = pytest.mark.integration


def test_hosts_are_ipv6_and_certificates_name_hosts_only(multihost_tls_expansion):
    sandbox = multihost_tls_expansion.sandbox
    hosts = sandbox.hosts()
    assert all(":" in h.ip and resolve(h.name) == [h.ip] for h in hosts)
    san = subprocess.run(["openssl", "x509", "-in", str(sandbox.root / "tls" / "redis.crt"), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=True).stdout
    assert all(f"DNS:{h.name}" in san for h in hosts) and "IP" not in san


def test_a_node_reached_by_ip_fails_verification_by_name(multihost_tls_expansion):
    """The check that makes the rest meaningful: the certificates do not cover the IPs the cluster knows."""
    host = multihost_tls_expansion.sandbox.hosts()[0]
    with pytest.raises(redis.ConnectionError, match="certificate"):
        node_client(f"[{host.ip}]:{multihost_tls_expansion.kind.port}", multihost_tls_expansion.creds).ping()
    assert node_client(multihost_tls_expansion.seed, multihost_tls_expansion.creds).ping()


def test_nodes_announce_their_host_names(multihost_tls_expansion):
    """Every node of the expanded cluster, the new ones too, is known and reached by its host name."""
    sandbox, creds, seed = multihost_tls_expansion.sandbox, multihost_tls_expansion.creds, multihost_tls_expansion.seed
    view = read_view(node_client(seed, creds), seed)
    assert all(e.hostname.endswith(".test") and ":" in e.ip for e in view.entries.values())
    assert {e.address for e in view.entries.values()} == {sandbox.address(p)
                                                          for p in multihost_tls_expansion.layout.all_ports}
    client = cluster_client([seed], creds)
    try:
        client.set("runbook:test:by-name", "1")
        assert {n.host for n in client.get_nodes()} <= {h.name for h in sandbox.hosts()}
    finally:
        client.delete("runbook:test:by-name")
        client.close()


def test_the_new_master_is_known_by_its_host_name(multihost_tls_expansion):
    sandbox = multihost_tls_expansion.sandbox
    topo = observe(multihost_tls_expansion.seed, multihost_tls_expansion.creds)
    new = topo.by_address(sandbox.address(multihost_tls_expansion.layout.new_master_ports[0]))
    assert new is not None and new.is_master and parse_address(new.address)[0].endswith(".test")
