"""Backups with two replicas per shard: every in-sync replica saves and is copied, no master forks, and the dry run
lists the same nodes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runbook_lib.cluster.topology import observe
from runbook_lib.config import Backup
from runbook_lib.sections.backup import backup, checks, restore_instructions, targets
from tests.conftest import port_block, start_sandbox

pytestmark = pytest.mark.integration
PORT = port_block(11)
KEYS = 3000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("backup-replicas") / "sandbox", PORT, KEYS, replicas=2)
    yield observe(f"127.0.0.1:{PORT}", sb.credentials()), sb.credentials()
    sb.down()


def test_every_replica_saves_and_no_master_forks(cluster, tmp_path):
    topo, creds = cluster
    records = backup(topo, creds, tmp_path, Backup(timeout_s=60), progress=False)
    masters = topo.masters()
    expected = {(m.address, r.address) for m in masters for r in topo.replicas_of(m.id)}
    assert len(expected) == 6
    assert {(r.shard_master, r.node) for r in records} == expected
    assert all(r.role == "replica" and r.status == "ok" and r.lastsave_after > r.lastsave_before for r in records)
    assert all(Path(r.copied_to).stat().st_size == r.bytes for r in records)
    per_shard = {}
    for r in records:
        per_shard.setdefault(r.shard_master, set()).add(r.keys)
    assert all(len(counts) == 1 for counts in per_shard.values()), "replicas of one shard saved different data"
    assert sum(next(iter(c)) for c in per_shard.values()) == KEYS
    assert len(json.loads((tmp_path / "backups.json").read_text())) == 6
    assert len({c.name for c in checks(records)}) == 6
    assert all(r.copied_to in restore_instructions(records) for r in records)
    assert {(t["shard_master"], t["node"]) for t in targets(topo, creds)} == expected
