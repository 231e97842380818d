"""Counting the applications' connections on a node (how the mover tells that clients know a new master) leaves out
the cluster's own: a source's cached MIGRATE connection to its target, the run lock's client, replication links and
the runbook's named connections. Real redis-server processes; nothing but MIGRATE and the lock reaches the target."""

from __future__ import annotations

import pytest

from runbook_lib.cluster.connection import application_connections, cluster_client, migrate_auth_args, node_client
from runbook_lib.cluster.lock import LOCK_KEY, RunLock, new_run_id
from runbook_lib.cluster.topology import observe
from tests.conftest import module_sandbox, port_block
from tests.integration.faults import fill_slot, tag_for_slot

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"


sandbox = module_sandbox(PORT, 0, new_masters=0)


def counts(topo, creds, node_ips) -> dict[str, int]:
    return {m.address: application_connections(node_client(m.address, creds), node_ips) for m in topo.masters()}


def test_migrate_connections_and_the_run_lock_are_not_applications(sandbox):
    creds = sandbox.credentials()
    topo = observe(SEED, creds)
    node_ips = {e.ip for e in topo.nodes.values()}
    source, target = topo.masters()[0], topo.masters()[1]
    slot = min(topo.slots_by_master()[source.id])
    keys = fill_slot(sandbox, SEED, slot, 20, prefix="moved")
    assert counts(topo, creds, node_ips) == {m.address: 0 for m in topo.masters()}, "no application connects yet"

    lock = RunLock(SEED, creds, new_run_id(), "test").acquire()
    try:
        src, dst = node_client(source.address, creds), node_client(target.address, creds)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target.id)
        for batch in (keys[:10], keys[10:]):
            src.execute_command("MIGRATE", target.ip, target.port, "", 0, 5000, *migrate_auth_args(creds),
                                "KEYS", *batch)
        listed = dst.execute_command("CLIENT", "LIST").decode()
        assert "cmd=restore-asking" in listed, "the source's MIGRATE keeps its connection to the target open"
        owner = topo.nodes[topo.owners()[int(src.execute_command("CLUSTER", "KEYSLOT", LOCK_KEY))]].address
        assert "name=runbook-lock" in node_client(owner, creds).execute_command("CLIENT", "LIST").decode()

        assert counts(topo, creds, node_ips) == {m.address: 0 for m in topo.masters()}, \
            "MIGRATE, the run lock and replication are the cluster's own, not applications"

        third = topo.masters()[2]
        app = cluster_client([SEED], creds)
        try:
            app.set(f"{{{tag_for_slot(min(topo.slots_by_master()[third.id]))}}}:app", "x")
            assert counts(topo, creds, node_ips)[third.address] >= 1, "an application's connection still counts"
        finally:
            app.close()
    finally:
        lock.release()
        for address in (target.address, source.address):
            node_client(address, creds).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target.id)
