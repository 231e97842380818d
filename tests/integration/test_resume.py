"""The mover killed with SIGKILL at exact protocol steps, then resumed; rollbacks after full and half expansions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Migration
from runbook_lib.sections.validate import key_count
from tests.conftest import module_sandbox, port_block
from tests.integration.faults import (
    assert_expanded,
    assert_original,
    cli,
    fill_slot,
    params_variant,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"


sandbox = module_sandbox(PORT, 4000)


@pytest.fixture(scope="module")
def first_slot(sandbox):
    """The first slot the plan moves, filled with 40 keys so that 5 keys per MIGRATE take several rounds."""
    creds = sandbox.credentials()
    plan = current_plan(observe(SEED, creds), creds, [f"127.0.0.1:{PORT + 6}"], Migration(preset="fast", warmup_slot=False),
                        allow_unjoined=True)
    slot = plan.moves[0].slot
    fill_slot(sandbox, SEED, slot, 40)
    return slot


def journal_events(run_dir):
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("failpoint,expect,repair", [
    ("open.importing", {"importing"}, "SETSLOT STABLE"),
    ("drain.migrated:3", {"importing", "migrating"}, "finish"),
    ("handover.journaled", {"importing", "migrating"}, "finish"),
])
def test_kill_then_resume_then_rollback(sandbox, first_slot, tmp_path, failpoint, expect, repair):
    creds = sandbox.credentials()
    keys = key_count(observe(SEED, creds), creds)
    killer = params_variant(sandbox, "one-slot-batches", slots_per_batch=1, keys_per_migrate=5, warmup_slot=False)
    normal = params_variant(sandbox, "normal", slots_per_batch=512, keys_per_migrate=5, warmup_slot=False)
    run_dir = tmp_path / "run"

    killed = cli("run", "--params", str(killer), "--out", str(run_dir), failpoint=failpoint)
    assert killed.returncode == 1, killed.stdout + killed.stderr
    assert "40_migrate: fail" in killed.stdout
    topo = observe(SEED, creds)
    assert {o["slot"] for o in topo.open_slots()} == {first_slot}
    assert {o["state"] for o in topo.open_slots()} == expect
    assert cli("check", "--params", str(normal)).returncode == 1

    resumed = cli("resume", "--params", str(normal), "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"repaired slot {first_slot}: {repair}" in resumed.stdout
    # the killed run attached the replica (25_add_replicas) before 40_migrate and resume finished the slots:
    # what remains is 60_validate (probe verdict, health) and 70_monitoring
    finished = cli("run", "--params", str(normal), "--out", str(run_dir), "--from", "60_validate")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert_expanded(sandbox, SEED, keys)
    assigned = Counter(s for e in journal_events(run_dir) if e["event"] in ("slot_assigned", "slots_assigned")
                       for s in e.get("slots", [e.get("slot")]))
    assert len(assigned) == 4096 and max(assigned.values()) == 1, "a slot was moved twice"

    back = cli("rollback", "--params", str(normal), "--run-dir", str(run_dir))
    assert back.returncode == 0, back.stdout + back.stderr
    assert_original(sandbox, SEED, json.loads((run_dir / "baseline.json").read_text()), keys)


def test_rollback_of_a_half_expansion(sandbox, tmp_path):
    creds = sandbox.credentials()
    keys = key_count(observe(SEED, creds), creds)
    normal = params_variant(sandbox, "normal", slots_per_batch=512, keys_per_migrate=5, warmup_slot=False)
    run_dir = tmp_path / "run"
    killed = cli("run", "--params", str(normal), "--out", str(run_dir), failpoint="drain.migrated:40")
    assert killed.returncode == 1, killed.stdout + killed.stderr
    topo = observe(SEED, creds)
    new = topo.by_address(f"127.0.0.1:{PORT + 6}")
    assert new is not None and 0 < len(topo.slots_by_master()[new.id]) < 4096, killed.stdout + killed.stderr

    back = cli("rollback", "--params", str(normal), "--run-dir", str(run_dir))
    assert back.returncode == 0, f"exit {back.returncode}: {back.stdout} {back.stderr}"
    assert_original(sandbox, SEED, json.loads((run_dir / "baseline.json").read_text()), keys)
