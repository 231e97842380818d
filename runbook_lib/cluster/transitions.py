"""The slot transitions, the "act" part of `slots.next_step`: open, drain, hand over (target first, then the source),
close and rescue, each for many slots in one pipeline per node, and the BUSYKEY resolution (`SAME_COPY_DEL_SCRIPT`).

Every transition is journaled before it sends a command, and a failpoint (`transition.step`) follows each journal
entry and each command that changes the cluster (tests/failpoints.py checks it); big keys stop a slot before it opens.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import replace
from typing import Callable

import redis

from runbook_lib.cluster import errors
from runbook_lib.cluster.connection import migrate_auth_args
from runbook_lib.cluster.journal import Journal, failpoint
from runbook_lib.cluster.nodes import Nodes, TopologyChanged
from runbook_lib.cluster.plan import Move
from runbook_lib.cluster.rounds import Rounds
from runbook_lib.cluster.slots import CLOSE, DRAIN, HANDOVER, OPEN, RESCUE, UNKNOWN, SlotState, Transition
from runbook_lib.config import Migration
from runbook_lib.exceptions import MigrationError

BIG_KEYS_SCRIPT = """local out = {}
for _, key in ipairs(KEYS) do
  local bytes = redis.call('MEMORY', 'USAGE', key)
  if bytes and bytes >= tonumber(ARGV[1]) then out[#out + 1] = key; out[#out + 1] = bytes end
end
return out"""
"""Sizes a slot's keys in one call; used while the slot is not migrating (then a missing key is no error)."""


SAME_COPY_DEL_SCRIPT = """local copy = redis.call('DUMP', KEYS[1])
if not copy then return 0 end
if copy ~= ARGV[1] then return -1 end
local ttl = redis.call('PTTL', KEYS[1])
local want = tonumber(ARGV[2])
if want < 0 then
  if ttl ~= -1 then return -2 end
elseif ttl < 0 or ttl > want + 5 or ttl < want - tonumber(ARGV[3]) then
  return -2
end
redis.call('DEL', KEYS[1])
return 1"""
"""Deletes a key only while it equals the other copy: same DUMP payload (ARGV[1]) and the same expiry, its PTTL within
the time since the other copy's PTTL (ARGV[2], -1 for none) was read (ARGV[3] ms); 1 deleted, 0 gone, -1 other value,
-2 other expiry. One script, so no client write can fall between the comparison and the DEL."""

ASK_GRACE_S = 0.5
"""How long an ASK redirect a source sent before it stopped migrating may take to reach the importing node: a close
waits this long before it counts that node's keys."""

BUSY_TTL_SLACK_MS = 50
"""Added to the measured time between reading the target's PTTL and the script, for the source's clock tick."""


class Transitions:
    """Sends one kind of transition for a group of slots that share a source and a target; `settings` gives the pace's
    settings of the moment, `threshold` and `allowed` the big-key params."""

    def __init__(self, nodes: Nodes, rounds: Rounds, journal: Journal, settings: Callable[[], Migration],
                 threshold: int | None, allowed: dict[str, int]) -> None:
        self.nodes = nodes
        self.rounds = rounds
        self.journal = journal
        self._settings = settings
        self.threshold = threshold
        self.allowed = allowed
        self._auth = migrate_auth_args(nodes.creds)

    @property
    def settings(self) -> Migration:
        return self._settings()

    def act(self, kind: str, group: list[Transition], states: dict[int, SlotState], assigned: list[Move] | None) -> int:
        """Send the transition `kind` for every slot of `group`, updating `states`; returns the keys moved (a
        hand-over adds its slots to `assigned`)."""
        if kind == OPEN:
            self._open(group, states)
        elif kind == DRAIN:
            return self._drain(group, states)
        elif kind == HANDOVER:
            self._handover(group, states, assigned)
        elif kind == CLOSE:
            for x in group:
                self._close(x, states)
        elif kind == RESCUE:
            return sum(self._rescue(x, states) for x in group)
        return 0

    def _open(self, group: list[Transition], states: dict[int, SlotState]) -> None:
        """Target IMPORTING, then source MIGRATING, each only where missing; big keys stop it before anything opens.

        A target that imported the slot from a master that failed over ignored the new master's claim (it still names
        the dead one, or nobody, and would answer CLUSTERDOWN to every RESTORE): it is told the owner first.
        """
        s, t = group[0].source, group[0].target
        fresh = [x.slot for x in group if not states[x.slot].is_open and states[x.slot].owner == s]
        if fresh and self.threshold:
            first = self.nodes.pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)
                                            for slot in fresh])
            self._guard(s, dict(zip(fresh, first)), is_open=False)
        slots = [x.slot for x in group]
        self.journal.record("slots_open", slots=slots, source=s, target=t)
        failpoint("open.journaled")
        unaware = [slot for slot in slots if states[slot].believed.get(t, s) not in (s, t)]
        self.nodes.check(t, self.nodes.pipeline(t, [("CLUSTER", "SETSLOT", slot, "NODE", s) for slot in unaware],
                                                raise_on_error=False))
        if unaware:
            failpoint("open.owner_told")
        importing = [slot for slot in slots if states[slot].owner != t and states[slot].importing.get(t) != s]
        self.nodes.check(t, self.nodes.pipeline(t, [("CLUSTER", "SETSLOT", slot, "IMPORTING", s)
                                                    for slot in importing], raise_on_error=False),
                         ok=(errors.ALREADY_OWNER,))
        failpoint("open.importing")
        migrating = [slot for slot in slots if states[slot].owner == s and states[slot].migrating.get(s) != t]
        self.nodes.check(s, self.nodes.pipeline(s, [("CLUSTER", "SETSLOT", slot, "MIGRATING", t)
                                                    for slot in migrating], raise_on_error=False))
        failpoint("open.migrating")
        for slot in slots:
            states[slot] = states[slot].opened(s, t)

    def _drain(self, group: list[Transition], states: dict[int, SlotState]) -> int:
        """One round of MIGRATE per slot (up to `keys_per_migrate` keys each), then each slot's count on the source."""
        s, t = group[0].source, group[0].target
        slots = [x.slot for x in group]
        listed = self.nodes.pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)
                                         for slot in slots])
        slot_keys = dict(zip(slots, listed))
        sizes = self.rounds.sizes(s, slot_keys)
        self._guard(s, slot_keys, is_open=True, sizes=sizes)
        host, port = self.nodes.migrate_endpoint(t)
        limit = self.rounds.migrate_bytes(s)
        migrates = [(slot, keys, ("MIGRATE", host, port, "", 0, timeout, *self._auth, "KEYS", *keys))
                    for slot in slots for keys, timeout in self.rounds.groups(slot_keys[slot], sizes, limit)]
        self.journal.record("keys_migrating", slots={slot: len(k) for slot, k in slot_keys.items()}, source=s,
                            target=t)
        failpoint("drain.journaled")
        weights = [sum(sizes.get(k, 0) for k in keys) for _, keys, _ in migrates]
        replies, cost = self.rounds.migrate(s, [m[2] for m in migrates],
                                            [("CLUSTER", "COUNTKEYSINSLOT", x) for x in slots], weights)
        counts = replies[len(migrates):]
        moved: dict[int, int] = defaultdict(int)
        failed: list[tuple[int, list[bytes], Exception]] = []
        for (slot, keys, _), reply in zip(migrates, replies):
            if isinstance(reply, Exception):
                failed.append((slot, keys, reply))
            else:
                moved[slot] += len(keys)
        self.journal.record("keys_migrated", slots=dict(moved), source=s, target=t, bytes=sum(weights),
                            migrates=len(migrates), block_ms=round(sum(cost.blocked) * 1000, 3),
                            max_block_ms=round(max(cost.blocked, default=0.0) * 1000, 3),
                            rested_ms=round(cost.rested * 1000, 3))
        failpoint("drain.migrated")
        for slot, left in zip(slots, counts):
            n = int(left) if isinstance(left, int) else states[slot].keys.get(s, 0)
            states[slot] = states[slot].drained(s, t, n, moved.get(slot, 0))
        topology = None
        for slot, keys, error in failed:
            kind = errors.classify(error, during_migrate=True)
            if kind == errors.BUSYKEY:
                self._resolve_busy(slot, s, t, keys, target_asking=True)
                states[slot] = states[slot].drained(s, t, states[slot].keys.get(s, 0) or 1, 0)
            elif kind == errors.TOPOLOGY:
                topology = TopologyChanged(f"{self.nodes.name(s)}: {error}")
            else:
                self._migrate_failed(slot, s, t, keys, error)
        if topology is not None:
            raise topology
        return sum(moved.values())

    def _handover(self, group: list[Transition], states: dict[int, SlotState], assigned: list[Move] | None) -> None:
        """SETSLOT NODE on the target first, then the source (redis#10381).

        Only reached when no master but the target holds keys of the slot and the source is MIGRATING it (so it
        creates no new keys of it): the source cannot lose keys when it learns the new owner (redis#2969). A source
        that refuses because it holds keys after all stops the run loudly, its keys located.
        """
        s, t = group[0].source, group[0].target
        slots = [x.slot for x in group]
        for slot in slots:
            if states[slot].holders() - {t}:
                raise MigrationError(slot, "refusing to hand over a slot whose keys are not all on the target")
        self.journal.record("slots_handover", slots=slots, source=s, target=t)
        failpoint("handover.journaled")
        self.nodes.check(t, self.nodes.pipeline(t, [("CLUSTER", "SETSLOT", slot, "NODE", t) for slot in slots],
                                                raise_on_error=False))
        failpoint("handover.target")
        replies = self.nodes.pipeline(s, [("CLUSTER", "SETSLOT", slot, "NODE", t) for slot in slots],
                                      raise_on_error=False)
        refused = [slot for slot, r in zip(slots, replies)
                   if isinstance(r, Exception) and errors.classify(r) == errors.HOLDS_KEYS]
        if refused:
            done = [slot for slot, r in zip(slots, replies) if not isinstance(r, Exception)]
            self._assigned(done, s, t, states, assigned)
            self._handover_refused(refused, s, t)
        self.nodes.check(s, replies)
        failpoint("handover.source")
        self._assigned(slots, s, t, states, assigned)

    def _assigned(self, slots: list[int], s: str, t: str, states: dict[int, SlotState],
                  assigned: list[Move] | None) -> None:
        """Journal and remember slots both sides of a hand-over now give to the target."""
        if not slots:
            return
        self.journal.record("slots_assigned", slots=slots, source=s, target=t)
        for slot in slots:
            states[slot] = states[slot].handed_over(t)
            if assigned is not None:
                assigned.append(Move(slot, s, t))

    def _handover_refused(self, slots: list[int], s: str, t: str) -> None:
        """The source refused to give up slots the target already claims because it holds keys of them: the moment
        redis#2969 loses keys elsewhere. Locate them, journal it and stop; the slots stay MIGRATING on the source."""
        counts = self.nodes.pipeline(s, [("CLUSTER", "COUNTKEYSINSLOT", slot) for slot in slots], raise_on_error=False)
        sample = self.nodes.pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slots[0], 5)], raise_on_error=False)[0]
        names = [k.decode(errors="replace") for k in sample] if isinstance(sample, list) else []
        self.journal.record("handover_refused", slots=slots, source=s, target=t,
                            source_keys={slot: n for slot, n in zip(slots, counts) if isinstance(n, int)},
                            sample=names)
        raise MigrationError(slots[0], f"{self.nodes.name(s)} refused to hand slots {slots[:8]} to "
                                       f"{self.nodes.name(t)}, which already claims them, because it still holds keys "
                                       f"of them ({dict(zip(slots, counts))} keys, e.g. {names}); nothing was dropped. "
                                       "`runbook check` shows them; `runbook resume` moves them to the target first")

    def _close(self, step: Transition, states: dict[int, SlotState]) -> None:
        """Clear markers nothing was moved under: the MIGRATING side first (it then answers no more ASKs), then, once
        ASKs already sent had time to land, each IMPORTING side only while it still holds no key of the slot,
        counted and cleared in one transaction; a side that holds keys keeps its marker and the move is finished."""
        slot, state = step.slot, states[step.slot]
        first = [n for n in step.nodes if n in state.migrating]
        then = [n for n in step.nodes if n not in state.migrating]
        self.journal.record("slot_closing", slot=slot, nodes=list(step.nodes), reason=step.reason)
        failpoint("close.journaled")
        for node in first:
            self.nodes.check(node, self.nodes.pipeline(node, [("CLUSTER", "SETSLOT", slot, "STABLE")],
                                                       raise_on_error=False))
        if first and then:
            failpoint("close.source")
            time.sleep(ASK_GRACE_S)
        closed, keys = list(first), dict(state.keys)
        for node in then:
            count = int(self.nodes.pipeline(node, [("CLUSTER", "COUNTKEYSINSLOT", slot)])[0])
            if count == 0:
                count = self._stable_if_empty(node, slot)
                closed.append(node)
            keys[node] = count
        kept = [n for n in then if n not in closed]
        failpoint("close.target")
        if kept:
            self.journal.record("slot_close_kept", slot=slot, closed=closed, kept=kept,
                                keys={n: keys[n] for n in kept}, reason="keys arrived under the marker: finish the move")
        else:
            self.journal.record("slot_closed", slot=slot, nodes=closed,
                                stranded={n: keys[n] for n in then if keys[n]})
        states[slot] = replace(state.closed(closed), keys=keys)

    def _stable_if_empty(self, node: str, slot: int) -> int:
        """SETSLOT STABLE on a node in one transaction with its key count of the slot; returns that count (a key that
        slipped in between is then stranded, and the next step rescues it to the owner)."""
        pipe = self.nodes.client(node).pipeline(transaction=True)
        pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        pipe.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        try:
            count, reply = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.nodes.name(node)} unreachable: {e}") from e
        self.nodes.check(node, [reply])
        return int(count) if isinstance(count, int) else UNKNOWN

    def _rescue(self, step: Transition, states: dict[int, SlotState]) -> int:
        """Keys on a master that does not own their slot go to the owner: IMPORTING on the holder lets it serve an
        ASKING MIGRATE of them; then the marker goes. Equal copies on both sides keep the owner's. The rescue is
        journaled as an intent first, so an interrupted one is finished towards the owner."""
        slot, holder, owner = step.slot, step.source, step.target
        self.journal.record("slot_rescue", slot=slot, holder=holder, owner=owner, keys=states[slot].keys.get(holder))
        failpoint("rescue.journaled")
        if states[slot].importing.get(holder) != owner:
            self.nodes.check(holder, self.nodes.pipeline(holder, [("CLUSTER", "SETSLOT", slot, "IMPORTING", owner)],
                                                         raise_on_error=False))
            failpoint("rescue.importing")
        host, port = self.nodes.migrate_endpoint(owner)
        moved = 0
        while True:
            keys = self.nodes.pipeline(holder, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)])[0]
            if not keys:
                break
            reply = self.nodes.pipeline(holder, [("ASKING",), ("MIGRATE", host, port, "", 0,
                                                               self.settings.migrate_timeout_ms, *self._auth, "KEYS",
                                                               *keys)], raise_on_error=False)[1]
            failpoint("rescue.round")
            if isinstance(reply, Exception):
                if errors.classify(reply, during_migrate=True) != errors.BUSYKEY:
                    self._migrate_failed(slot, holder, owner, keys, reply)
                self._resolve_busy(slot, holder, owner, keys, source_asking=True)
                failpoint("rescue.settled")
                continue
            moved += len(keys)
        left = self._stable_if_empty(holder, slot)
        failpoint("rescue.stable")
        self.journal.record("slot_rescued", slot=slot, holder=holder, owner=owner, keys=moved, left=left)
        states[slot] = states[slot].rescued(holder)
        if left:
            states[slot] = states[slot].drained(holder, owner, left, 0)
        return moved

    # -- helpers ----------------------------------------------------------------------------------------------

    # -- helpers ----------------------------------------------------------------------------------------------

    def _guard(self, src_id: str, slot_keys: dict[int, list[bytes]], is_open: bool,
               sizes: dict[bytes, int] | None = None) -> None:
        """Stop at a key over the big-key threshold unless params allow it: before its slot opens, for the first keys.

        While a slot is migrating a key that was just deleted or expired would make a script answer ASK/TRYAGAIN,
        so open slots are sized key by key (`sizes`, from `_sizes`) and such keys are skipped.
        """
        todo = {slot: keys for slot, keys in slot_keys.items() if keys}
        if not todo or not self.threshold:
            return
        found: list[tuple[int, bytes, int]] = []
        if is_open:
            sizes = self.rounds.sizes(src_id, todo) if sizes is None else sizes
            found = [(slot, k, sizes[k]) for slot, keys in todo.items() for k in keys
                     if sizes.get(k, 0) >= self.threshold]
        else:
            replies = self.nodes.pipeline(src_id, [("EVAL", BIG_KEYS_SCRIPT, len(keys), *keys, self.threshold)
                                                   for keys in todo.values()])
            for slot, reply in zip(todo, replies):
                found += [(slot, k, n) for k, n in zip(reply[::2], reply[1::2])]
        for slot, key, size in found:
            name = key.decode(errors="replace")
            if name in self.allowed:
                continue
            self.journal.record("bigkey_stop", slot=slot, key=name, bytes=size)
            where = "its slot is open, with the keys moved so far on the target" if is_open else "not opening its slot"
            raise MigrationError(slot, f"key {name!r} is {size / 1048576:.1f} MB, over the big-key threshold "
                                       f"({self.threshold / 1048576:.1f} MB); {where}. Split or delete it, or allow it "
                                       "in params (bigkeys.allow: {key: migrate_timeout_ms}), then `runbook resume`")

    def _migrate_failed(self, slot: int, src_id: str, tgt_id: str, keys: list[bytes], error: Exception) -> None:
        """A MIGRATE that could not finish: locate every key, journal it, and stop with the slot left open."""
        self.journal.record("migrate_failed", slot=slot, source=src_id, target=tgt_id, keys=len(keys), error=str(error))
        try:
            sides = self._sides(src_id, tgt_id, keys)
            located = (f"Keys: {sides['source_only']} only on the source, {sides['target_only']} only on the target, "
                       f"{sides['both']} on both, {sides['neither']} on neither (deleted or expired)")
            self.journal.record("keys_located", slot=slot, **sides)
        except (redis.RedisError, OSError) as e:
            located = f"Could not locate the keys ({e})"
        raise MigrationError(slot, f"MIGRATE of {len(keys)} keys from {self.nodes.name(src_id)} to "
                                   f"{self.nodes.name(tgt_id)} failed: {error}. {located}; no copy was removed. The "
                                   "slot is left open: run `runbook check`, then `runbook resume`")

    def _sides(self, src_id: str, tgt_id: str, keys: list[bytes]) -> dict[str, int]:
        """How many of these keys each side holds, so a failed MIGRATE is accounted for key by key."""
        on_source = self.nodes.each(src_id, "EXISTS", keys, asking=False)
        on_target = self.nodes.each(tgt_id, "EXISTS", keys, asking=True)
        pairs = [(s == 1, t == 1) for s, t in zip(on_source, on_target)]
        return {"source_only": sum(s and not t for s, t in pairs), "target_only": sum(t and not s for s, t in pairs),
                "both": sum(s and t for s, t in pairs), "neither": sum(not s and not t for s, t in pairs)}

    def _resolve_busy(self, slot: int, src_id: str, tgt_id: str, keys: list[bytes], target_asking: bool = False,
                      source_asking: bool = False) -> None:
        """Keys on both sides after a MIGRATE that did not finish: the source copy goes only when it equals the
        target's in payload and expiry, checked and deleted in one script on the source, so a client write to the
        source copy in between is never lost; a different copy stops the run with both kept."""
        started = time.monotonic()
        asking = [("ASKING",)] if target_asking else []
        target = self.nodes.pipeline(tgt_id, [c for k in keys for c in (*asking, ("DUMP", k), *asking, ("PTTL", k))],
                                     raise_on_error=False)
        step = 4 if target_asking else 2
        payloads, ttls = target[step // 2 - 1::step], target[step - 1::step]
        todo = [(k, p, t) for k, p, t in zip(keys, payloads, ttls)
                if isinstance(p, bytes) and isinstance(t, int) and t != -2]
        if not todo:
            return
        self.journal.record("busykey_compare", slot=slot, source=src_id, target=tgt_id, keys=len(todo))
        failpoint("busy.journaled")
        slack_ms = int((time.monotonic() - started) * 1000) + BUSY_TTL_SLACK_MS
        commands = [c for k, payload, ttl in todo
                    for c in (*([("ASKING",)] if source_asking else []),
                              ("EVAL", SAME_COPY_DEL_SCRIPT, 1, k, payload, ttl, slack_ms))]
        replies = self.nodes.pipeline(src_id, commands, raise_on_error=False)
        replies = replies[1::2] if source_asking else replies
        failpoint("busy.deleted")
        deleted = [k.decode(errors="replace") for (k, _, _), reply in zip(todo, replies) if reply == 1]
        if deleted:
            self.journal.record("busykey_same_value", slot=slot, keys=deleted, action="deleted the source copies")
        for (key, payload, _), reply in zip(todo, replies):
            if reply in (-1, -2):
                name = key.decode(errors="replace")
                what = "values" if reply == -1 else "expiry (TTL)"
                self.journal.record("busykey_conflict", slot=slot, key=name, differs=what, target_bytes=len(payload))
                raise MigrationError(slot, f"key {name!r} exists on both {self.nodes.name(src_id)} and "
                                           f"{self.nodes.name(tgt_id)} with different {what}; both copies are kept "
                                           "and the slot is left open. Decide which copy is right, delete the other, "
                                           "then `runbook resume`")
