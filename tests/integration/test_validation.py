"""Validation that holds under live traffic: a writer adding keys during the move passes; a key of a slot the run
handed over, left on its old source, fails (no key stranded: COUNTKEYSINSLOT of every slot on every master)."""

from __future__ import annotations

import threading

import pytest

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import migrate
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Migration
from runbook_lib.sections import nodes, preflight, validate
from tests.conftest import port_block, start_sandbox
from tests.integration.faults import tag_for_slot

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"


def test_live_writer_passes_and_a_stranded_key_fails(tmp_path):
    sb = start_sandbox(tmp_path / "sandbox", PORT, 5000)
    try:
        creds = sb.credentials()
        journal = Journal(tmp_path / "journal.jsonl")
        new = f"127.0.0.1:{PORT + 6}"
        nodes.add_masters(SEED, creds, [new], journal, apply=True)
        nodes.add_replicas(SEED, creds, [(f"127.0.0.1:{PORT + 7}", new)], journal, apply=True)
        before = preflight.baseline(observe(SEED, creds), creds, [])
        app = cluster_client([SEED], creds)
        done = threading.Event()

        def writer() -> None:
            for i in range(10_000):
                while True:
                    try:
                        app.set(f"app:{i}", i)
                        break
                    except Exception:
                        continue
            done.set()

        thread = threading.Thread(target=writer)
        thread.start()
        migrate(observe(SEED, creds), creds, [new], Migration(preset="fast"), journal, progress=False)
        thread.join(timeout=300)
        assert done.is_set(), "the writer did not finish"
        topo = observe(SEED, creds)
        assert validate.keys_where_they_belong(topo, creds).status == "pass"
        missing = [i for i in range(10_000) if app.get(f"app:{i}") != str(i)]
        assert not missing, f"{len(missing)} acknowledged writes missing: {missing[:5]}"
        live = validate.key_count_change(topo, creds, before, quiet=False)
        assert live.status == "pass" and "+10000" in live.detail, live
        assert validate.key_count_change(topo, creds, before, quiet=True).status == "fail"

        handed = next(e for e in journal.entries() if e["event"] == "slots_assigned")
        slot, old_source = handed["slots"][0], topo.nodes[handed["source"]]
        owner = topo.nodes[topo.owners()[slot]]
        assert owner.id == handed["target"] != old_source.id
        planted = node_client(old_source.address, creds)
        planted.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner.id)
        pipe = planted.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.set(f"{{{tag_for_slot(slot)}}}:planted", "x")
        pipe.execute()
        planted.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        stranded = validate.keys_where_they_belong(observe(SEED, creds), creds)
        assert stranded.status == "fail" and f"slot {slot}: 1 keys on {old_source.address}" in stranded.detail, \
            "a key of a slot this run handed over, left on its old source, fails validation"
        app.close()
    finally:
        sb.down()
