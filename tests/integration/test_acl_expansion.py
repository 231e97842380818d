"""The whole expansion as a least-privilege ACL user (default user off), the password from an environment variable
(tests/expanded.py runs it; tests/integration/test_expanded.py checks what every kind must show, the password's
absence from every artifact included); here the ACL itself, the admin password, provenance, and the run folder's
manifest verified and tampered."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import redis

from runbook_lib import acl
from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.config import Credentials
from tests.conftest import files_holding
from tests.expanded import ACL_PASSWORD_ENV

pytestmark = pytest.mark.integration


def admin(expansion, port: int) -> redis.Redis:
    return node_client(f"127.0.0.1:{port}", expansion.sandbox.admin_credentials())


def test_expansion_completes_as_the_acl_user(acl_expansion):
    assert acl_expansion.proc.returncode == 0, acl_expansion.proc.stdout + acl_expansion.proc.stderr
    assert "sections: <strong>PASS</strong>" in (acl_expansion.out / "index.html").read_text()
    assert acl_expansion.creds.username == "runbook"


def test_no_command_was_refused_on_any_node(acl_expansion):
    """ACL LOG records every refusal: empty everywhere means the least rules were enough for every section."""
    for port in acl_expansion.layout.all_ports:
        assert admin(acl_expansion, port).execute_command("ACL", "LOG") == [], f"ACL LOG on {port} is not empty"


def test_default_user_is_off_and_the_user_is_least_privilege(acl_expansion):
    seed = admin(acl_expansion, acl_expansion.kind.port)
    assert b"off" in seed.execute_command("ACL", "GETUSER", "default")[b"flags"]
    with pytest.raises(redis.AuthenticationError):
        node_client(acl_expansion.seed, Credentials(password=acl_expansion.creds.password)).ping()
    user = node_client(acl_expansion.seed, acl_expansion.creds)
    for command in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "0"), ("SET", "str:1", "x"), ("KEYS", "*"),
                    ("ACL", "LIST"), ("SHUTDOWN",), ("CLUSTER", "FAILOVER")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*command)
    seed.execute_command("ACL", "LOG", "RESET")
    client = cluster_client([acl_expansion.seed], acl_expansion.creds)
    assert client.set("runbook:acl-test", "1", ex=30) and client.get("runbook:acl-test") == "1"
    assert client.delete("runbook:acl-test") == 1
    client.close()


def test_the_sandbox_user_has_exactly_the_documented_rules(acl_expansion):
    rules = admin(acl_expansion, acl_expansion.kind.port).execute_command("ACL", "GETUSER", "runbook")
    assert set(rules[b"commands"].decode().split()) == {r for r in acl.operator_rules() if r.startswith(("+", "-"))}
    assert rules[b"keys"] == b"~*" and rules[b"channels"] == b""
    [selector] = rules[b"selectors"]
    assert selector[b"keys"] == b"~runbook:*"
    assert set(selector[b"commands"].decode().split()) == {"-@all", "+set", "+get"}


def test_the_admin_password_is_in_no_artifact_and_nothing_was_scrubbed(acl_expansion):
    out = acl_expansion.out
    assert files_holding(acl_expansion.sandbox.admin_password_path.read_text().strip(), [out]) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["secrets_scrubbed_from"] == [] and manifest["secrets_in_binary_files"] == []


def test_provenance_and_redacted_params(acl_expansion):
    out = acl_expansion.out
    prov = json.loads((out / "provenance.json").read_text())
    for key in ("runbook_lib", "git_commit", "host", "os_user", "started_utc", "ended_utc", "run_id", "params_sha256"):
        assert prov[key], key
    assert prov["started_utc"] <= prov["ended_utc"] and prov["exit_code"] == 0
    assert [s["name"] for s in prov["sections"]][-1] == "70_monitoring"
    assert prov["lock"]["held"] is True
    copy = (out / "params.redacted.yaml").read_text()
    assert f"password_env: {ACL_PASSWORD_ENV}" in copy and "username: runbook" in copy


def test_manifest_verifies_and_shows_tampering(acl_expansion, runbook_bin, tmp_path):
    out = acl_expansion.out
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
