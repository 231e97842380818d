"""A known blocker found before anything moves: a 12 MB key in a slot the plan moves fails 30_plan, and `runbook run`
stops there naming the key, with no slot opened; allowed in params (bigkeys.allow), 30_plan passes."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client
from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.topology import observe
from runbook_lib.config import load_params
from runbook_lib.sections import bigkeys
from tests.conftest import module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW_MASTER = f"127.0.0.1:{PORT + 6}"
MB = 1024 * 1024


sandbox = module_sandbox(PORT, 500)


@pytest.fixture(scope="module")
def big_key(sandbox):
    """A 12 MB string in a slot the plan moves to the new master."""
    creds = sandbox.credentials()
    params = load_params(sandbox.root / "params.yaml")
    plan = current_plan(observe(SEED, creds), creds, [NEW_MASTER], params.model.migration, allow_unjoined=True)
    moving = sorted(m.slot for m in plan.moves)
    target = moving[len(moving) // 2]
    name = next(f"big:{{{i}}}" for i in range(200_000) if key_slot(f"big:{{{i}}}".encode()) == target)
    client = cluster_client([SEED], creds)
    client.set(name, "x" * (12 * MB))
    client.close()
    return name, target


@pytest.fixture(scope="module")
def stopped_run(sandbox, big_key, runbook_bin):
    out = sandbox.root.parent / "run"
    proc = subprocess.run([runbook_bin, "run", "--params", str(sandbox.root / "params.yaml"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    return proc, out


def test_runbook_run_stops_at_30_plan_naming_the_key_before_any_slot_moves(stopped_run, big_key, sandbox):
    proc, out = stopped_run
    name, slot = big_key
    assert proc.returncode == 1, proc.stdout + proc.stderr
    failed = next(line for line in proc.stdout.splitlines() if line.startswith("[5/8] 30_plan: fail"))
    assert name in failed and f"in slot {slot}" in failed and "MB string" in failed, failed
    assert "bigkeys.allow" in failed and "split it" in failed, failed
    assert "40_migrate" not in proc.stdout
    events = [json.loads(line)["event"] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert "slots_open" not in events and "migrate" not in " ".join(events), sorted(set(events))
    topo = observe(SEED, sandbox.credentials())
    new = topo.by_address(NEW_MASTER)
    assert new is not None and not topo.slots_by_master().get(new.id), "a slot moved to the new master"
    verdict = json.loads((out / "results" / "30_plan.json").read_text())
    check = next(c for c in verdict["checks"] if c["name"] == f"big key {name}")
    assert check["status"] == "fail" and f"(length {12 * MB})" in check["detail"]
    index = (out / "index.html").read_text()
    assert "not run" in index and name in index


def test_without_preflight_s_scan_the_slots_to_move_are_scanned_and_a_deleted_key_no_longer_blocks(
        stopped_run, big_key, sandbox):
    _, out = stopped_run
    name, slot = big_key
    creds = sandbox.credentials()
    topo = observe(SEED, creds)
    settings = load_params(sandbox.root / "params.yaml").model.bigkeys
    fresh = bigkeys.plan_checks(None, settings, {slot, slot + 1}, topo, creds)
    assert [(c.name, c.status) for c in fresh] == [(f"big key {name}", "fail")]
    assert bigkeys.plan_checks(None, settings, {slot + 1}, topo, creds)[0].status == "pass"
    saved = bigkeys.from_json(json.loads((out / "bigkeys.json").read_text()))
    client = cluster_client([SEED], creds)
    value = client.get(name)
    client.delete(name)
    try:
        assert bigkeys.plan_checks(saved, settings, {slot}, topo, creds)[0].status == "pass"
    finally:
        client.set(name, value)
        client.close()


def test_allowed_in_params_30_plan_passes_with_a_warning(stopped_run, big_key, sandbox, runbook_bin):
    _, out = stopped_run
    name, _ = big_key
    data = yaml.safe_load((sandbox.root / "params.yaml").read_text())
    data["bigkeys"] = {**data.get("bigkeys", {}), "allow": {name: 60000}}
    allowed = sandbox.root / "params-allowed.yaml"
    allowed.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = subprocess.run([runbook_bin, "run", "--params", str(allowed), "--only", "30_plan", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict = json.loads((out / "results" / "30_plan.json").read_text())
    check = next(c for c in verdict["checks"] if c["name"] == f"big key {name}")
    assert check["status"] == "warn" and "60000 ms MIGRATE timeout" in check["detail"]
    events = [json.loads(line)["event"] for line in (out / "journal.jsonl").read_text().splitlines()]
    assert "slots_open" not in events
