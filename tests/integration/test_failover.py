"""A source master fails over (CLUSTER FAILOVER on its replica) in the middle of the migration: no key is lost."""

from __future__ import annotations

import threading
import time

import pytest

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import migrate
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Migration
from runbook_lib.sections import nodes
from runbook_lib.sections.validate import key_count
from tests.conftest import module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW = f"127.0.0.1:{PORT + 6}"
NEW_REPLICA = f"127.0.0.1:{PORT + 7}"


sandbox = module_sandbox(PORT, 20000)


class FailOverMidBatch:
    """Throttle-shaped hook: before the `at`-th group of slots, fail the source over and wait until its replica is
    master, so the failover lands mid-migration every time instead of racing it. The test moves every slot in one
    batch, four in flight, so each source's worker still has many groups to go: the mover cannot learn of the
    failover from its check between batches, it must meet it mid-slot."""

    def __init__(self, settings: Migration, creds, source: str, replica: str, at: int = 12) -> None:
        self.settings, self.creds, self.source, self.replica, self.at = settings, creds, source, replica, at
        self.groups = 0
        self.done = False
        self._lock = threading.Lock()

    def before_batch(self, batch: int) -> Migration:
        return self.settings

    def before_group(self) -> Migration:
        with self._lock:
            self.groups += 1
            if self.groups != self.at:
                return self.settings
            deadline = time.time() + 60
            while time.time() < deadline and not self.done:
                node_client(self.replica, self.creds).execute_command("CLUSTER", "FAILOVER")
                settle = time.time() + 10
                while time.time() < settle and not self._switched():
                    time.sleep(0.1)
                self.done = self._switched()
            assert self.done, f"{self.replica} did not take over from {self.source} within 60 s"
        return self.settings

    def end(self) -> None:
        """Nothing to stop."""

    def _switched(self) -> bool:
        replica_role = node_client(self.replica, self.creds).execute_command("ROLE")[0]
        source_role = node_client(self.source, self.creds).execute_command("ROLE")[0]
        return replica_role in (b"master", "master") and source_role in (b"slave", "slave")


def test_source_failover_mid_migration_loses_nothing(sandbox, tmp_path):
    creds = sandbox.credentials()
    journal = Journal(tmp_path / "journal.jsonl")
    nodes.add_masters(SEED, creds, [NEW], journal, apply=True)
    nodes.add_replicas(SEED, creds, [(NEW_REPLICA, NEW)], journal, apply=True)
    topo = observe(SEED, creds)
    keys = key_count(topo, creds)
    source = topo.by_address(SEED)
    replica = topo.replicas_of(source.id)[0]

    settings = Migration(preset="fast", slots_per_batch=4096, slots_in_flight=4, convergence_timeout_s=60)
    hook = FailOverMidBatch(settings, creds, SEED, replica.address)
    plan, batches = migrate(topo, creds, [NEW], settings, journal, progress=False, throttle=hook)

    assert hook.done and hook.groups > hook.at, "the failover did not land mid-migration"
    assert sum(b.slots for b in batches) == 4096
    events = [e["event"] for e in journal.entries()]
    assert "topology_changed" in events, "the mover never met the failover; the test proved nothing"
    after = observe(SEED, creds)
    assert not after.by_address(SEED).is_master, "the old source should now be a replica"
    assert after.by_address(replica.address).is_master
    owned = after.slots_by_master()
    assert sorted(len(owned[m.id]) for m in after.masters()) == [4096] * 4
    assert after.open_slots() == [] and after.uncovered() == []
    assert key_count(after, creds) == keys
