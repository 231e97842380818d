"""The whole expansion as a least-privilege ACL user (default user off), the password from an environment variable;
then every artifact of the run is searched for the password, and the run folder's manifest is verified and tampered."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import redis
import yaml

from runbook_lib import acl
from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Credentials
from runbook_lib.sandbox import Sandbox, SandboxLayout
from runbook_lib.sections.validate import key_count
from tests.conftest import LOOSE_GATES, PORT_OFFSET, files_holding, loosen

pytestmark = pytest.mark.integration
PORT = 7510 + PORT_OFFSET
KEYS = 10_000
ENV = "RUNBOOK_ACL_TEST_PASSWORD"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = Sandbox(tmp_path_factory.mktemp("acl") / "sandbox")
    sb.up(SandboxLayout(port=PORT), keys=KEYS, progress=False, acl=True)
    loosen(sb.root / "params.yaml")
    yield sb
    sb.down()


@pytest.fixture(scope="module")
def params_env(sandbox):
    """The sandbox params, reading the password from an environment variable instead of the file, with the traffic
    probe on (its keys are under the user's prefix) and latency gates loose enough for a busy test machine: this
    module proves access control, not latency."""
    params = yaml.safe_load((sandbox.root / "params.yaml").read_text())
    del params["cluster"]["password_file"]
    params["cluster"]["password_env"] = ENV
    params["probe"] = {**params.get("probe", {}), "enabled": True}
    params["gates"] = {**params.get("gates", {}), **LOOSE_GATES}
    path = sandbox.root / "params-env.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def run(sandbox, params_env, runbook_bin):
    out = sandbox.root.parent / "run-acl"
    env = {**os.environ, ENV: sandbox.credentials().password}
    proc = subprocess.run([runbook_bin, "run", "--params", str(params_env), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    return proc, out


def admin(sandbox, port: int) -> redis.Redis:
    return node_client(f"127.0.0.1:{port}", sandbox.admin_credentials())


def test_expansion_completes_as_the_acl_user(run, sandbox):
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sections: <strong>PASS</strong>" in (out / "index.html").read_text()
    creds = sandbox.credentials()
    assert creds.username == "runbook"
    topo = observe(f"127.0.0.1:{PORT}", creds)
    assert len(topo.masters()) == 4 and all(len(topo.replicas_of(m.id)) == 1 for m in topo.masters())
    assert key_count(topo, creds) == KEYS


def test_no_command_was_refused_on_any_node(run, sandbox):
    """ACL LOG records every refusal: empty everywhere means the least rules were enough for every section."""
    for port in SandboxLayout(port=PORT).all_ports:
        assert admin(sandbox, port).execute_command("ACL", "LOG") == [], f"ACL LOG on {port} is not empty"


def test_default_user_is_off_and_the_user_is_least_privilege(run, sandbox):
    seed = admin(sandbox, PORT)
    assert b"off" in seed.execute_command("ACL", "GETUSER", "default")[b"flags"]
    with pytest.raises(redis.AuthenticationError):
        node_client(f"127.0.0.1:{PORT}", Credentials(password=sandbox.credentials().password)).ping()
    user = node_client(f"127.0.0.1:{PORT}", sandbox.credentials())
    for command in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "0"), ("SET", "str:1", "x"), ("KEYS", "*"),
                    ("ACL", "LIST"), ("SHUTDOWN",), ("CLUSTER", "FAILOVER")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*command)
    seed.execute_command("ACL", "LOG", "RESET")
    client = cluster_client([f"127.0.0.1:{PORT}"], sandbox.credentials())
    assert client.set("runbook:acl-test", "1", ex=30) and client.get("runbook:acl-test") == "1"
    assert client.delete("runbook:acl-test") == 1
    client.close()


def test_the_sandbox_user_has_exactly_the_documented_rules(sandbox):
    rules = admin(sandbox, PORT).execute_command("ACL", "GETUSER", "runbook")
    assert set(rules[b"commands"].decode().split()) == {r for r in acl.operator_rules() if r.startswith(("+", "-"))}
    assert rules[b"keys"] == b"~*" and rules[b"channels"] == b""
    [selector] = rules[b"selectors"]
    assert selector[b"keys"] == b"~runbook:*"
    assert set(selector[b"commands"].decode().split()) == {"-@all", "+set", "+get"}


def test_the_password_is_in_no_artifact(run, sandbox, params_env):
    proc, out = run
    secret = sandbox.credentials().password
    assert len(secret) >= 20
    assert files_holding(secret, [out, sandbox.root / "params.yaml", params_env]) == []
    assert secret not in proc.stdout and secret not in proc.stderr
    assert files_holding(sandbox.admin_password_path.read_text().strip(), [out]) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["secrets_scrubbed_from"] == [] and manifest["secrets_in_binary_files"] == []


def test_provenance_and_redacted_params(run, sandbox, params_env):
    _, out = run
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("runbook_lib", "git_commit", "host", "os_user", "started_utc", "ended_utc", "run_id", "params_sha256"):
        assert prov[key], key
    assert prov["started_utc"] <= prov["ended_utc"] and prov["exit_code"] == 0
    assert [s["name"] for s in prov["sections"]][-1] == "70_monitoring"
    assert prov["lock"]["held"] is True
    copy = (out / "params.redacted.yaml").read_text()
    assert f"password_env: {ENV}" in copy and "username: runbook" in copy


def test_manifest_verifies_and_shows_tampering(run, runbook_bin, tmp_path):
    _, out = run
    ok = subprocess.run([runbook_bin, "verify-report", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all intact" in ok.stdout
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    journal = copy / "journal.jsonl"
    journal.write_bytes(journal.read_bytes().replace(b"slots_assigned", b"slots_assignee", 1))
    (copy / "plan.json").unlink()
    (copy / "notes.txt").write_text("added later")
    bad = subprocess.run([runbook_bin, "verify-report", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "changed: journal.jsonl" in bad.stdout
    assert "missing: plan.json" in bad.stdout
    assert "not in the manifest: notes.txt" in bad.stdout
    (copy / "manifest.json").unlink()
    gone = subprocess.run([runbook_bin, "verify-report", str(copy)], capture_output=True, text=True)
    assert gone.returncode == 2 and "no manifest.json" in gone.stderr


def test_redis_cli_check_passes(run, sandbox, redis_cli):
    env = {"REDISCLI_AUTH": sandbox.admin_credentials().password, "PATH": "/usr/bin:/bin"}
    check = subprocess.run([redis_cli, "--user", "admin", "--cluster", "check", f"127.0.0.1:{PORT}"],
                           capture_output=True, text=True, env=env, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{KEYS} keys in 4 masters" in check.stdout
