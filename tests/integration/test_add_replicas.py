"""25_add_replicas on a real sandbox: a params `replica` that already serves another master is refused before
anything changes, naming that master; a replica already attached to its master is left as it is."""

from __future__ import annotations

import pytest

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import observe
from runbook_lib.exceptions import BadInput
from runbook_lib.sections import nodes
from tests.conftest import cluster_layout, module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
NEW, NEW_REPLICA = f"127.0.0.1:{PORT + 6}", f"127.0.0.1:{PORT + 7}"
PORTS = list(range(PORT, PORT + 8))


sandbox = module_sandbox(PORT, 0)


def test_a_replica_of_another_master_is_refused_before_anything_changes(sandbox, tmp_path):
    creds = sandbox.credentials()
    journal = Journal(tmp_path / "journal.jsonl")
    nodes.add_masters(SEED, creds, [NEW], journal, apply=True)
    topo = observe(SEED, creds)
    owner = topo.by_address(SEED)
    taken = topo.replicas_of(owner.id)[0].address
    before = cluster_layout(PORTS, creds)
    written = len(list(journal.entries()))

    for apply in (False, True):
        with pytest.raises(BadInput) as refused:
            nodes.add_replicas(SEED, creds, [(NEW_REPLICA, NEW), (taken, NEW)], journal, apply=apply)
        message = str(refused.value)
        assert f"{taken} is already a replica of {SEED} ({owner.id[:8]})" in message, message
        assert f"replica of {NEW}" in message and "nothing was changed" in message, message

    assert cluster_layout(PORTS, creds) == before, "the valid pair before the refused one was not applied either"
    assert observe(SEED, creds).by_address(NEW_REPLICA) is None
    assert len(list(journal.entries())) == written, "nothing journaled: nothing changed"

    attached = nodes.add_replicas(SEED, creds, [(NEW_REPLICA, NEW)], journal, apply=True)
    assert any(a.startswith("CLUSTER REPLICATE") for a in attached.actions), attached
    topo = observe(SEED, creds)
    assert topo.by_address(NEW_REPLICA).master_id == topo.by_address(NEW).id
    assert topo.by_address(taken).master_id == owner.id, "the other master keeps its replica"

    again = nodes.add_replicas(SEED, creds, [(NEW_REPLICA, NEW)], journal, apply=True)
    assert again.actions == [] and any("already replicates" in n for n in again.notes), again
