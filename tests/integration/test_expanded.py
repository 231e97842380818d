"""What every kind of expanded cluster (tests/expanded.py: plain, ACL, TLS, multi-host, multi-host over IPv6 and TLS)
must show after the whole 3+3 -> 4+4 `runbook run`: the sections ran in order and passed, `redis-cli --cluster
check` is clean, four balanced masters each with a replica hold every key with its value, the password is in no
artifact, and the run folder verifies."""

from __future__ import annotations

import subprocess

import pytest

from runbook_lib.cluster.topology import observe
from runbook_lib.sandbox import changed_keys
from runbook_lib.sections.validate import key_count
from tests.conftest import files_holding
from tests.expanded import FIXTURES, KINDS, Expansion

pytestmark = pytest.mark.integration
SECTIONS = ["00_preflight", "10_backup", "20_add_masters", "25_add_replicas", "30_plan", "40_migrate", "60_validate",
            "70_monitoring"]


@pytest.fixture(params=[pytest.param(f"{kind.name}_expansion", id=kind.name,
                                     marks=pytest.mark.xdist_group(FIXTURES[f"{kind.name}_expansion"]))
                        for kind in KINDS])
def expansion(request) -> Expansion:
    return request.getfixturevalue(request.param)


def test_run_succeeds_in_order(expansion):
    proc = expansion.proc
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = [line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("[") and ": " in line]
    assert order == SECTIONS


def test_redis_cli_check_is_clean(expansion, redis_cli):
    check = expansion.redis_cli_check(redis_cli)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 16384 slots covered" in check.stdout and "[ERR]" not in check.stdout
    assert f"{expansion.kind.keys} keys in 4 masters" in check.stdout


def test_four_balanced_masters_each_with_a_replica_and_no_key_lost_or_changed(expansion):
    creds = expansion.creds
    topo = observe(expansion.seed, creds)
    masters = topo.masters()
    owned = topo.slots_by_master()
    assert len(masters) == 4 and all(abs(len(owned[m.id]) - 4096) <= 1 for m in masters)
    assert all(len(topo.replicas_of(m.id)) == 1 for m in masters)
    assert key_count(topo, creds) == expansion.kind.keys
    assert changed_keys(expansion.seed, expansion.reader, expansion.kind.keys) == []


def test_the_password_is_in_no_artifact_and_the_folder_verifies(expansion, runbook_bin):
    proc, out = expansion.proc, expansion.out
    secret = expansion.creds.password
    assert len(secret) >= 20
    assert files_holding(secret, [out, expansion.sandbox.root / "params.yaml", expansion.params]) == []
    assert secret not in proc.stdout + proc.stderr
    verified = subprocess.run([runbook_bin, "verify-report", str(out)], capture_output=True, text=True)
    assert verified.returncode == 0 and "all intact" in verified.stdout, verified.stdout + verified.stderr
