"""The slot state machine (pure): what one slot looks like in the live cluster, and the one next transition.

Every path that moves a slot (the planned move, batched or not, resume, repair, rollback) asks `next_step` what to
do next and does exactly that, so the protocol (docs/design.md, The slot protocol) exists once. The state is read
from the live cluster: who claims the slot, the IMPORTING/MIGRATING markers on every master, and the slot's key count
on *every* master (markers are not replicated, so a promoted replica holds moved keys without a marker). `Shards`
maps a node that failed over to the master now serving its shard, from the live cluster and the journal's record of
who replicated whom.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

OPEN = "open"
"""Set IMPORTING on the target and MIGRATING on the source (each only where missing)."""
DRAIN = "drain"
"""MIGRATE the keys the source still holds to the target."""
HANDOVER = "handover"
"""SETSLOT NODE target on the target, then on the source: only when no master but the target holds keys of it."""
CLOSE = "close"
"""SETSLOT STABLE on `nodes`, markers nothing was moved under: the MIGRATING side first, then each IMPORTING side only
while it still holds no key (counted again after the first), else the move is finished instead."""
RESCUE = "rescue"
"""Keys held by a master that does not own the slot (stranded): MIGRATE them to the owner."""
DONE = "done"
MANUAL = "manual"
"""Stop: the slot is in a state no automatic step may touch; `reason` says why."""

UNKNOWN = -1
"""A key count not read since the slot's markers changed: treated as "may hold keys"."""

ORDER = (RESCUE, CLOSE, OPEN, DRAIN, HANDOVER)
"""Protocol order: in a group of slots, the slots furthest behind go first, so one kind is pipelined at a time."""


@dataclass(frozen=True)
class SlotState:
    """One slot as the live cluster shows it: the claimed owner, markers by node id, key counts by master id."""

    slot: int
    owner: str | None
    migrating: Mapping[str, str] = field(default_factory=dict)
    importing: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, int] = field(default_factory=dict)
    believed: Mapping[str, str | None] = field(default_factory=dict)
    """The owner each master believes in (its own view); a master importing a slot ignores new claims for it, so
    after a failover of the source it may still name the dead master, or nobody."""

    def holders(self) -> set[str]:
        """Masters holding at least one key of the slot."""
        return {n for n, count in self.keys.items() if count}  # UNKNOWN counts as holding

    @property
    def is_open(self) -> bool:
        return bool(self.migrating or self.importing)

    def opened(self, source: str, target: str) -> "SlotState":
        """The state after a successful OPEN. The source's key count is unknown again: clients may have written keys
        of the slot to it until MIGRATING was set, so only a count taken after that may let the slot be handed over."""
        importing = {} if self.owner == target else {target: source}
        migrating = {source: target} if self.owner == source else {}
        believed = {**self.believed, target: self.owner} if target in self.believed else self.believed
        keys = {**self.keys, source: UNKNOWN}
        return replace(self, migrating=migrating, importing=importing, believed=believed, keys=keys)

    def drained(self, source: str, target: str, left: int, moved: int) -> "SlotState":
        """The state after a DRAIN step: `left` keys still on the source, `moved` more on the target."""
        keys = dict(self.keys)
        keys[source] = left
        keys[target] = max(keys.get(target, 0), 0) + moved
        return replace(self, keys=keys)

    def handed_over(self, target: str) -> "SlotState":
        """The state after a successful HANDOVER: the target owns the slot, markers are gone."""
        return replace(self, owner=target, migrating={}, importing={})

    def closed(self, nodes: Iterable[str]) -> "SlotState":
        gone = set(nodes)
        return replace(self, migrating={n: p for n, p in self.migrating.items() if n not in gone},
                       importing={n: p for n, p in self.importing.items() if n not in gone})

    def rescued(self, holder: str) -> "SlotState":
        keys = dict(self.keys)
        if self.owner:
            keys[self.owner] = max(keys.get(self.owner, 0), 0) + max(keys.get(holder, 0), 0)
        keys[holder] = 0
        return replace(self, keys=keys, importing={n: p for n, p in self.importing.items() if n != holder})


@dataclass(frozen=True)
class Transition:
    """The next step for one slot; `source`/`target` are current master ids, `nodes` what CLOSE clears."""

    kind: str
    slot: int
    source: str = ""
    target: str = ""
    nodes: tuple[str, ...] = ()
    reason: str = ""


def next_step(state: SlotState, source: str, target: str) -> Transition:
    """The next transition that moves `state.slot` from master `source` to master `target` (ids as they are now).

    It never hands the slot over while any master other than the target holds keys of it, and never clears a marker
    that keys were moved under: stranded keys are rescued to the owner first, markers pointing at a node that
    failed over are re-set towards the master now serving its shard.
    """
    slot, owner = state.slot, state.owner
    if owner is None:
        return Transition(MANUAL, slot, reason=f"slot {slot} has no owner; fix coverage first (`runbook check`)")
    stranded = state.holders() - {source, target, owner}
    if stranded:
        holder = sorted(stranded)[0]
        return Transition(RESCUE, slot, holder, owner, reason=f"{state.keys[holder]} keys on a master that does not "
                                                              "own the slot: move them to the owner")
    if source == target:
        if owner == target and not (state.holders() - {target}):
            if state.is_open:
                return Transition(CLOSE, slot, source, target, nodes=_marked(state),
                                  reason="the owner holds every key of the slot: clear the markers left on it")
            return _finished(state, target)
        return Transition(MANUAL, slot, source, target, reason=f"slot {slot}: source and target are one shard now, "
                                                                "but the slot is not wholly on it")
    foreign = (set(state.migrating) | set(state.importing)) - {source, target}
    if foreign:
        return Transition(MANUAL, slot, source, target, nodes=tuple(sorted(foreign)),
                          reason=f"slot {slot} is also marked open on {', '.join(n[:8] for n in sorted(foreign))}")
    if owner not in (source, target):
        return Transition(MANUAL, slot, source, target, reason=f"slot {slot} is owned by {owner[:8]}, neither the "
                                                                "source nor the target")
    on_source = state.keys.get(source, 0)
    if owner == target:
        if on_source:
            if state.migrating.get(source) != target:
                return Transition(MANUAL, slot, source, target,
                                  reason=f"slot {slot} is owned by the target but {on_source} keys are still on the "
                                         "source, which is not migrating it; repair by hand")
            return Transition(DRAIN, slot, source, target, reason="keys left on the source")
        if state.is_open:
            return Transition(HANDOVER, slot, source, target, reason="the target owns the slot; clear the markers")
        return _finished(state, target)
    knows_owner = state.believed.get(target, source) == source
    fully_open = state.importing.get(target) == source and state.migrating.get(source) == target and knows_owner
    if not fully_open:
        return Transition(OPEN, slot, source, target, reason="open (or re-open towards the shard's master)")
    if on_source:
        return Transition(DRAIN, slot, source, target, reason=f"{on_source} keys on the source" if on_source > 0 else
                          "count the source's keys again now that it is migrating the slot")
    return Transition(HANDOVER, slot, source, target, reason="the source holds no key of the slot")


def _marked(state: SlotState) -> tuple[str, ...]:
    return tuple(sorted(set(state.migrating) | set(state.importing)))


def _finished(state: SlotState, target: str) -> Transition:
    return Transition(DONE, state.slot, target=target, reason="the target owns the slot and holds all its keys")


def repair_step(state: SlotState, source: str, target: str) -> Transition:
    """Repair of an interrupted move: close it when nothing moved under its markers and the source never sent an ASK
    (IMPORTING alone), else finish it (`next_step`). Once the source is MIGRATING a client's ASK may still be on its
    way to the target, so "nothing moved" cannot be known: closing would leave that write where no client reads it."""
    moved = state.keys.get(target, 0) or state.owner == target
    if state.owner == source and not moved and not (state.holders() - {source}):
        if state.migrating:
            return next_step(state, source, target)
        marked = _marked(state)
        if marked:
            return Transition(CLOSE, state.slot, source, target, nodes=marked,
                              reason="nothing was moved under the markers: clear them")
        return Transition(DONE, state.slot, target=source, reason="not open, nothing moved")
    return next_step(state, source, target)


def intent_from_markers(state: SlotState, shard_of) -> tuple[str, str] | None:
    """(source, target) of a move another run or tool left open, read from its markers; None when they disagree.

    `shard_of` maps a node id to the master now serving its shard (a marker may name a node that failed over).
    """
    pairs = {(shard_of(n), shard_of(p)) for n, p in state.migrating.items()}
    pairs |= {(shard_of(p), shard_of(n)) for n, p in state.importing.items()}
    pairs.discard((None, None))
    if len(pairs) != 1:
        return None
    source, target = next(iter(pairs))
    if source is None or target is None:
        return None
    return source, target


class Shards:
    """Which master serves the shard of a node now: itself, or the replica that took over from it.

    Known from the live cluster (a replica's master) and from every (replica, master) pair ever seen, which the
    journal keeps across runs, so a failover before `resume` is still followed.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self.pairs: set[tuple[str, str]] = set(pairs)

    def learn(self, replicas: Mapping[str, str]) -> list[tuple[str, str]]:
        """Record replica → master pairs; returns the ones not seen before."""
        new = [(r, m) for r, m in replicas.items() if (r, m) not in self.pairs]
        self.pairs.update(new)
        return new

    def current(self, node_id: str, masters: set[str], master_of: Mapping[str, str | None]) -> str | None:
        """The healthy master now serving `node_id`'s shard, or None while no replica has taken over.

        `masters` are the healthy masters' ids; `master_of` maps each node to the master it replicates now.
        """
        seen: set[str] = set()
        todo = [node_id]
        while todo:
            node = todo.pop(0)
            if node in seen:
                continue
            seen.add(node)
            if node in masters:
                return node
            now = master_of.get(node)
            if now:
                todo.append(now)
            todo.extend(r for r, m in sorted(self.pairs) if m == node)
            todo.extend(m for r, m in sorted(self.pairs) if r == node)
        return None
