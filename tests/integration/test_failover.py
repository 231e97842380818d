"""A source master fails over (CLUSTER FAILOVER on its replica) in the middle of the migration: no key is lost."""

from __future__ import annotations

import threading
import time

import pytest

from runbook_lib import nodes
from runbook_lib.config import Migration
from runbook_lib.connection import node_client
from runbook_lib.journal import Journal
from runbook_lib.migrate import migrate
from runbook_lib.topology import observe
from runbook_lib.validate import key_count
from tests.conftest import start_sandbox

pytestmark = pytest.mark.integration
PORT = 7250
SEED = f"127.0.0.1:{PORT}"
NEW = f"127.0.0.1:{PORT + 6}"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("failover") / "sandbox", PORT, 20000)
    yield sb
    sb.down()


def test_source_failover_mid_migration_loses_nothing(sandbox, tmp_path):
    creds = sandbox.credentials()
    journal = Journal(tmp_path / "journal.jsonl")
    nodes.add_masters(SEED, creds, [NEW], journal, apply=True)
    topo = observe(SEED, creds)
    keys = key_count(topo, creds)
    source = topo.by_address(SEED)
    replica = topo.replicas_of(source.id)[0]

    def fail_over_when_migrating() -> None:
        deadline = time.time() + 30
        while time.time() < deadline and sum(e["event"] == "batch_end" for e in journal.entries()) < 3:
            time.sleep(0.05)
        node_client(replica.address, creds).execute_command("CLUSTER", "FAILOVER")

    trigger = threading.Thread(target=fail_over_when_migrating)
    trigger.start()
    settings = Migration(slots_per_batch=128, pause_between_batches_s=0.3, convergence_timeout_s=60)
    plan, batches = migrate(topo, creds, [NEW], settings, journal, progress=False)
    trigger.join()

    assert sum(b.slots for b in batches) == 4096
    events = [e["event"] for e in journal.entries()]
    assert "topology_changed" in events, "the failover happened after the migration; the test proved nothing"
    after = observe(SEED, creds)
    assert not after.by_address(SEED).is_master, "the old source should now be a replica"
    assert after.by_address(replica.address).is_master
    owned = after.slots_by_master()
    assert sorted(len(owned[m.id]) for m in after.masters()) == [4096] * 4
    assert after.open_slots() == [] and after.uncovered() == []
    assert key_count(after, creds) == keys
