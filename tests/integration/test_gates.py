"""A gate set below the live value pauses the migration between batches; `runbook resume` then finishes it."""

from __future__ import annotations

import json

import pytest

from runbook_lib.cluster.topology import observe
from runbook_lib.sections.validate import key_count
from runbook_lib.watch.probe import TrafficProbe
from tests.conftest import module_sandbox, port_block
from tests.integration.faults import cli, params_variant

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"


sandbox = module_sandbox(PORT, 2000)


def test_failing_gate_pauses_with_a_clear_message_and_resume_continues(sandbox, tmp_path):
    creds = sandbox.credentials()
    keys = key_count(observe(SEED, creds), creds)
    strict = params_variant(sandbox, "strict", gates={"avg_latency_ms": 0.001, "pause_after_s": 3.0, "baseline_s": 1.0})
    run_dir = tmp_path / "run"
    paused = cli("run", "--params", str(strict), "--out", str(run_dir))
    assert paused.returncode == 1, paused.stdout + paused.stderr
    assert "40_migrate: fail" in paused.stdout and "average latency" in paused.stdout and "kept failing" in paused.stdout
    assert "runbook resume" in paused.stdout
    decisions = [json.loads(l) for l in (run_dir / "journal.jsonl").read_text().splitlines()]
    actions = [d["action"] for d in decisions if d["event"] == "gate"]
    assert "slow down" in actions and actions[-1] == "pause"
    topo = observe(SEED, creds)
    assert topo.open_slots() == [], "a paused run leaves no slot open"

    resumed = cli("resume", "--params", str(sandbox.root / "params.yaml"), "--run-dir", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    TrafficProbe.attach(run_dir, creds).cleanup()
    topo = observe(SEED, creds)
    owned = topo.slots_by_master()
    assert sorted(len(owned[m.id]) for m in topo.masters()) == [4096] * 4
    assert key_count(topo, creds) == keys
