"""The whole expansion over TLS only (clients, cluster bus, replication and MIGRATE), on a sandbox with a throwaway CA
(tests/expanded.py runs it; tests/integration/test_expanded.py checks what every kind must show)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import redis

from runbook_lib.cluster.connection import node_client
from runbook_lib.config import Credentials

pytestmark = pytest.mark.integration


def test_certificates_are_throwaway_and_keys_private(tls_expansion):
    folder = tls_expansion.sandbox.root / "tls"
    assert {p.name for p in folder.iterdir()} == {"ca.crt", "redis.crt", "redis.key", "client.crt", "client.key"}
    for key in ("redis.key", "client.key"):
        assert stat.S_IMODE(os.stat(folder / key).st_mode) == 0o600
    params = (tls_expansion.sandbox.root / "params.yaml").read_text()
    assert "enabled: true" in params and "ca_file: tls/ca.crt" in params and "key_file: tls/client.key" in params


def test_nodes_speak_tls_only(tls_expansion):
    creds = tls_expansion.creds
    with pytest.raises(redis.ConnectionError):
        node_client(tls_expansion.seed, Credentials(password=creds.password), timeout=2.0).ping()
    no_cert = Credentials(password=creds.password, tls=True, ca_file=creds.ca_file)
    with pytest.raises(redis.ConnectionError):
        node_client(tls_expansion.seed, no_cert, timeout=2.0).ping()
    for port in tls_expansion.layout.all_ports:
        client = node_client(f"127.0.0.1:{port}", creds)
        config = {k: client.config_get(k)[k] for k in ("port", "tls-port", "tls-cluster", "tls-replication")}
        assert config == {"port": "0", "tls-port": str(port), "tls-cluster": "yes", "tls-replication": "yes"}


def test_slots_moved_by_migrate_over_tls_and_the_new_replica_syncs(tls_expansion):
    out = tls_expansion.out
    migration = json.loads((out / "migration.json").read_text())
    assert sum(b["slots"] for b in migration["batches"]) == 4096, "moved by MIGRATE with no plain-text port (port 0)"
    assert sum(b["keys"] for b in migration["batches"]) > 0
    new_replica = node_client(f"127.0.0.1:{tls_expansion.layout.new_replica_ports[0]}", tls_expansion.creds)
    assert new_replica.info("replication")["master_link_status"] == "up"
