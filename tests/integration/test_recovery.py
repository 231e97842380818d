"""No key stranded, whatever fails: a master killed mid-slot, stranded keys, MIGRATE timeouts, keys expiring mid-move.

Each test ends with the value-level check: every key's type, value and TTL presence read through a cluster client,
no open slot, no key on a master that does not own its slot.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan, migrate
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import misplaced_keys, observe
from runbook_lib.config import BigKeys, Migration
from runbook_lib.exceptions import MigrationError, PaceStop
from runbook_lib.sandbox import redis_binary
from runbook_lib.sections import nodes
from tests.conftest import port_block, start_sandbox
from tests.integration.faults import assert_sound, cli, data_snapshot, fill_slot, params_variant, tag_for_slot

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KILLED_PORTS = {"target": port_block(), "source": port_block()}
CLUSTER_PORT = port_block()
EXPIRING_PORT = port_block()
BATCHED_PORT = port_block()


def joined(sb, port: int, journal: Journal) -> tuple[str, str, str]:
    """The new master and its replica joined, as 20_add_masters and 25_add_replicas leave them."""
    seed, new, replica = f"127.0.0.1:{port}", f"127.0.0.1:{port + 6}", f"127.0.0.1:{port + 7}"
    creds = sb.credentials()
    nodes.add_masters(seed, creds, [new], journal, apply=True)
    nodes.add_replicas(seed, creds, [(replica, new)], journal, apply=True)
    return seed, new, replica


def wait_promoted(creds, replica: str, timeout: float = 60) -> None:
    """Wait for the cluster to promote the replica; a master that owns no slot yet is never failed over by the
    cluster (its replicas do not start an election), so after a while take over as an operator would."""
    deadline = time.time() + timeout
    takeover = time.time() + 12
    while time.time() < deadline:
        if time.time() > takeover:
            node_client(replica, creds).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            takeover = deadline
        try:
            if node_client(replica, creds).execute_command("ROLE")[0] in (b"master", "master"):
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{replica} was not promoted within {timeout:.0f}s")


def wait_caught_up(creds, master: str, replica: str, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        offset = node_client(master, creds).info("replication")["master_repl_offset"]
        if node_client(replica, creds).info("replication").get("slave_repl_offset") == offset:
            return
        time.sleep(0.1)
    raise AssertionError(f"{replica} did not catch up with {master}")


def kill(sb, address: str) -> None:
    port = int(address.rsplit(":", 1)[1])
    os.kill(sb.running_pids()[port], signal.SIGKILL)


def restart(sb, address: str, creds, timeout: float = 30) -> None:
    """Start a killed node again from its own config (it rejoins the cluster as a master without slots, or as a
    replica of the master that replaced it)."""
    port = address.rsplit(":", 1)[1]
    subprocess.run([redis_binary(), str(sb.root / port / "redis.conf")], check=True, capture_output=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if node_client(address, creds).ping():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{address} did not come back within {timeout:.0f}s")


@pytest.mark.parametrize("victim", ["target", "source"])
def test_master_killed_while_its_slot_is_open_resume_finishes_towards_the_promoted_replica(tmp_path, victim):
    port = KILLED_PORTS[victim]
    sb = start_sandbox(tmp_path / "sandbox", port, 3000)
    try:
        creds = sb.credentials()
        run_dir = tmp_path / "run"
        seed, new, new_replica = f"127.0.0.1:{port}", f"127.0.0.1:{port + 6}", f"127.0.0.1:{port + 7}"
        plan = current_plan(observe(seed, creds), creds, [new], Migration(preset="fast", warmup_slot=False), allow_unjoined=True)
        slot = plan.moves[0].slot
        fill_slot(sb, seed, slot, 40)
        before = data_snapshot(seed, creds)
        killer = params_variant(sb, "killer", slots_per_batch=1, keys_per_migrate=5, warmup_slot=False)
        killed = cli("run", "--params", str(killer), "--out", str(run_dir), failpoint="drain.migrated:3")
        assert killed.returncode == 1, killed.stdout + killed.stderr
        topo = observe(seed, creds)
        assert {o["slot"] for o in topo.open_slots()} == {slot}, killed.stdout + killed.stderr
        source = topo.nodes[topo.owners()[slot]].address
        dead, heir = (new, new_replica) if victim == "target" else \
            (source, topo.replicas_of(topo.by_address(source).id)[0].address)
        wait_caught_up(creds, dead, heir)
        kill(sb, dead)
        wait_promoted(creds, heir)
        restart(sb, dead, creds)
        step = nodes.add_replicas(heir, creds, [(new_replica, new)], Journal(run_dir / "journal.jsonl"), apply=True)
        assert victim == "source" or any("failed over" in n for n in step.notes), step

        seed_now = seed if dead != seed else heir
        normal = params_variant(sb, "normal", slots_per_batch=512, keys_per_migrate=5, warmup_slot=False)
        data = __import__("yaml").safe_load(normal.read_text())
        data["cluster"]["seed"] = seed_now
        data["confirm_cluster"] = seed_now
        normal.write_text(__import__("yaml").safe_dump(data, sort_keys=False))
        resumed = cli("resume", "--params", str(normal), "--run-dir", str(run_dir))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        events = [json.loads(line) for line in (run_dir / "journal.jsonl").read_text().splitlines()]
        assert any(e["event"] == "slot_repair" and e["slot"] == slot for e in events), resumed.stdout
        after = observe(seed_now, creds)
        heir_id = after.by_address(heir).id
        if victim == "target":
            assert after.owners()[slot] == heir_id, "the slot must end on the promoted replica of the target"
            assert after.by_address(new).master_id == heir_id, "the old new master returns as the shard's replica"
        assert_sound(seed_now, creds, before)
    finally:
        sb.down()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("recovery") / "sandbox", CLUSTER_PORT, 3000)
    journal = Journal(tmp_path_factory.mktemp("recovery-run") / "journal.jsonl")
    seed, new, _ = joined(sb, CLUSTER_PORT, journal)
    yield sb, seed, new, journal
    sb.down()


def strand(client, slot: int, owner_id: str, tag: str, name: str, count: int = 30) -> None:
    """Put `count` keys of `slot` on a master that does not own it, with no marker left (as a failed-over or
    interrupted move can): IMPORTING from the owner, ASKING SETs, then STABLE."""
    client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", owner_id)
    for i in range(count):
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.set(f"{{{tag}}}:{name}:{i}", f"v{i}")
        pipe.execute()
    client.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")


def test_stranded_keys_are_rescued_to_the_owner_never_closed_over(cluster):
    sb, seed, new, journal = cluster
    creds = sb.credentials()
    topo = observe(seed, creds)
    owner = topo.by_address(seed)
    other = next(m for m in topo.masters() if m.id != owner.id)
    slot = min(topo.slots_by_master()[owner.id])
    tag = tag_for_slot(slot)
    client = node_client(other.address, creds)
    strand(client, slot, owner.id, tag, "stranded")
    assert misplaced_keys(observe(seed, creds), creds) == {slot: {other.id: 30}}

    dry = repair(observe(seed, creds), creds, journal, Migration(preset="fast"), apply=False)
    assert any("rescue stranded keys" in a for a in dry.actions), dry
    assert misplaced_keys(observe(seed, creds), creds) == {slot: {other.id: 30}}, "a dry run changed something"
    done = repair(observe(seed, creds), creds, journal, Migration(preset="fast"), apply=True)
    assert done.actions
    assert misplaced_keys(observe(seed, creds), creds) == {}
    assert node_client(seed, creds).get(f"{{{tag}}}:stranded:7") == b"v7"


REPAIR_IN_A_PROCESS = """
import os
import sys
from pathlib import Path
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.topology import observe
from runbook_lib.config import Credentials, Migration
creds = Credentials(password=os.environ["RUNBOOK_TEST_PASSWORD"])
repair(observe(sys.argv[1], creds), creds, Journal(Path(sys.argv[2])), Migration(preset="fast", keys_per_migrate=5),
       apply=True)
"""


def test_an_interrupted_rescue_is_finished_towards_the_owner(cluster, tmp_path):
    """A rescue killed after its first MIGRATE round leaves the holder IMPORTING from the owner, keys on both: the
    next repair finishes it towards the owner (the journal kept its intent), never reads the marker as a move to the
    holder, and every key ends on the owner with its value."""
    sb, seed, new, _ = cluster
    creds = sb.credentials()
    topo = observe(seed, creds)
    owner = topo.by_address(seed)
    other = next(m for m in topo.masters() if m.id != owner.id and m.address != new)
    slot = sorted(topo.slots_by_master()[owner.id])[5]
    tag = tag_for_slot(slot)
    client = node_client(other.address, creds)
    strand(client, slot, owner.id, tag, "interrupted")
    journal = tmp_path / "journal.jsonl"
    env = {**os.environ, "RUNBOOK_FAILPOINT": "rescue.round", "RUNBOOK_TEST_PASSWORD": creds.password}
    killed = subprocess.run([sys.executable, "-c", REPAIR_IN_A_PROCESS, seed, str(journal)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    on_holder = client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
    assert 0 < on_holder < 30 and {o["slot"] for o in observe(seed, creds).open_slots()} == {slot}
    assert set(Journal(journal).open_slots()) == {slot}, "the rescue's intent is in the journal"

    done = repair(observe(seed, creds), creds, Journal(journal), Migration(preset="fast"), apply=True)
    assert done.actions, done
    topo = observe(seed, creds)
    assert topo.open_slots() == [] and misplaced_keys(topo, creds) == {}
    assert topo.reference.owners()[slot] == owner.id, "the slot stays with its owner"
    assert [node_client(seed, creds).get(f"{{{tag}}}:interrupted:{i}") for i in range(30)] == \
        [f"v{i}".encode() for i in range(30)]
    assert Journal(journal).open_slots() == {}


class PauseTargetWritesBefore:
    """Throttle-shaped hook: before batch `at`, pause the target's writes (RESTORE included) for longer than the
    MIGRATE timeout, so the slots open and their MIGRATEs time out."""

    def __init__(self, settings: Migration, creds, target: str, at: int = 2) -> None:
        self.settings, self.creds, self.target, self.at = settings, creds, target, at

    def before_batch(self, batch: int) -> Migration:
        if batch == self.at:
            node_client(self.target, self.creds).execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        return self.settings

    def before_group(self) -> Migration:
        return self.settings

    def end(self) -> None:
        """Nothing to stop."""


class KillBefore(PauseTargetWritesBefore):
    """Throttle-shaped hook: before batch `at`, SIGKILL the node at `target` (here the new master's replica)."""

    def __init__(self, settings: Migration, creds, target: str, sb, at: int = 2) -> None:
        super().__init__(settings, creds, target, at)
        self.sb = sb

    def before_batch(self, batch: int) -> Migration:
        if batch == self.at:
            kill(self.sb, self.target)
        return self.settings


def test_a_replica_lost_mid_run_stops_the_next_batch_with_nothing_open(cluster):
    """The new master's replica dies after the first batch: the second batch does not start (keys moved to the new
    master would have one copy), no slot is left open, and once the replica is back the migration goes on."""
    sb, seed, new, journal = cluster
    creds = sb.credentials()
    replica = f"127.0.0.1:{int(new.rsplit(':', 1)[1]) + 1}"
    settings = Migration(preset="fast", slots_per_batch=8, slots_in_flight=8, warmup_slot=False)
    started = len(list(journal.entries()))
    with pytest.raises(PaceStop, match="replica") as stopped:
        migrate(observe(seed, creds), creds, [new], settings, journal, progress=False,
                throttle=KillBefore(settings, creds, replica, sb))
    assert "before batch 2" in str(stopped.value)
    events = list(journal.entries())[started:]
    assert [e["batch"] for e in events if e["event"] == "batch_start"] == [1]
    assert any(e["event"] == "replica_stop" for e in events)
    assert observe(seed, creds).open_slots() == []
    restart(sb, replica, creds)
    wait_caught_up(creds, new, replica)
    _, batches = migrate(observe(seed, creds), creds, [new], settings, journal, progress=False, max_batches=1)
    assert batches and batches[0].slots == 8


def test_migrate_timeout_stops_with_each_key_located_and_resume_finishes(cluster):
    sb, seed, new, journal = cluster
    creds = sb.credentials()
    settings = Migration(preset="fast", slots_per_batch=8, slots_in_flight=8, migrate_timeout_ms=300, warmup_slot=False)
    plan = current_plan(observe(seed, creds), creds, [new], settings)
    for move in plan.moves[:16]:
        fill_slot(sb, seed, move.slot, 20, prefix="timeout")
    before = data_snapshot(seed, creds)
    with pytest.raises(MigrationError) as stopped:
        migrate(observe(seed, creds), creds, [new], settings, journal, progress=False,
                throttle=PauseTargetWritesBefore(settings, creds, new))
    assert "only on the source" in str(stopped.value) and "no copy was removed" in str(stopped.value)
    assert any(e["event"] == "keys_located" for e in journal.entries())
    assert observe(seed, creds).open_slots(), "the failed slot must be left open"
    time.sleep(1.5)
    migrate(observe(seed, creds), creds, [new], Migration(preset="fast"), journal, progress=False)
    assert_sound(seed, creds, before)


def test_keys_expiring_while_their_slots_move_in_many_migrates(tmp_path):
    """More keys per slot than one MIGRATE takes, expiring while the slots are open: the big-key check of the later
    key groups and the MIGRATEs meet keys that are gone, and nothing stops or strands. The batch that holds them moves
    four slots at a time, so they stay open while the keys expire; the rest moves at the fast preset's default."""
    sb = start_sandbox(tmp_path / "sandbox", EXPIRING_PORT, 2000)
    try:
        creds = sb.credentials()
        journal = Journal(tmp_path / "journal.jsonl")
        seed, new, _ = joined(sb, EXPIRING_PORT, journal)
        settings = Migration(preset="fast", keys_per_migrate=10, slots_in_flight=4, warmup_slot=False)
        plan = current_plan(observe(seed, creds), creds, [new], settings)
        owner = node_client(seed, creds)
        slots = [m.slot for m in plan.batches[0] if m.source == observe(seed, creds).by_address(seed).id][:40]
        assert len(slots) == 40, "the first batch moves 40 of the seed's slots"
        for slot in slots:
            tag = tag_for_slot(slot)
            pipe = owner.pipeline(transaction=False)
            for i in range(60):
                pipe.set(f"{{{tag}}}:ttl:{i}", "x", px=300 + 40 * i)
            pipe.execute()
        before = data_snapshot(seed, creds)
        bigkeys = BigKeys(threshold_bytes=1 << 20)
        _, first = migrate(observe(seed, creds), creds, [new], settings, journal, progress=False, bigkeys=bigkeys,
                           max_batches=1)
        assert [b.slots for b in first] == [len(plan.batches[0])]
        rest = Migration(preset="fast", keys_per_migrate=10, warmup_slot=False)
        _, batches = migrate(observe(seed, creds), creds, [new], rest, journal, progress=False, bigkeys=bigkeys)
        assert sum(b.slots for b in first + batches) == 4096
        assert_sound(seed, creds, before)
    finally:
        sb.down()


@pytest.mark.parametrize("point", ["open.importing", "drain.migrated:2", "handover.journaled:2"])
def test_whole_run_killed_on_the_batched_path_then_resumed(tmp_path, point):
    """The default (batched) path: SIGKILL of `runbook run` at each protocol step, then resume and the rest."""
    port = BATCHED_PORT
    sb = start_sandbox(tmp_path / "sandbox", port, 3000)
    try:
        creds = sb.credentials()
        seed, run_dir = f"127.0.0.1:{port}", tmp_path / "run"
        plan = current_plan(observe(seed, creds), creds, [f"127.0.0.1:{port + 6}"], Migration(preset="fast"), allow_unjoined=True)
        for move in plan.moves[:64]:
            fill_slot(sb, seed, move.slot, 12, prefix="batched")
        before = data_snapshot(seed, creds)
        batched = params_variant(sb, "batched", keys_per_migrate=5)
        killed = cli("run", "--params", str(batched), "--out", str(run_dir), failpoint=point)
        assert killed.returncode == 1, killed.stdout + killed.stderr
        assert observe(seed, creds).open_slots(), "the kill left no open slot: " + killed.stdout + killed.stderr
        resumed = cli("resume", "--params", str(batched), "--run-dir", str(run_dir))
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        finished = cli("run", "--params", str(batched), "--out", str(run_dir), "--from", "60_validate")
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert_sound(seed, creds, before)
    finally:
        sb.down()
