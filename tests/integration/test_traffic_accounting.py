"""The probe's accounting on a real sandbox (docs/design.md, Proof of zero downtime): a stall of one master is timed
from each request's scheduled send time (no coordinated omission) and shows as downtime of that master; a stock
redis-py worker's failed requests (redis-py#4015, an ASK to a master it has never seen) are counted as failed
requests, by kind and client, while the patched workers have none."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.topology import read_view
from runbook_lib.sections.nodes import add_masters
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import longest_gap_per_node, longest_unanswered_per_node
from tests.conftest import module_sandbox, port_block

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]
"""Exclusive: it times stalls and judges latency, so no other test may load the machine meanwhile."""
PORT = port_block()
SEED = f"127.0.0.1:{PORT}"
MASTERS = [f"127.0.0.1:{PORT + i}" for i in range(3)]
NEW = f"127.0.0.1:{PORT + 3}"
RATE = 200.0
PAUSE_MS = 300


sandbox = module_sandbox(PORT, 2000, replicas=0, new_masters=1)


def test_a_paused_master_shows_as_many_slow_samples_and_as_its_own_downtime(sandbox, tmp_path):
    """CLIENT PAUSE 300 ALL on one master while the probe sends 200 requests/s (two patched workers, one stock).

    Each worker waits on its first request to the paused master, so the requests it should have sent meanwhile go
    out late; timed from their scheduled send times, they are many slow samples (about T*R/1000 = 60, minus the
    time each worker took to reach the paused master), where a closed-loop probe (service_ms) sees one per worker.
    The latencies fall off from about 300 ms as the schedule moves on, so only the first ~50 ms of the pause give
    samples of 250 ms or more."""
    creds = sandbox.credentials()
    paused = MASTERS[1]
    pauser = node_client(paused, creds)
    pauser.ping()
    probe = TrafficProbe([SEED], creds, tmp_path, rate=RATE)
    probe.start()
    try:
        time.sleep(1.5)
        at = time.time()
        pauser.execute_command("CLIENT PAUSE", PAUSE_MS, "ALL")
        time.sleep(1.5)
    finally:
        probe.stop()
    records = probe.records()
    assert set(records["client"]) == {"patched", "stock"} and set(records["node"]) == set(MASTERS)
    assert (records["outcome"] == "ok").all(), records[records["outcome"] != "ok"].head()
    late = records[(records["ts"] >= at - 0.05) & (records["ts"] < at + PAUSE_MS / 1000)]
    slow, closed_loop = (records["latency_ms"] >= 50).sum(), (records["service_ms"] >= 50).sum()
    print(f"\n{len(late)} requests scheduled during the pause; latency >= 50 ms: {slow}, >= 250 ms: "
          f"{(records['latency_ms'] >= 250).sum()}, max {records['latency_ms'].max():.0f} ms; "
          f"service >= 50 ms: {closed_loop}")
    assert len(late) >= 0.8 * RATE * PAUSE_MS / 1000, "the backlog was sent, not dropped"
    assert slow >= 25, f"a {PAUSE_MS} ms stall at {RATE:g}/s should give dozens of slow samples, got {slow}"
    assert closed_loop <= 6, "timed from the actual send, the stall is about one slow request per worker"
    assert records["latency_ms"].max() >= 200
    assert records.loc[records["latency_ms"] >= 50, "ts"].between(at - 0.05, at + PAUSE_MS / 1000 + 0.1).all()

    gaps, unanswered = longest_gap_per_node(records), longest_unanswered_per_node(records)
    gap, start = gaps[paused]
    assert gap >= 0.25 and at - 0.1 <= start <= at + 0.1, gaps
    assert unanswered[paused][0] >= 0.2, unanswered
    others = max(unanswered[m][0] for m in MASTERS if m != paused)
    assert others < unanswered[paused][0] / 2, f"only the paused master left requests unanswered: {unanswered}"

    summary = probe.verify()
    assert summary.errors == 0 and summary.lost_writes == [] and summary.acknowledged_writes > 200
    assert summary.longest_gap_by_node[paused][0] == pytest.approx(gap)
    assert summary.max_ms >= 200 and summary.ops_by_client["stock"] > 100
    assert probe.cleanup() == summary.acknowledged_writes


class OpenSlots:
    """Slots held open toward the new master by hand (docs/design.md, The slot protocol): IMPORTING on it, MIGRATING
    on the source, keys moved with MIGRATE so that their reads are ASK-redirected; close() moves the rest and hands
    them over."""

    def __init__(self, creds, target: str) -> None:
        self.creds, self.target = creds, target
        view = read_view(node_client(SEED, creds), SEED)
        self.owners = view.owners()
        self.address = {e.id: e.address for e in view.entries.values()}
        self.target_id = next(e.id for e in view.entries.values() if e.address == target)
        self.clients = {a: node_client(a, creds) for a in MASTERS + [target]}

    def source(self, slot: int):
        return self.clients[self.address[self.owners[slot]]]

    def open(self, slot: int) -> None:
        self.clients[self.target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.owners[slot])
        self.source(slot).execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.target_id)

    def migrate(self, slot: int) -> None:
        host, port = self.target.split(":")
        while keys := self.source(slot).execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            self.source(slot).execute_command("MIGRATE", host, int(port), "", 0, 5000, "AUTH", self.creds.password,
                                              "KEYS", *keys)

    def close(self, slot: int) -> None:
        self.migrate(slot)
        for address in [self.target] + MASTERS:
            self.clients[address].execute_command("CLUSTER SETSLOT", slot, "NODE", self.target_id)


def test_stock_client_failures_count_and_the_patched_workers_have_none(sandbox, tmp_path):
    """A new master joined with CLUSTER MEET owns no slot, so no client has seen it; 200 slots holding probe keys are
    opened toward it at once and their keys moved. Stock redis-py fails each ASK there (AttributeError, kind
    ask-unknown-node); the patched workers follow it. Afterwards the slots are handed over and the keys deleted."""
    creds = sandbox.credentials()
    report = add_masters(SEED, creds, [NEW], Journal(tmp_path / "journal.jsonl"), apply=True)
    assert report.actions, "the new master was met"
    probe = TrafficProbe([SEED], creds, tmp_path, rate=300, processes=2, stock_processes=1)
    probe.start()
    slots = OpenSlots(creds, NEW)
    opened = []
    try:
        time.sleep(2.0)
        written = probe.records()
        keys = written.loc[(written["op"] == "set") & (written["outcome"] == "ok"), "key"]
        opened = sorted({key_slot(k.encode()) for k in keys})[:200]
        assert len(opened) >= 150
        for slot in opened:
            slots.open(slot)
        for slot in opened:
            slots.migrate(slot)
        time.sleep(1.5)
    finally:
        for slot in opened:
            slots.close(slot)
        time.sleep(0.5)
        probe.stop()
    summary = probe.verify()
    stock = summary.errors_by_client.get("stock", {})
    print(f"\nfailed requests by client: {summary.errors_by_client}; ASKs to the unknown master handled by the "
          f"patched workers: {summary.ask_unknown_node_handled}")
    assert summary.errors_by_client["patched"] == {}, "the patched workers follow an ASK to an unknown master"
    assert stock.get("ask-unknown-node", 0) > 0, summary.errors_by_client
    assert summary.errors == summary.stock_errors == sum(stock.values()), "stock failures are failed requests"
    assert summary.errors_by_kind.get("ask-unknown-node") == stock["ask-unknown-node"]
    assert summary.ask_unknown_node_handled >= 1
    assert summary.lost_writes == [] and summary.wrong_writes == [] and summary.lost_reads == 0
    checks = {c.name: c for c in summary.checks()}
    assert checks["probe: no failed request"].status == "fail"
    assert "stock clients:" in checks["probe: no failed request"].detail
    failed = probe.records().query("outcome == 'ask-unknown-node'")
    assert set(failed["client"]) == {"stock"} and failed["error"].str.contains("redis_connection").all()
    assert set(failed["node"]) <= set(MASTERS), "routed to the slot's old owner, redirected to the unknown master"
    assert probe.cleanup() == summary.acknowledged_writes
    view = read_view(node_client(SEED, creds), SEED)
    assert all(not e.migrating and not e.importing for e in view.entries.values())
    assert {view.owners()[s] for s in opened} == {slots.target_id}


def test_the_verdict_fails_a_paused_master_and_a_slow_window_and_not_a_quiet_one(sandbox, tmp_path):
    """The acceptance checks on real probe records: a 300 ms CLIENT PAUSE in each second of a 3 s slots-moving window
    fails the latency verdict and the per-master downtime check (limit 250 ms); a quiet window does not.

    The verdict resamples whole seconds (a stall is a run of slow samples, not independent ones), so a single stall in
    a 1.5 s window is one event in two blocks and honestly inconclusive; a stall in every second is sure."""
    from runbook_lib.config import Gates
    from runbook_lib.watch.acceptance import downtime, latency_evidence
    creds = sandbox.credentials()
    probe = TrafficProbe([SEED], creds, tmp_path, rate=RATE)
    probe.start()
    try:
        time.sleep(6)
        quiet = (time.time() - 2.5, time.time())
        time.sleep(0.5)
        start = time.time()
        for _ in range(3):
            node_client(MASTERS[2], creds).execute_command("CLIENT PAUSE", PAUSE_MS, "ALL")
            time.sleep(1.0)
        paused = (start, time.time())
    finally:
        probe.stop()
    records = probe.records()
    base = {"since": quiet[0] - 3.0, "ts": quiet[0]}
    gates = Gates(latency_budget_pct=10.0)
    slow, _ = latency_evidence(records, base, [paused], gates)
    assert slow.status == "fail", slow
    assert latency_evidence(records, base, [quiet], gates)[0].status != "fail"
    window = records[(records["ts"] >= paused[0] - 1) & (records["ts"] < paused[1])]
    stalled = downtime(window, probe.settings.prefix, limit_s=0.25)
    assert stalled.status == "fail" and MASTERS[2] in stalled.detail, stalled
    calm = records[(records["ts"] >= quiet[0]) & (records["ts"] < quiet[1])]
    assert downtime(calm, probe.settings.prefix, limit_s=0.25).status == "pass"
