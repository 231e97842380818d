"""Rollback on a real sandbox after a whole `runbook run`: from the notebook (90_rollback) it moves the slots under the
same pace and watchers as `runbook rollback`, and after an original master failed over it returns each slot to its
shard, now served by the promoted replica.

One sandbox for the module; the tests run in order and each leaves the cluster as the next one expects."""

from __future__ import annotations

import json

import pytest

from runbook_lib.cluster.topology import observe, parse_ranges
from runbook_lib.sections.nodes import wait_replica_synced
from runbook_lib.watch import watchers
from tests.conftest import module_sandbox, port_block, run_expansion
from tests.integration.faults import assert_original, assert_sound, cli, data_snapshot, params_variant
from tests.integration.test_recovery import kill, restart, wait_caught_up, wait_promoted

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"


sandbox = module_sandbox(PORT, 2000)


def events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]


def expanded(sandbox, runbook_bin: str, name: str):
    proc, run_dir = run_expansion(sandbox, runbook_bin, name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, json.loads((run_dir / "baseline.json").read_text())


def test_the_notebook_rollback_moves_slots_under_the_pace_and_watchers(sandbox, runbook_bin):
    run_dir, baseline = expanded(sandbox, runbook_bin, "notebook")
    params = params_variant(sandbox, "notebook", warmup_slot=False)
    back = cli("run", "--params", str(params), "--only", "90_rollback", "--out", str(run_dir))
    assert back.returncode == 0, back.stdout + back.stderr
    after = events(run_dir)
    start = max(i for i, e in enumerate(after) if e["event"] == "rollback_start")
    assert after[start]["moves"] >= 4096
    assert [e for e in after[start:] if e["event"] in ("gate", "pace")], "the rollback's batches went through the pace"
    executed = (run_dir / "90_rollback.ipynb").read_text()
    assert "watching: sampler started, probe started" in executed, "the notebook's rollback started the watchers"
    assert watchers.running(run_dir) == {}, "and stopped them"
    assert_original(sandbox, SEED, baseline, baseline["keys"])


def test_rollback_after_an_original_master_failed_over_returns_the_slots_to_its_shard(sandbox, runbook_bin):
    """The old master comes back as its promoted replica's replica (while it is down the gates wait: a node is down,
    and its shard has no second copy)."""
    run_dir, baseline = expanded(sandbox, runbook_bin, "failover")
    creds = sandbox.credentials()
    victim = next(m for m in baseline["masters"] if m["address"] != SEED)
    heir = victim["replicas"][0]
    before = data_snapshot(SEED, creds)
    wait_caught_up(creds, victim["address"], heir)
    kill(sandbox, victim["address"])
    wait_promoted(creds, heir)
    restart(sandbox, victim["address"], creds)
    heir_id = observe(SEED, creds).by_address(heir).id
    wait_replica_synced(SEED, creds, victim["address"], heir_id, timeout=60)

    params = params_variant(sandbox, "failover", warmup_slot=False)
    back = cli("rollback", "--params", str(params), "--run-dir", str(run_dir))
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"slots of {victim['address']}: {len(parse_ranges(victim['slots']))} slots, as before, on {heir}" \
        in back.stdout, back.stdout
    topo = observe(SEED, creds)
    owners = topo.owners()
    for m in baseline["masters"]:
        shard = heir_id if m is victim else m["id"]
        assert {owners[s] for s in parse_ranges(m["slots"])} == {shard}, m["address"]
    assert topo.by_address(victim["address"]).master_id == heir_id
    assert {len(view.entries) for view in topo.views.values()} == {6}, "the new nodes are gone from every view"
    assert watchers.running(run_dir) == {}
    assert_sound(SEED, creds, before, masters=3)
