"""Repair: finish or close slots an interrupted move left open, ours or another tool's, and rescue stranded keys.

Each slot's state is read from the live cluster (markers on every master, its key count on every master) and the
journal; the slot state machine decides: a move is finished whenever anything moved under its markers (the target,
or the master now serving the target's shard after a failover, holds keys of it or owns it), closed only when
nothing did; keys on a master that does not own their slot and has no marker (stranded) go to the owner. A repair
never drops a copy of a key, and the plan then goes on from the live slot map.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from runbook_lib.checks import StepReport
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.nodes import TopologyChanged
from runbook_lib.cluster.slots import CLOSE, DONE, MANUAL, RESCUE, SlotState, intent_from_markers, repair_step
from runbook_lib.cluster.topology import Topology, misplaced_keys, observe
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import CheckFailed


@dataclass(frozen=True)
class Finding:
    """One slot that needs a repair: its state, the move it belongs to (shard ids), and whether this run opened it."""

    state: SlotState
    source: str
    target: str
    ours: bool


def open_slots(topo: Topology) -> set[int]:
    """Slots any master marks IMPORTING or MIGRATING (replicas carry no markers)."""
    return {s for v in topo.views.values() if v.myself.is_master for s in (*v.myself.migrating, *v.myself.importing)}


def stranded_slots(mover: Mover) -> set[int]:
    """Slots some master holds keys of without owning them."""
    return set(misplaced_keys(mover.nodes.topo, mover.nodes.creds))


def findings(mover: Mover, journal: Journal, slots: set[int]) -> list[Finding]:
    """What each slot needs, with the move it belongs to: from this journal when it opened the slot, else from the
    markers (mapped through failovers), else (stranded keys, no marker) a rescue to the owner."""
    ours = journal.open_slots()
    states = mover.observe_slots(sorted(slots))
    out = []
    for slot in sorted(slots):
        state = states[slot]
        if slot in ours:
            source, target = ours[slot]["source"], ours[slot]["target"]
        else:
            intent = intent_from_markers(state, _shard_of(mover))
            if intent is None and state.is_open:
                raise CheckFailed(f"slot {slot} is open with markers that disagree ({_markers(state, mover)}); "
                                  "repair it by hand")
            source, target = intent or (state.owner or "", state.owner or "")
        out.append(Finding(state, source, target, slot in ours))
    return out


def _shard_of(mover: Mover):
    def shard_of(node: str) -> str | None:
        try:
            return mover.nodes.current_master(node)
        except TopologyChanged:
            return None
    return shard_of


def repair(topo: Topology, creds: Credentials, journal: Journal, settings: Migration, apply: bool,
           bigkeys: BigKeys | None = None, slots: set[int] | None = None, foreign: bool = False) -> StepReport:
    """Finish or close this journal's open slots, plus `slots` and, with `foreign`, every other open slot; rescue
    stranded keys. Another tool's open slot that was not asked for is left alone, keys on its importing node included
    (that tool may still be moving it), and described in the notes with where its keys are; a dry run says what it
    would do. An unreachable master stops it with a message, not a traceback."""
    try:
        return _repair(topo, creds, journal, settings, apply, bigkeys, slots, foreign)
    except (TopologyChanged, redis.RedisError, OSError) as e:
        raise CheckFailed(f"repair stopped: {e}. Every master must answer for a repair to see where the keys of "
                          "open slots are: bring it back (or wait for its replica to take over), then `runbook "
                          "resume` again; `runbook check` shows the cluster") from None


def _repair(topo: Topology, creds: Credentials, journal: Journal, settings: Migration, apply: bool,
            bigkeys: BigKeys | None, slots: set[int] | None, foreign: bool) -> StepReport:
    """Every slot of one move is repaired in one drive, so a transition reaches all of them at once (a target that
    ignored a failed-over source's claim is told the owner of every slot it imports, not one slot at a time)."""
    mover = Mover(topo, creds, settings, journal, bigkeys)
    live = open_slots(topo)
    ours = set(journal.open_slots())
    asked = set(slots or ())
    left_alone = sorted(s for s in live if s not in ours and s not in asked and not foreign)
    todo = (live | stranded_slots(mover) | ours) - set(left_alone)
    if slots is not None and not foreign:
        todo &= ours | asked
    found = findings(mover, journal, todo | (asked & live))
    seen = mover.observe_slots(left_alone) if left_alone else {}
    notes = [f"slot {s} is open ({_markers(seen[s], mover)}; {_keys(seen[s], mover)}) but this run did not open it; "
             f"left alone, as another tool may still be moving it (repair it with `runbook resume --slot {s}` or "
             "`--foreign`)" for s in left_alone]
    actions, manual = [], []
    groups: dict[tuple[str, str], list[int]] = {}
    for f in found:
        source, target = _shard_of(mover)(f.source) or f.source, _shard_of(mover)(f.target) or f.target
        step = repair_step(f.state, source, target)
        if step.kind == MANUAL:
            manual.append(step.reason)
            continue
        if step.kind == DONE:
            if apply and f.ours:
                journal.record("slot_done", slot=f.state.slot, owner=step.target, reason="found done by a repair")
            continue
        actions.append(f"slot {f.state.slot}: {_describe(step, mover)} ({step.reason})")
        if apply:
            journal.record("slot_repair", slot=f.state.slot, action=step.kind, source=source, target=target,
                           reason=step.reason, ours=f.ours)
            groups.setdefault((f.source, f.target), []).append(f.state.slot)
    for (source, target), group in groups.items():
        mover.drive(group, source, target, step=repair_step)
    if manual:
        raise CheckFailed("; ".join(manual))
    return StepReport(actions=actions, notes=notes or ([] if actions else ["no open slot, no stranded key"]))


def _describe(step, mover: Mover) -> str:
    if step.kind == CLOSE:
        return "SETSLOT STABLE on " + ", ".join(mover.nodes.name(n) for n in step.nodes)
    if step.kind == RESCUE:
        return f"rescue stranded keys {mover.nodes.name(step.source)} -> {mover.nodes.name(step.target)}"
    return f"finish {mover.nodes.name(step.source)} -> {mover.nodes.name(step.target)}"


def _keys(state: SlotState, mover: Mover) -> str:
    held = {n: c for n, c in sorted(state.keys.items()) if c}
    if not held:
        return "no key on any master"
    return "keys: " + ", ".join(f"{c} on {mover.nodes.name(n)}" for n, c in held.items())


def _markers(state: SlotState, mover: Mover) -> str:
    marks = [f"{mover.nodes.name(n)} migrating to {mover.nodes.name(p)}" for n, p in state.migrating.items()]
    marks += [f"{mover.nodes.name(n)} importing from {mover.nodes.name(p)}" for n, p in state.importing.items()]
    return ", ".join(marks) or "no marker"


def settle_own_open_slots(topo: Topology, creds: Credentials, journal: Journal, settings: Migration,
                          bigkeys: BigKeys | None = None) -> Topology:
    """Finish the slots this journal opened and left open and rescue stranded keys; refuse open slots that someone
    else left. Returns a fresh topology when anything was repaired."""
    live = open_slots(topo)
    foreign = sorted(live - set(journal.open_slots()))
    if foreign:
        raise CheckFailed(f"{len(foreign)} open slots that this run did not open (first: {foreign[0]}); "
                          "`runbook check` shows them and `runbook resume --slot N` repairs them")
    report = repair(topo, creds, journal, settings, apply=True, bigkeys=bigkeys)
    return observe(topo.seed, creds) if report.actions else topo
