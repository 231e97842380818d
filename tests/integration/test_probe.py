"""The traffic probe on a real sandbox: redis-py's ASK crash reproduced and worked around, no error from the patched
workers while slots move, a deleted key reported as lost, and workers (patched and stock) that outlive the process
that started them. Stock-client failures and stalls timed from the schedule: test_traffic_accounting.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.topology import cluster_info, read_view
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_client import AskSafeCluster, ask_safe_client
from tests.conftest import module_sandbox, port_block

pytestmark = pytest.mark.integration
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
MASTERS = [f"127.0.0.1:{PORT + i}" for i in range(3)]


sandbox = module_sandbox(PORT, 1000, replicas=0, new_masters=2)


@pytest.fixture(scope="module")
def new_masters(sandbox) -> dict[str, str]:
    """Both new masters met at once (a fresh master needs about cluster-node-timeout to report cluster_state:ok);
    address -> node id. They own no slot, so no client learns of them from CLUSTER SLOTS."""
    creds = sandbox.credentials()
    new = [f"127.0.0.1:{PORT + 3}", f"127.0.0.1:{PORT + 4}"]
    for address in new:
        host, port = address.split(":")
        node_client(SEED, creds).execute_command("CLUSTER MEET", host, int(port))
    members = MASTERS + new
    deadline = time.time() + 30
    while True:
        views = [read_view(node_client(a, creds), a) for a in members]
        known = all(sum(e.address in new and "handshake" not in e.flags for e in v.entries.values()) == 2
                    for v in views)
        if known and all(cluster_info(node_client(a, creds)).get("cluster_state") == "ok" for a in new):
            return {v.address: v.myself.id for v in views[-2:]}
        assert time.time() < deadline, "the new masters did not join"
        time.sleep(0.1)


class SlotMover:
    """The slot protocol by hand (docs/design.md, The slot protocol), so that slots can be held open while clients
    run."""

    def __init__(self, sb, target: str, target_id: str) -> None:
        self.creds = sb.credentials()
        self.target, self.target_id = target, target_id
        view = read_view(node_client(SEED, self.creds), SEED)
        self.owners = view.owners()
        self.address = {e.id: e.address for e in view.entries.values()}
        self.clients = {a: node_client(a, self.creds) for a in MASTERS + [target]}

    def source(self, slot: int) -> str:
        return self.owners[slot]

    def open(self, slot: int) -> None:
        self.clients[self.target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.source(slot))
        self.clients[self.address[self.source(slot)]].execute_command("CLUSTER SETSLOT", slot, "MIGRATING",
                                                                       self.target_id)

    def migrate(self, slot: int, keys: list | None = None) -> None:
        src = self.clients[self.address[self.source(slot)]]
        host, port = self.target.split(":")
        while True:
            batch = keys or src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100)
            if not batch:
                return
            src.execute_command("MIGRATE", host, int(port), "", 0, 5000, "AUTH", self.creds.password, "KEYS", *batch)
            if keys:
                return

    def close(self, slot: int) -> None:
        self.migrate(slot)
        for address in [self.target] + MASTERS:
            self.clients[address].execute_command("CLUSTER SETSLOT", slot, "NODE", self.target_id)


def test_redis_py_fails_on_ask_to_an_unknown_node_and_the_probe_client_follows_it(sandbox, new_masters):
    creds = sandbox.credentials()
    new = f"127.0.0.1:{PORT + 3}"
    mover = SlotMover(sandbox, new, new_masters[new])
    plain = cluster_client([SEED], creds)
    safe = ask_safe_client([SEED], creds)
    key = "ask:probe:moved"
    slot = key_slot(key.encode())
    other = f"{{{key}}}:new"
    plain.set(key, "before")
    assert plain.get_node(node_name=new) is None and safe.get_node(host="127.0.0.1", port=PORT + 3) is None
    mover.open(slot)
    try:
        mover.migrate(slot, [key])
        with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'redis_connection'"):
            plain.get(key)
        plain.nodes_manager.initialize()
        assert plain.get_node(node_name=new) is None, "a slot-less master is not in CLUSTER SLOTS: no refresh helps"
        assert safe.get(key) == "before"
        assert safe.set(other, "written during the ASK window")
        assert safe.ask_unknown_targets >= 1
    finally:
        mover.close(slot)
    assert cluster_client([SEED], creds).get(other) == "written during the ASK window"
    assert isinstance(safe, AskSafeCluster)


def test_probe_has_no_error_and_loses_nothing_while_many_slots_are_open(sandbox, new_masters, tmp_path):
    """Like a batch-pipelined mover: the slots of every key written so far are opened at once and their keys moved
    to a master no client knows, so the probe's reads and writes are ASK-redirected there (docs/design.md, The slot
    protocol). Patched workers only: stock ones fail here by design (test_traffic_accounting.py counts them)."""
    creds = sandbox.credentials()
    new = f"127.0.0.1:{PORT + 4}"
    mover = SlotMover(sandbox, new, new_masters[new])
    probe = TrafficProbe([SEED], creds, tmp_path, rate=400, processes=2, stock_processes=0)
    probe.start()
    try:
        time.sleep(1.0)
        written = probe.records()
        old = {e for e, a in mover.address.items() if a in MASTERS}
        slots = sorted({key_slot(k.encode()) for k in written.loc[written["op"] == "set", "key"]}
                       & {s for s, owner in enumerate(mover.owners) if owner in old})
        assert len(slots) > 50
        for slot in slots:
            mover.open(slot)
        for slot in slots:
            mover.migrate(slot)
        time.sleep(1.5)
        for slot in slots:
            mover.close(slot)
        time.sleep(0.5)
    finally:
        probe.stop()
    summary = probe.verify()
    assert summary.errors == 0, summary.errors_by_kind
    assert summary.lost_writes == [] and summary.wrong_writes == [] and summary.lost_reads == 0
    assert summary.acknowledged_writes == summary.verified_writes > 300
    assert summary.ask_unknown_node_handled >= 1, "the probe never met the redis-py#4015 situation"
    assert {c.name: c.status for c in summary.checks()} == {
        "probe: no failed request": "pass", "probe: no lost write": "pass", "probe: stock clients measured": "warn",
        "probe: workers stopped cleanly": "pass"}
    assert set(probe.records()["client"]) == {"patched"}


def test_probe_outlives_its_starter_is_stopped_from_another_process_and_reports_a_deleted_key(sandbox, tmp_path):
    start = ("import sys; from runbook_lib.sandbox import Sandbox; from runbook_lib.watch.probe import TrafficProbe; "
             "TrafficProbe([sys.argv[1]], Sandbox(sys.argv[2]).credentials(), sys.argv[3], rate=200).start()")
    stop = "import sys; from runbook_lib.watch.probe import TrafficProbe; print(TrafficProbe.attach(sys.argv[1]).stop())"
    subprocess.run([sys.executable, "-c", start, SEED, str(sandbox.root), str(tmp_path)], check=True, timeout=30)
    probe = TrafficProbe.attach(tmp_path, sandbox.credentials())
    assert len(probe.alive()) == 3, "the workers (two patched, one stock) should outlive the process that started them"
    time.sleep(1.5)
    stopped = subprocess.run([sys.executable, "-c", stop, str(tmp_path)], check=True, timeout=30,
                             capture_output=True, text=True)
    assert stopped.stdout.strip() == "[]", "every worker should stop on request, without a signal"
    assert probe.alive() == []
    records = probe.records()
    assert {"set", "get"} <= set(records["op"]) and (records["outcome"] == "ok").all()
    assert set(records["client"]) == {"patched", "stock"}
    assert set(MASTERS) <= set(records["node"]) <= set(MASTERS) | {f"127.0.0.1:{PORT + i}" for i in (3, 4)}, \
        "every request routed to a master (an earlier test gave a few slots to the new ones)"
    victim = records.loc[records["op"] == "set", "key"].iloc[len(records) // 4]
    assert cluster_client([SEED], sandbox.credentials()).delete(victim) == 1
    summary = probe.verify()
    assert summary.lost_writes == [victim]
    assert summary.errors == 0 and summary.wrong_writes == []
    assert summary.verified_writes == summary.acknowledged_writes - 1
    assert {c.name: c.status for c in summary.checks()}["probe: no lost write"] == "fail"
    assert (tmp_path / "probe" / "summary.json").exists()
    assert probe.cleanup() == summary.writes - 1


def test_a_pause_of_every_master_shows_as_late_requests_while_it_lasts(sandbox, tmp_path):
    """CLIENT PAUSE on every master blocks every worker: no record is written until the pause ends, but the
    requests the workers owe are read as late pseudo-samples meanwhile, and they are gone once the workers caught up."""
    creds = sandbox.credentials()
    probe = TrafficProbe([SEED], creds, tmp_path, rate=200, processes=2, stock_processes=0, timeout_s=5.0)
    probe.start()
    try:
        time.sleep(1.0)
        _, before = probe.outstanding(time.time())
        assert len(before[before > 200]) == 0, "a probe that keeps up owes nothing late"
        paused_at = time.time()
        for master in MASTERS:
            node_client(master, creds).execute_command("CLIENT", "PAUSE", 2500, "ALL")
        time.sleep(1.5)
        now = time.time()
        ts, late = probe.outstanding(now)
        recorded = probe.records(since=paused_at)
        assert len(recorded[recorded["latency_ms"] > 1000]) == 0, "nothing that waited on the pause is recorded yet"
        stuck = late > 1000
        assert stuck.sum() >= 2 * 50, f"each worker owes about 100 sends over a second late: {stuck.sum()}"
        assert late.max() >= 1300 and ts.min() >= paused_at - 0.5
        deadline = time.time() + 15
        while time.time() < deadline:
            _, after = probe.outstanding(time.time())
            if len(after[after > 200]) == 0:
                break
            time.sleep(0.1)
        assert len(after[after > 200]) == 0, "the late requests are gone once the workers caught up"
        assert len(probe.records(since=paused_at).query("latency_ms > 1000")) >= 100, "and recorded, as late"
    finally:
        probe.stop()
