"""Open-slot repair and resume: finish or close slots left IMPORTING/MIGRATING by an interrupted move, ours or not.

A slot is finished (its keys moved on and the slot handed to the importing side) whenever the importing side already
holds keys of it or already owns it; it is closed (SETSLOT STABLE) only when nothing was moved under the marker. So a
repair never drops a copy of a key, and the plan then goes on from the live slot map.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runbook_lib.checks import StepReport
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import Mover
from runbook_lib.cluster.topology import Topology, observe
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import CheckFailed


@dataclass
class SlotState:
    """Who marks one slot as migrating or importing, who claims it, and who holds keys of it."""

    slot: int
    migrating: dict[str, str] = field(default_factory=dict)
    importing: dict[str, str] = field(default_factory=dict)
    claims: set[str] = field(default_factory=set)
    keys: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    """What to do with one open slot: finish (source → target), close (clear markers on nodes), or leave to a human."""

    action: str
    source: str = ""
    target: str = ""
    nodes: tuple[str, ...] = ()
    reason: str = ""


def open_slot_states(topo: Topology) -> dict[int, SlotState]:
    """Every open slot with its markers and claimants, from each node's view of itself."""
    states: dict[int, SlotState] = {}
    for view in topo.views.values():
        me = view.myself
        for slot, peer in me.migrating.items():
            states.setdefault(slot, SlotState(slot)).migrating[me.id] = peer
        for slot, peer in me.importing.items():
            states.setdefault(slot, SlotState(slot)).importing[me.id] = peer
    for state in states.values():
        state.claims = {v.myself.id for v in topo.views.values() if state.slot in v.myself.slots}
    return states


def decide(state: SlotState, owner: str | None) -> Decision:
    """The repair for one open slot (pure): finish when anything moved or the target owns it, else close."""
    if len(state.migrating) > 1 or len(state.importing) > 1:
        return Decision("manual", reason=f"slot {state.slot} is migrating on {len(state.migrating)} nodes and importing "
                                         f"on {len(state.importing)}; repair it by hand")
    if state.migrating and state.importing:
        (source, target), (importer, _) = next(iter(state.migrating.items())), next(iter(state.importing.items()))
        if target != importer:
            return Decision("manual", reason=f"slot {state.slot} migrates towards {target[:8]} but {importer[:8]} "
                                             "imports it; repair it by hand")
        return Decision("finish", source=source, target=target, reason="both sides open: finish the move")
    if state.migrating:
        source, target = next(iter(state.migrating.items()))
        if target in state.claims or state.keys.get(target, 0):
            return Decision("finish", source=source, target=target,
                            reason="the target already owns the slot or holds keys of it: finish the move")
        return Decision("close", nodes=(source,), reason="nothing moved to the target: clear the MIGRATING marker")
    target, source = next(iter(state.importing.items()))
    if target in state.claims:
        return Decision("close", nodes=(target,), reason="the importing node already owns the slot: clear the marker")
    if state.keys.get(target, 0) and owner:
        return Decision("finish", source=owner, target=target,
                        reason="the importing node holds keys of the slot: move the rest to it")
    return Decision("close", nodes=(target,), reason="nothing was moved: clear the IMPORTING marker")


def repair(topo: Topology, creds: Credentials, journal: Journal, settings: Migration, apply: bool,
           bigkeys: BigKeys | None = None, slots: set[int] | None = None, foreign: bool = False) -> StepReport:
    """Finish or close this journal's open slots, plus `slots` and, with `foreign`, every other open slot.

    Another tool's open slot that was not asked for is left alone and described in the notes; a dry run says what it
    would do."""
    states = open_slot_states(topo)
    ours = set(journal.open_slots())
    asked = set(slots or ())
    left = sorted(s for s in states if s not in ours and s not in asked and not foreign)
    states = {s: st for s, st in states.items() if s not in left}
    notes = [f"slot {s} is open ({_markers(states_all)}) but this run did not open it; left alone (repair it with "
             f"`runbook resume --slot {s}` or `--foreign`)" for s, states_all in
             ((s, open_slot_states(topo)[s]) for s in left)]
    if not states:
        return StepReport(actions=[], notes=notes or ["no open slot"])
    mover = Mover(topo, creds, settings, journal, bigkeys)
    owners = topo.owners()
    actions, manual = [], []
    for slot, state in sorted(states.items()):
        for node in set(state.migrating) | set(state.importing):
            state.keys[node] = int(mover.client(node).execute_command("CLUSTER", "COUNTKEYSINSLOT", slot))
        decision = decide(state, owners[slot])
        if decision.action == "manual":
            manual.append(decision.reason)
            continue
        if decision.action == "finish":
            actions.append(f"slot {slot}: finish {mover.address[decision.source]} -> {mover.address[decision.target]} "
                           f"({decision.reason})")
            if apply:
                journal.record("slot_repair", slot=slot, action="finish", source=decision.source,
                               target=decision.target, reason=decision.reason)
                mover.finish_slot(slot, decision.source, decision.target)
        else:
            actions.append(f"slot {slot}: SETSLOT STABLE on {', '.join(mover.address[n] for n in decision.nodes)} "
                           f"({decision.reason})")
            if apply:
                for node in decision.nodes:
                    mover.close_slot(slot, node, decision.reason)
    if manual:
        raise CheckFailed("; ".join(manual))
    return StepReport(actions=actions, notes=notes)


def _markers(state: SlotState) -> str:
    marks = [f"{n[:8]} migrating to {p[:8]}" for n, p in state.migrating.items()]
    marks += [f"{n[:8]} importing from {p[:8]}" for n, p in state.importing.items()]
    return ", ".join(marks)


def settle_own_open_slots(topo: Topology, creds: Credentials, journal: Journal, settings: Migration,
                          bigkeys: BigKeys | None = None) -> Topology:
    """Finish the slots this journal opened and left open; refuse open slots that someone else left.

    Returns a fresh topology when anything was repaired.
    """
    live = {o["slot"] for o in topo.open_slots()}
    ours = live & set(journal.open_slots())
    foreign = sorted(live - ours)
    if foreign:
        raise CheckFailed(f"{len(foreign)} open slots that this run did not open (first: {foreign[0]}); "
                          "`runbook check` shows them and `runbook resume` repairs them")
    if not ours:
        return topo
    repair(topo, creds, journal, settings, apply=True, bigkeys=bigkeys, slots=ours)
    return observe(topo.seed, creds)
