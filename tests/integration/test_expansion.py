"""The plain expansion's own record (tests/expanded.py runs it; tests/integration/test_expanded.py checks the cluster):
the audit folder, the verdict table of the executed 60_validate, and a second run that finds nothing to do."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.integration


def test_report_folder_holds_the_audit_record(plain_expansion):
    out = plain_expansion.out
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


def test_verdict_table_in_executed_validate(plain_expansion):
    out = plain_expansion.out
    checks = {c["name"]: c for c in json.loads((out / "results" / "60_validate.json").read_text())["checks"]}
    for name in ("latency variation", "failed requests", "lost writes", "downtime"):
        assert name in checks and checks[name]["status"] in ("pass", "fail", "warn")
    assert checks["failed requests"]["status"] == "pass", checks["failed requests"]
    assert checks["lost writes"]["status"] == "pass", checks["lost writes"]
    summary = json.loads((out / "probe-summary.json").read_text())
    assert summary["ops"] > 100 and summary["acknowledged_writes"] > 0
    assert (out / "metrics.csv").exists() and "batch-latency.png" in {p.name for p in (out / "charts").glob("*.png")}


def test_second_run_does_nothing_and_says_so(plain_expansion, runbook_bin):
    sandbox = plain_expansion.sandbox
    out = sandbox.root.parent / "run2"
    proc = subprocess.run([runbook_bin, "run", "--params", str(plain_expansion.params), "--out", str(out),
                           "--from", "20_add_masters"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20_add_masters: pass" in proc.stdout and "nothing to do" in proc.stdout
    assert "Nothing to do" in json.loads((out / "results" / "40_migrate.json").read_text())["summary"]
    assert "25_add_replicas: pass" in proc.stdout
    journal = out / "journal.jsonl"
    changes = [json.loads(l)["event"] for l in journal.read_text().splitlines()] if journal.exists() else []
    assert not [e for e in changes if e in ("node_meet", "slot_open", "slots_open", "replica_attach")]
