"""The whole expansion over TLS only (clients, cluster bus, replication and MIGRATE), on a sandbox with a throwaway CA."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest
import redis
import yaml

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Credentials
from runbook_lib.sandbox import Sandbox, SandboxLayout
from runbook_lib.sections.validate import key_count
from tests.conftest import LOOSE_GATES, PORT_OFFSET, files_holding, loosen

pytestmark = pytest.mark.integration
PORT = 7520 + PORT_OFFSET
KEYS = 10_000


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = Sandbox(tmp_path_factory.mktemp("tls") / "sandbox")
    sb.up(SandboxLayout(port=PORT), keys=KEYS, progress=False, tls=True)
    loosen(sb.root / "params.yaml")
    yield sb
    sb.down()


@pytest.fixture(scope="module")
def params(sandbox):
    """The sandbox params with latency gates loose enough for a busy test machine: this module proves TLS."""
    data = yaml.safe_load((sandbox.root / "params.yaml").read_text())
    data["gates"] = {**data.get("gates", {}), **LOOSE_GATES}
    path = sandbox.root / "params-tls.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(sandbox, params, runbook_bin):
    out = sandbox.root.parent / "run-tls"
    proc = subprocess.run([runbook_bin, "run", "--params", str(params), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    return proc, out


def test_certificates_are_throwaway_and_keys_private(sandbox):
    folder = sandbox.root / "tls"
    assert {p.name for p in folder.iterdir()} == {"ca.crt", "redis.crt", "redis.key", "client.crt", "client.key"}
    for key in ("redis.key", "client.key"):
        assert stat.S_IMODE(os.stat(folder / key).st_mode) == 0o600
    params = (sandbox.root / "params.yaml").read_text()
    assert "enabled: true" in params and "ca_file: tls/ca.crt" in params and "key_file: tls/client.key" in params


def test_nodes_speak_tls_only(sandbox):
    with pytest.raises(redis.ConnectionError):
        node_client(f"127.0.0.1:{PORT}", Credentials(password=sandbox.credentials().password), timeout=2.0).ping()
    no_cert = Credentials(password=sandbox.credentials().password, tls=True, ca_file=sandbox.credentials().ca_file)
    with pytest.raises(redis.ConnectionError):
        node_client(f"127.0.0.1:{PORT}", no_cert, timeout=2.0).ping()
    for port in SandboxLayout(port=PORT).all_ports:
        client = node_client(f"127.0.0.1:{port}", sandbox.credentials())
        config = {k: client.config_get(k)[k] for k in ("port", "tls-port", "tls-cluster", "tls-replication")}
        assert config == {"port": "0", "tls-port": str(port), "tls-cluster": "yes", "tls-replication": "yes"}


def test_expansion_completes_over_tls(run, sandbox):
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    creds = sandbox.credentials()
    topo = observe(f"127.0.0.1:{PORT}", creds)
    assert len(topo.masters()) == 4
    assert all(abs(len(s) - 4096) <= 1 for s in topo.slots_by_master().values())
    assert key_count(topo, creds) == KEYS
    migration = json.loads((out / "migration.json").read_text())
    assert sum(b["slots"] for b in migration["batches"]) == 4096, "moved by MIGRATE with no plain-text port (port 0)"
    assert sum(b["keys"] for b in migration["batches"]) > 0
    new_replica = node_client(f"127.0.0.1:{SandboxLayout(port=PORT).new_replica_ports[0]}", creds)
    assert new_replica.info("replication")["master_link_status"] == "up"


def test_redis_cli_check_over_tls(run, sandbox, redis_cli):
    creds = sandbox.credentials()
    env = {"REDISCLI_AUTH": creds.password, "PATH": "/usr/bin:/bin"}
    check = subprocess.run([redis_cli, "--tls", "--cacert", creds.ca_file, "--cert", creds.cert_file, "--key",
                            creds.key_file, "--cluster", "check", f"127.0.0.1:{PORT}"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{KEYS} keys in 4 masters" in check.stdout


def test_the_password_is_in_no_artifact_and_the_folder_verifies(run, sandbox, params, runbook_bin):
    proc, out = run
    secret = sandbox.credentials().password
    assert files_holding(secret, [out, sandbox.root / "params.yaml", params]) == []
    assert secret not in proc.stdout + proc.stderr
    verified = subprocess.run([runbook_bin, "verify-report", str(out)], capture_output=True, text=True)
    assert verified.returncode == 0 and "all intact" in verified.stdout
