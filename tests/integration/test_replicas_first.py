"""A second copy first: after 20_add_masters the new master may not receive a slot; after 25_add_replicas it may."""

from __future__ import annotations

import json

import pytest

from runbook_lib.cluster.replicas import live_link_status, require_replicas, unreplicated_targets
from runbook_lib.cluster.topology import observe
from runbook_lib.exceptions import CheckFailed
from tests.conftest import module_sandbox, port_block
from tests.integration.faults import cli

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW, NEW_REPLICA = f"127.0.0.1:{PORT + 6}", f"127.0.0.1:{PORT + 7}"


sandbox = module_sandbox(PORT, 2000)


def test_no_slot_to_a_new_master_until_its_replica_is_in_sync(sandbox, tmp_path):
    creds = sandbox.credentials()
    params, run_dir = str(sandbox.root / "params.yaml"), tmp_path / "run"

    added = cli("run", "--params", params, "--out", str(run_dir), "--only", "20_add_masters")
    assert added.returncode == 0, added.stdout + added.stderr
    topo = observe(SEED, creds)
    new = topo.by_address(NEW)
    assert new is not None and new.is_master and not topo.replicas_of(new.id)
    assert unreplicated_targets(topo, [new.id], live_link_status(creds)) == [NEW]
    with pytest.raises(CheckFailed) as refused:
        require_replicas(topo, creds, [new.id], allow=False)
    assert f"{NEW}: no replica attached" in str(refused.value) and "25_add_replicas" in str(refused.value)
    assert [c.status for c in require_replicas(topo, creds, [new.id], allow=True)] == ["warn"]

    attached = cli("run", "--params", params, "--out", str(run_dir), "--only", "25_add_replicas")
    assert attached.returncode == 0, attached.stdout + attached.stderr
    assert "25_add_replicas: pass" in attached.stdout
    topo = observe(SEED, creds)
    assert [r.address for r in topo.replicas_of(new.id)] == [NEW_REPLICA]
    assert unreplicated_targets(topo, [new.id], live_link_status(creds)) == []
    checks = require_replicas(topo, creds, [new.id], allow=False)
    assert [c.status for c in checks] == ["pass"] and NEW_REPLICA in checks[0].detail
    assert not topo.slots_by_master()[new.id], "the new master must still be empty: the replica comes first"
    events = [json.loads(line)["event"] for line in (run_dir / "journal.jsonl").read_text().splitlines()]
    assert "replica_attach" in events and not [e for e in events if e.startswith("slot")]
