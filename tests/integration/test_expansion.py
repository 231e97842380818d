"""The whole 3+3 -> 4+4 expansion through `runbook run` on a real sandbox, checked by `redis-cli --cluster check`."""

from __future__ import annotations

import json
import subprocess

import pytest

from runbook_lib.cluster.topology import observe
from runbook_lib.sections.validate import key_count
from tests.conftest import PORT_OFFSET, run_expansion, start_sandbox

pytestmark = pytest.mark.integration
PORT = 7100 + PORT_OFFSET
KEYS = 20_000


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("expansion") / "sandbox", PORT, KEYS)
    yield sb
    sb.down()


@pytest.fixture(scope="module")
def run(sandbox, runbook_bin):
    return run_expansion(sandbox, runbook_bin, "run1")


def test_run_succeeds_in_order(run):
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    order = [line.split()[1].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("[") and ": " in line]
    assert order == ["00_preflight", "10_backup", "20_add_masters", "25_add_replicas", "30_plan", "40_migrate",
                     "60_validate", "70_monitoring"]


def test_redis_cli_check_passes(run, sandbox, redis_cli):
    env = {"REDISCLI_AUTH": sandbox.credentials().password, "PATH": "/usr/bin:/bin"}
    check = subprocess.run([redis_cli, "--cluster", "check", f"127.0.0.1:{PORT}"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 16384 slots covered" in check.stdout
    assert f"{KEYS} keys in 4 masters" in check.stdout


def test_four_balanced_masters_each_with_a_replica_and_no_key_lost(run, sandbox):
    creds = sandbox.credentials()
    topo = observe(f"127.0.0.1:{PORT}", creds)
    masters = topo.masters()
    assert len(masters) == 4
    owned = topo.slots_by_master()
    assert all(abs(len(owned[m.id]) - 4096) <= 1 for m in masters)
    assert all(len(topo.replicas_of(m.id)) == 1 for m in masters)
    assert key_count(topo, creds) == KEYS


def test_report_folder_holds_the_audit_record(run):
    _, out = run
    index = (out / "index.html").read_text()
    assert "sections: <strong>PASS</strong>" in index
    assert index.index('<table class="acceptance">') < index.index('<table class="sections">') < index.index("<h2>Other")
    for name in ("00_preflight", "40_migrate", "60_validate", "70_monitoring"):
        assert (out / f"{name}.ipynb").exists() and (out / f"{name}.html").exists()
        assert json.loads((out / "results" / f"{name}.json").read_text())["status"] in ("pass", "warn")
    plan = json.loads((out / "plan.json").read_text())
    assert plan["moves"] == 4096
    migration = json.loads((out / "migration.json").read_text())
    assert sum(b["slots"] for b in migration["batches"]) == 4096
    assert {p.name for p in (out / "charts").glob("*.png")} >= {"slots-planned.png", "batches.png", "slots-before-after.png"}
    entries = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assigned = [s for e in entries if e["event"] in ("slot_assigned", "slots_assigned") for s in e.get("slots", [e.get("slot")])]
    assert sorted(assigned) == sorted(set(assigned)) and len(assigned) == 4096
    assert any(e["event"] == "node_meet" for e in entries) and any(e["event"] == "replica_attach" for e in entries)
    assert list((out / "backup").glob("*.rdb")), "10_backup copied no RDB"


def test_verdict_table_in_executed_validate(run):
    _, out = run
    checks = {c["name"]: c for c in json.loads((out / "results" / "60_validate.json").read_text())["checks"]}
    for name in ("latency variation", "failed requests", "lost writes", "downtime"):
        assert name in checks and checks[name]["status"] in ("pass", "fail", "warn")
    assert checks["failed requests"]["status"] == "pass", checks["failed requests"]
    assert checks["lost writes"]["status"] == "pass", checks["lost writes"]
    summary = json.loads((out / "probe-summary.json").read_text())
    assert summary["ops"] > 100 and summary["acknowledged_writes"] > 0
    assert (out / "metrics.csv").exists() and "batch-latency.png" in {p.name for p in (out / "charts").glob("*.png")}


def test_second_run_does_nothing_and_says_so(run, sandbox, runbook_bin):
    out = sandbox.root.parent / "run2"
    proc = subprocess.run([runbook_bin, "run", "--params", str(sandbox.root / "params.yaml"), "--out", str(out),
                           "--from", "20_add_masters"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20_add_masters: pass" in proc.stdout and "nothing to do" in proc.stdout
    assert "Nothing to do" in json.loads((out / "results" / "40_migrate.json").read_text())["summary"]
    assert "25_add_replicas: pass" in proc.stdout
    journal = out / "journal.jsonl"
    changes = [json.loads(l)["event"] for l in journal.read_text().splitlines()] if journal.exists() else []
    assert not [e for e in changes if e in ("node_meet", "slot_open", "slots_open", "replica_attach")]
