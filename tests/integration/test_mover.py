"""The mover's races, each forced at its exact moment on real servers: a client write between the BUSYKEY comparison
and the delete, a key created through ASK while a slot is being closed, a source that refuses a hand-over because it
holds keys, and one slot of a group stopping the run while the others are open.

A race is forced by a Mover whose node access runs a client command just before the mover sends a given command
(`interleaved`): the servers, the protocol and the client are real; only the moment is chosen.
"""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from runbook_lib.cluster.connection import cluster_client, node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.repair import repair
from runbook_lib.cluster.slots import HANDOVER, SlotState, Transition, repair_step
from runbook_lib.cluster.topology import misplaced_keys, observe
from runbook_lib.cluster.transitions import SAME_COPY_DEL_SCRIPT
from runbook_lib.config import Migration
from runbook_lib.exceptions import CheckFailed, MigrationError
from tests.conftest import port_block, start_sandbox
from tests.integration.faults import fill_slot, tag_for_slot
from tests.integration.test_recovery import joined, kill

pytestmark = pytest.mark.integration
PORT = port_block()
SETTINGS = Migration(preset="fast", warmup_slot=False, client_learn_wait_s=0)


def interleaved(mover: Mover, before) -> Mover:
    """The mover with `before(node_id, commands)` called before each pipeline its nodes send (its loop, transitions
    and MIGRATE rounds share them), and likewise before per-key commands, so a test can put a client's write at an
    exact point of a transition."""
    nodes = mover.nodes
    pipeline, each = nodes.pipeline, nodes.each

    def hooked_pipeline(node_id, commands, raise_on_error=True):
        before(node_id, commands)
        return pipeline(node_id, commands, raise_on_error)

    def hooked_each(node_id, command, keys, asking):
        before(node_id, [(command, k) for k in keys])
        return each(node_id, command, keys, asking)

    nodes.pipeline, nodes.each = hooked_pipeline, hooked_each
    return mover


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    sb = start_sandbox(tmp_path_factory.mktemp("mover") / "sandbox", PORT, 500)
    journal = Journal(tmp_path_factory.mktemp("mover-run") / "journal.jsonl")
    seed, new, _ = joined(sb, PORT, journal)
    yield sb, seed, new
    sb.down()


def fresh_mover(sb, seed, tmp_path, before=None) -> Mover:
    mover = Mover(observe(seed, sb.credentials()), sb.credentials(), SETTINGS, Journal(tmp_path / "journal.jsonl"))
    return interleaved(mover, before or (lambda node_id, commands: None))


def owned_slot(sb, seed: str, index: int) -> tuple[int, str]:
    """The index-th slot the seed master owns, and the seed's id."""
    topo = observe(seed, sb.credentials())
    me = topo.by_address(seed)
    return sorted(topo.slots_by_master()[me.id])[index], me.id


def open_by_hand(creds, source: str, target: str, slot: int) -> tuple[str, str]:
    topo = observe(source, creds)
    src, tgt = topo.by_address(source).id, topo.by_address(target).id
    node_client(target, creds).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src)
    node_client(source, creds).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", tgt)
    return src, tgt


def asking(creds, address: str, *command):
    pipe = node_client(address, creds).pipeline(transaction=False)
    pipe.execute_command("ASKING")
    pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)[1]


def doubled(sb, seed: str, new: str, index: int, prefix: str) -> tuple[int, str, str, str]:
    """A key of the seed's index-th slot on both sides of that slot's open move, as a MIGRATE that timed out leaves
    it: (slot, key, source id, target id)."""
    creds = sb.credentials()
    slot, _ = owned_slot(sb, seed, index)
    (key,) = fill_slot(sb, seed, slot, 1, prefix=prefix)
    src, tgt = open_by_hand(creds, seed, new, slot)
    asking(creds, new, "RESTORE", key, 0, node_client(seed, creds).dump(key))
    return slot, key, src, tgt


def read(sb, seed: str, key: str):
    client = cluster_client([seed], sb.credentials())
    try:
        return client.get(key), client.pttl(key)
    finally:
        client.close()


def test_a_write_between_the_busykey_comparison_and_the_delete_is_kept(cluster, tmp_path):
    """A MIGRATE that timed out left a key on both sides; a client overwrites the source copy just before the mover
    deletes it as "the same value": the write must survive (the comparison and the delete are one script now)."""
    sb, seed, new = cluster
    creds = sb.credentials()
    slot, key, src, tgt = doubled(sb, seed, new, 10, "busyrace")
    written = []

    def write_first(node_id, commands):
        deleting = any(c[0] == "DEL" or (c[0] == "EVAL" and c[1] == SAME_COPY_DEL_SCRIPT) for c in commands)
        if node_id == src and deleting and not written:
            node_client(seed, creds).set(key, "the client's newer value")
            written.append(key)

    mover = fresh_mover(sb, seed, tmp_path, write_first)
    with pytest.raises(MigrationError, match="different values"):
        mover.drive([slot], src, tgt)
    assert written, "the race was not forced"
    assert read(sb, seed, key)[0] == "the client's newer value"
    assert asking(creds, new, "GET", key) == key.encode(), "both copies are kept for the operator"
    asking(creds, new, "DEL", key)
    fresh_mover(sb, seed, tmp_path).drive([slot], src, tgt)
    assert read(sb, seed, key)[0] == "the client's newer value"


def test_an_expiry_set_on_the_source_copy_is_a_difference(cluster, tmp_path):
    """Equal payloads with different expiry are different copies: deleting the source's would drop its EXPIRE."""
    sb, seed, new = cluster
    creds = sb.credentials()
    slot, key, src, tgt = doubled(sb, seed, new, 11, "busyttl")
    node_client(seed, creds).expire(key, 900)
    with pytest.raises(MigrationError, match="different expiry"):
        fresh_mover(sb, seed, tmp_path).drive([slot], src, tgt)
    value, ttl = read(sb, seed, key)
    assert value == key and ttl > 0, "the source copy and its expiry are still what clients read"
    node_client(seed, creds).persist(key)
    assert fresh_mover(sb, seed, tmp_path).drive([slot], src, tgt) == 0
    assert read(sb, seed, key) == (key, -1)
    assert misplaced_keys(observe(seed, creds), creds) == {}


def test_a_key_created_through_ask_while_an_open_slot_is_repaired_is_not_stranded(cluster, tmp_path):
    """Both markers set, nothing moved yet: a client whose ASK was already on its way creates a key on the importing
    node while the repair works. A repair once closed such a slot (STABLE on both sides) and stranded that key; now a
    MIGRATING source means "an ASK may be in flight", so the move is finished and the key ends where clients read it."""
    sb, seed, new = cluster
    creds = sb.credentials()
    slot, _ = owned_slot(sb, seed, 12)
    src, tgt = open_by_hand(creds, seed, new, slot)
    key = f"{{{tag_for_slot(slot)}}}:late-ask"
    created, stable = [], []

    def ask_lands(node_id, commands):
        stable.extend(c for c in commands if c[:2] == ("CLUSTER", "SETSLOT") and c[-1] == "STABLE")
        if node_id == src and not created:
            assert asking(creds, new, "SET", key, "written through ASK") in (True, b"OK")
            created.append(key)

    fresh_mover(sb, seed, tmp_path, ask_lands).drive([slot], src, tgt, step=repair_step)
    assert created, "the race was not forced"
    assert not stable, "a slot whose source was MIGRATING must not be closed"
    topo = observe(seed, creds)
    assert topo.open_slots() == [] and misplaced_keys(topo, creds) == {}, "the key is stranded"
    assert read(sb, seed, key)[0] == "written through ASK"


def test_a_source_refusing_the_handover_because_it_holds_keys_stops_loudly(cluster, tmp_path):
    """The target already claims the slot when the source refuses SETSLOT NODE because it still holds a key (the
    moment redis#2969 loses keys): the mover stops with the key located instead of retrying silently.

    The mover's count is made stale on purpose, and the target is not IMPORTING, so its claim is not broadcast: a
    Redis 7.0 source that hears an importing target's claim (broadcast at once) deletes its keys of the slot, which
    is why the mover never hands a slot over before the source's count is 0."""
    sb, seed, new = cluster
    creds = sb.credentials()
    slot, _ = owned_slot(sb, seed, 13)
    (key,) = fill_slot(sb, seed, slot, 1, prefix="refused")
    topo = observe(seed, creds)
    src, tgt = topo.by_address(seed).id, topo.by_address(new).id
    node_client(seed, creds).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", tgt)
    mover = fresh_mover(sb, seed, tmp_path)
    stale = {slot: SlotState(slot, src, {src: tgt}, {tgt: src}, {src: 0, tgt: 0})}
    try:
        with pytest.raises(MigrationError, match="still holds keys") as stop:
            mover.transitions.act(HANDOVER, [Transition(HANDOVER, slot, src, tgt)], stale, None)
        assert key in str(stop.value)
        refused = [e for e in mover.journal.entries() if e["event"] == "handover_refused"]
        assert refused and refused[0]["sample"] == [key] and refused[0]["source_keys"] == {str(slot): 1}
        assert node_client(seed, creds).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 1, "nothing dropped"
    finally:
        node_client(new, creds).execute_command("CLUSTER", "SETSLOT", slot, "NODE", src)
        node_client(seed, creds).execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
    assert read(sb, seed, key)[0] == key


def test_a_slot_that_stops_the_run_leaves_the_rest_of_its_group_closed_or_finished(cluster, tmp_path):
    """One slot of a group of four meets a BUSYKEY conflict mid-drain: the run stops with only that slot open; the
    other three are finished (or closed), never left IMPORTING/MIGRATING."""
    sb, seed, new = cluster
    creds = sb.credentials()
    slots = [owned_slot(sb, seed, i)[0] for i in (20, 21, 22, 23)]
    for slot in slots:
        fill_slot(sb, seed, slot, 3, prefix="group")
    bad = slots[1]
    conflict = f"{{{tag_for_slot(bad)}}}:group:0"
    topo = observe(seed, creds)
    src, tgt = topo.by_address(seed).id, topo.by_address(new).id
    planted = []

    def plant_conflict(node_id, commands):
        if node_id == src and commands and commands[0][0] == "MIGRATE" and not planted:
            assert asking(creds, new, "SET", conflict, "another value") in (True, b"OK")
            planted.append(conflict)

    with pytest.raises(MigrationError, match=f"slot {bad}"):
        fresh_mover(sb, seed, tmp_path, plant_conflict).drive(slots, src, tgt)
    assert planted
    still_open = {o["slot"] for o in observe(seed, creds).open_slots()}
    assert still_open == {bad}, f"slots left open besides the one that failed: {still_open - {bad}}"
    assert set(misplaced_keys(observe(seed, creds), creds)) <= {bad}
    asking(creds, new, "DEL", conflict)
    fresh_mover(sb, seed, tmp_path).drive([bad], src, tgt)
    assert observe(seed, creds).open_slots() == []
    for slot in slots:
        assert key_slot(f"{{{tag_for_slot(slot)}}}:group:2".encode()) == slot
        assert read(sb, seed, f"{{{tag_for_slot(slot)}}}:group:2")[0] is not None


def test_a_master_that_does_not_answer_stops_a_repair_with_a_message(cluster, tmp_path):
    """Runs last: it kills a master. A repair cannot see where keys are without every master: it says which one did
    not answer and what to do, instead of ending in a traceback."""
    sb, seed, new = cluster
    creds = sb.credentials()
    victim = next(m.address for m in observe(seed, creds).masters() if m.address not in (seed, new))
    kill(sb, victim)
    with pytest.raises(CheckFailed, match="repair stopped") as stopped:
        repair(observe(seed, creds), creds, Journal(tmp_path / "journal.jsonl"), SETTINGS, apply=True)
    assert victim.rsplit(":", 1)[1] in str(stopped.value) and "runbook resume" in str(stopped.value)


def test_quiet_spells_leave_no_slot_open_and_start_after_the_handover_tail(cluster, tmp_path):
    from runbook_lib.cluster.plan import Move, Plan
    from runbook_lib.watch.timeline import quiet_windows
    sb, seed, new = cluster
    topo = observe(seed, sb.credentials())
    target = topo.by_address(new).id
    moves = [Move(slot, source, target) for source, slots in topo.slots_by_master().items() if source != target
             for slot in sorted(slots)[-16:]]
    settings = SETTINGS.model_copy(update={"quiet_every_s": 0.4, "quiet_s": 0.3, "max_slots_per_s": 20.0,
                                           "slots_in_flight": 2})
    journal = Journal(tmp_path / "journal.jsonl")
    Mover(topo, sb.credentials(), settings, journal).run(Plan([moves], {}, {}, {}), progress=False)
    entries = list(journal.entries())
    spells = quiet_windows(entries)
    assert len(spells) >= 2
    open_slots: set[int] = set()
    last_handover = 0.0
    for entry in entries:
        if entry["event"] == "slots_open":
            assert not any(a <= entry["ts"] < b for a, b in spells), "a slot opened during a quiet spell"
            open_slots |= set(entry["slots"])
        elif entry["event"] in ("slots_assigned", "slot_closed"):
            open_slots -= set(entry.get("slots", [entry.get("slot")]))
            last_handover = entry["ts"]
        elif entry["event"] == "quiet_start":
            assert not open_slots, f"slots {sorted(open_slots)} open when a quiet spell started"
            assert entry["ts"] - last_handover >= entry["tail_s"] - 0.01, "the spell began inside the hand-over tail"
    owners = observe(seed, sb.credentials()).slots_by_master()[target]
    assert {m.slot for m in moves} <= set(owners)


def test_each_drain_records_what_its_migrates_carried_and_how_long_they_blocked_the_source(cluster, tmp_path):
    from runbook_lib.cluster.plan import Move, Plan
    from runbook_lib.watch.migrate_cost import blocked_rate, migrate_costs
    sb, seed, new = cluster
    topo = observe(seed, sb.credentials())
    target = topo.by_address(new).id
    sources = {source: sorted(slots)[:2] for source, slots in topo.slots_by_master().items() if source != target}
    for slots in sources.values():
        for slot in slots:
            fill_slot(sb, seed, slot, 30, prefix="cost")
    moves = [Move(slot, source, target) for source, slots in sources.items() for slot in slots]
    journal = Journal(tmp_path / "journal.jsonl")
    Mover(observe(seed, sb.credentials()), sb.credentials(), SETTINGS.model_copy(update={"keys_per_migrate": 10}),
          journal).run(Plan([moves], {}, {}, {}), progress=False)
    drains = [e for e in journal.entries() if e["event"] == "keys_migrated" and e["slots"]]
    assert drains and all(e["migrates"] >= 1 and e["bytes"] > 0 and 0 < e["max_block_ms"] <= e["block_ms"]
                          for e in drains), drains
    assert sum(sum(e["slots"].values()) for e in drains) >= 30 * len(moves)
    rows = migrate_costs(journal.entries())
    assert {r["source"] for r in rows} == set(sources)
    assert all(r["migrates"] >= 6 and r["MB"] > 0 and 0 < r["duty_pct"] <= 100 for r in rows), rows
    cost = blocked_rate(journal.entries())
    assert cost["bytes"] == sum(e["bytes"] for e in drains) and cost["bytes_per_blocked_s"] > 0


def test_with_a_duty_cycle_each_source_rests_after_a_round_so_it_is_blocked_at_most_that_share(cluster, tmp_path):
    from runbook_lib.cluster.plan import Move, Plan
    from runbook_lib.cluster.rounds import duty_for, rest_after
    sb, seed, new = cluster
    topo = observe(seed, sb.credentials())
    target = topo.by_address(new).id
    source, owned = next((s, sorted(slots)) for s, slots in topo.slots_by_master().items() if s != target)
    slots = owned[2:4]
    for slot in slots:
        fill_slot(sb, seed, slot, 30, prefix="duty")
    settings = SETTINGS.model_copy(update={"keys_per_migrate": 5, "migrates_per_round_trip": 1, "slots_in_flight": 2,
                                           "max_duty_pct": 1.0, "migrate_headroom_ms": 0.0})
    journal = Journal(tmp_path / "journal.jsonl")
    Mover(observe(seed, sb.credentials()), sb.credentials(), settings, journal).run(
        Plan([[Move(slot, source, target) for slot in slots]], {}, {}, {}), progress=False)
    entries = list(journal.entries())
    drains = [e for e in entries if e["event"] == "keys_migrated" and e["slots"]]
    assert sum(e["migrates"] for e in drains) >= 12 and sum(e["rested_ms"] for e in drains) > 0, drains
    first = min(e["ts"] for e in entries if e["event"] == "keys_migrating")
    last = max(e["ts"] for e in drains)
    # each round began only after the rest the one before it earned (99 times its block at 1 %), so the rounds' span
    # holds every rest but the last round's, whatever else the mover did meanwhile
    blocked_s = sum(e["block_ms"] for e in drains) / 1000
    longest_s = max(e["max_block_ms"] for e in drains) / 1000
    assert last - first >= rest_after(blocked_s - longest_s, duty_for(1.0, 0.0, 1.0)), (last - first, blocked_s)
    assert {s for s in slots} <= set(observe(seed, sb.credentials()).slots_by_master()[target])
