"""The slot mover: drives slots through the state machine of `slots`, pipelining one transition over many slots.

One worker per source master; each moves its slots in groups of `slots_in_flight` that share a target. For a group
the mover reads the slots' state from the live cluster, asks `slots.next_step` what each needs, and sends one kind
of transition for all slots that need it in one pipeline per node: open, drain, hand over (target first, then the
source), rescue or close. A single slot is a group of one: there is no second implementation. Every transition is
journaled before it is sent; errors are classified by `errors.classify`; a failover of the source or the target is
followed to the master now serving its shard, the slots' state is read again and the same decisions go on.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import redis
from tqdm.auto import tqdm

from runbook_lib.cluster import errors
from runbook_lib.cluster.connection import NodeClients, application_connections, migrate_auth_args
from runbook_lib.cluster.journal import Journal, failpoint
from runbook_lib.cluster.plan import Move, Plan
from runbook_lib.cluster.replicas import require_replicas
from runbook_lib.cluster.slots import (
    CLOSE,
    DONE,
    DRAIN,
    HANDOVER,
    MANUAL,
    OPEN,
    ORDER,
    RESCUE,
    UNKNOWN,
    Shards,
    SlotState,
    Transition,
    next_step,
    repair_step,
)
from runbook_lib.cluster.topology import Topology, observe_any
from runbook_lib.config import BigKeys, Credentials, Migration, parse_address
from runbook_lib.exceptions import BadInput, CheckFailed, MigrationError, PaceStop

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


class Pace(Protocol):
    """What sets the pace (the watch layer's governor or throttle): the settings before each batch, and before each
    group of slots a worker starts, where it may wait or raise `PaceStop` to stop the run between slots."""

    def before_batch(self, number: int) -> Migration: ...

    def before_group(self) -> Migration: ...

    def end(self) -> None: ...


INITIAL_MIGRATE_BYTES_PER_S = 20e6
"""Until a source's MIGRATE throughput is measured, assume this (cautious: loopback measures several times it)."""


class TopologyChanged(Exception):
    """A node stopped being what the mover thought (failover, not a master, unreachable): read again and retry."""


class Unsettled(MigrationError):
    """The cluster did not settle within the convergence timeout: every slot of the group is left as it is."""


@dataclass
class BatchResult:
    """What one batch did: slots and keys moved, wall time, and the timestamps for charts."""

    batch: int
    slots: int
    keys: int
    seconds: float
    started: float
    ended: float
    errors: list[str] = field(default_factory=list)


class Pacer:
    """Spaces slot moves evenly in time over every thread that shares it: at most `rate` slots started per second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self, slots: int, rate: float) -> float:
        """Sleep until it is the turn of these `slots` (no wait when rate is 0); returns the seconds slept."""
        if rate <= 0:
            return 0.0
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + slots / rate
        wait = start - now
        if wait > 0:
            time.sleep(wait)
        return wait


def chunk_by_bytes(keys: list[bytes], sizes: dict[bytes, int], limit: int | None) -> list[list[bytes]]:
    """Split keys, in order, into runs of at most `limit` bytes by `sizes` (unknown size: 0), one key at least each
    (pure); no limit: one run."""
    if not keys:
        return []
    if limit is None:
        return [list(keys)]
    runs: list[list[bytes]] = [[]]
    total = 0
    for k in keys:
        size = sizes.get(k, 0)
        if runs[-1] and total + size > limit:
            runs.append([])
            total = 0
        runs[-1].append(k)
        total += size
    return runs


def next_group(moves: list[Move], in_flight: int, knows: Callable[[str], bool]) -> list[Move]:
    """The next `in_flight` moves, cut before the first whose target the applications do not know yet (`knows`, asked
    of every target in the group): towards such a target one slot goes alone, so that its hand-over teaches the
    clients the new master before more slots open towards it (an ASK to an unknown node fails stock redis-py,
    redis-py#4015) (pure)."""
    if not knows(moves[0].target):
        return moves[:1]
    group = [moves[0]]
    for m in moves[1: max(1, in_flight)]:
        if m.target != moves[0].target and not knows(m.target):
            break
        group.append(m)
    return group


def journal_pairs(journal: Journal) -> list[tuple[str, str]]:
    """Every (replica, master) pair the journal recorded, so a failover before a resume is still followed."""
    return [tuple(p) for e in journal.entries() if e["event"] == "replication" for p in e.get("pairs", [])]


class Mover:
    """Moves slots between masters of one cluster through the slot state machine, journaling every change."""

    def __init__(self, topology: Topology, creds: Credentials, settings: Migration, journal: Journal,
                 bigkeys: BigKeys | None = None) -> None:
        self.creds = creds
        self.settings = settings
        self.journal = journal
        self.threshold = bigkeys.threshold_bytes if bigkeys else None
        self.allowed = dict(bigkeys.allow) if bigkeys else {}
        longest = max([settings.migrate_timeout_ms, *self.allowed.values()])
        self._clients = NodeClients(creds, timeout=longest / 1000 + 5)
        self._broadcaster: ThreadPoolExecutor | None = None
        self._auth = migrate_auth_args(creds)
        self._refresh_lock = threading.Lock()
        self._pacer = Pacer()
        self._pace: Pace | None = None
        self._stop = threading.Event()
        self._throughput: dict[str, float] = {}
        self._learn_lock = threading.Lock()
        self._known: set[str] = set()
        self._learning: dict[str, tuple[float, float]] = {}
        self.address: dict[str, str] = {}
        self.migrate_to: dict[str, tuple[str, int]] = {}
        self.shards = Shards(journal_pairs(journal))
        self._adopt(topology)

    def _adopt(self, topo: Topology) -> None:
        self.topo = topo
        self.address.update({e.id: e.address for e in topo.nodes.values()})
        self.migrate_to.update({e.id: (e.ip, e.port) for e in topo.nodes.values() if e.ip and e.port})
        self.masters = [m.id for m in topo.masters()]
        self._master_of = {e.id: e.master_id for e in topo.nodes.values() if not e.is_master and e.master_id}
        learned = self.shards.learn({r: m for r, m in self._master_of.items() if m})
        if learned:
            self.journal.record("replication", pairs=[list(p) for p in learned])

    def refresh(self) -> None:
        """Re-read the cluster (from any reachable master) after an error that may mean a failover."""
        with self._refresh_lock:
            self._adopt(observe_any([self.topo.seed] + [self.address[m] for m in self.masters], self.creds))

    def current_master(self, node_id: str) -> str:
        """The master now serving the shard `node_id` served: itself, or the replica that took over from it."""
        found = self.shards.current(node_id, set(self.masters), self._master_of)
        if found is None:
            raise TopologyChanged(f"{self.name(node_id)} is not a healthy master and no replica has taken over yet")
        return found

    def _migrate_endpoint(self, node_id: str) -> tuple[str, int]:
        """Where a source's MIGRATE reaches a node: the IP and port the cluster knows it by (node to node, like the
        bus), not the announced hostname, which only the clients may be able to resolve."""
        return self.migrate_to.get(node_id) or parse_address(self.address[node_id])

    def name(self, node_id: str) -> str:
        return self.address.get(node_id, node_id[:8])

    def client(self, node_id: str) -> redis.Redis:
        """A cached client for a node id, shared by the worker threads (redis-py pools connections)."""
        return self._clients.get(self.address[node_id])

    # -- the plan, batch by batch -------------------------------------------------------------------------------

    def run(self, plan: Plan, progress: bool = True, throttle: "Pace | None" = None,
            max_batches: int | None = None) -> list[BatchResult]:
        """Move the plan batch by batch (at most `max_batches` of them); a pace may shrink batches, change the pace
        while slots move, or stop the run between slots."""
        results: list[BatchResult] = []
        queue = [list(b) for b in plan.batches]
        bar = tqdm(total=len(plan.moves), unit="slot", desc="migrating", disable=not progress)
        self._broadcaster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broadcast")
        self._pace = throttle
        try:
            while queue and (max_batches is None or len(results) < max_batches):
                number = len(results) + 1
                if throttle is not None:
                    self.settings = throttle.before_batch(number)
                batch = queue.pop(0)
                if len(batch) > self.settings.slots_per_batch:
                    queue.insert(0, batch[self.settings.slots_per_batch:])
                    batch = batch[: self.settings.slots_per_batch]
                self.require_second_copies(number, batch)
                result = self.move_batch(number, batch)
                results.append(result)
                bar.update(result.slots)
                bar.set_postfix(batch=number, keys=sum(r.keys for r in results))
                if self.settings.pause_between_batches_s and queue:
                    time.sleep(self.settings.pause_between_batches_s)
        finally:
            self._broadcaster.shutdown(wait=True)
            self._broadcaster = None
            self._pace = None
            if throttle is not None:
                throttle.end()
            bar.close()
        return results

    def require_second_copies(self, number: int, batch: list[Move]) -> None:
        """Before every batch, each target master the batch moves slots to has a replica in sync (a replica that died
        mid-run would leave every later key in one copy): otherwise stop between batches, nothing open, for `runbook
        resume` once the replica is back, unless params allow a master without a replica."""
        self.refresh()
        targets = list(dict.fromkeys(self.current_master(m.target) for m in batch))
        try:
            require_replicas(self.topo, self.creds, targets, self.settings.allow_master_without_replica)
        except CheckFailed as e:
            self.journal.record("replica_stop", batch=number, targets=[self.name(t) for t in targets], why=str(e))
            raise PaceStop(f"stopped before batch {number}, no slot open: {e}. `runbook resume` goes on once the "
                           "replica is in sync again") from None

    def move_batch(self, number: int, batch: list[Move]) -> BatchResult:
        """Move one batch: a worker per source master, then tell the other masters the new owners.

        Whatever a worker meets, the batch ends with a `batch_end` entry naming every worker's error.
        """
        started = time.time()
        self.journal.record("batch_start", batch=number, slots=[m.slot for m in batch])
        by_source: dict[str, list[Move]] = defaultdict(list)
        for m in batch:
            by_source[m.source].append(m)
        keys = 0
        assigned: list[Move] = []
        failures: list[Exception] = []
        self._stop.clear()
        with ThreadPoolExecutor(max_workers=len(by_source)) as pool:
            for worker in [pool.submit(self._move_all, moves, assigned) for moves in by_source.values()]:
                try:
                    keys += worker.result()
                except Exception as e:  # every worker's error is journaled, the first is raised
                    failures.append(e)
        if self._broadcaster is not None:
            self._broadcaster.submit(self._broadcast_owners, list(assigned))
        else:
            self._broadcast_owners(assigned)
        ended = time.time()
        self.journal.record("batch_end", batch=number, keys=keys, slots=len(assigned),
                            seconds=round(ended - started, 3), errors=[str(e) for e in failures])
        if failures:
            first = next((e for e in failures if isinstance(e, MigrationError)), failures[0])
            if isinstance(first, PaceStop):
                raise first
            if not isinstance(first, MigrationError):
                raise MigrationError(batch[0].slot, f"batch {number} stopped: {first}; `runbook check` shows the "
                                                    "state, `runbook resume` finishes it") from first
            raise first
        return BatchResult(batch=number, slots=len(assigned), keys=keys, seconds=ended - started, started=started,
                           ended=ended)

    def _move_all(self, moves: list[Move], assigned: list[Move]) -> int:
        """One source's worker: its slots in groups of `slots_in_flight`, stopping at its first error and at any
        other worker's (between groups, every slot of its own group closed or handed over)."""
        keys, i = 0, 0
        try:
            while i < len(moves) and not self._stop.is_set():
                if self._pace is not None:
                    self.settings = self._pace.before_group()
                group = self.next_group(moves[i:])
                i += len(group)
                for target in dict.fromkeys(m.target for m in group):
                    same_target = [m.slot for m in group if m.target == target]
                    self._pacer.wait(len(same_target), self.settings.max_slots_per_s)
                    keys += self.drive(same_target, group[0].source, target, assigned=assigned)
        except Exception:
            self._stop.set()
            raise
        return keys

    def next_group(self, moves: list[Move]) -> list[Move]:
        """The next group of this worker's moves (see `next_group`), asking CLIENT LIST which targets are known."""
        return next_group(moves, self.settings.slots_in_flight, self.clients_know)

    def clients_know(self, target: str) -> bool:
        """Whether the applications know the new master `target`: it has as many application connections (not the
        cluster's own: replication, MIGRATE from other nodes, ours) as the least connected other master (CLIENT LIST,
        checked at most twice a second), or `client_learn_wait_s` has passed since the first check (journaled either
        way). A client that does not know it fails on an ASK to it."""
        with self._learn_lock:
            if target in self._known or self.settings.client_learn_wait_s <= 0 or target not in self.masters:
                return True
            now = time.monotonic()
            deadline, checked = self._learning.setdefault(target, (now + self.settings.client_learn_wait_s, 0.0))
            if now - checked < 0.5:
                return False
            self._learning[target] = (deadline, now)
            try:
                node_ips = {ip for ip, _ in self.migrate_to.values()}
                counts = {m: application_connections(self.client(m), node_ips) for m in self.masters}
            except (redis.RedisError, OSError):
                return False
            others = [n for m, n in counts.items() if m != target]
            fewest = min(others) if others else 0
            if counts[target] >= fewest:
                self._known.add(target)
                self.journal.record("clients_know_target", target=target, connections=counts[target], fewest=fewest)
            elif now > deadline:
                self._known.add(target)
                self.journal.record("clients_not_seen", target=target, connections=counts[target], fewest=fewest,
                                    waited_s=self.settings.client_learn_wait_s,
                                    note="applications may still not know the new master: a stock redis-py client "
                                         "fails a request on an ASK to it (redis-py#4015)")
            return target in self._known

    # -- the state machine's driver --------------------------------------------------------------------------

    def drive(self, slots: list[int], source: str, target: str,
              step: Callable[[SlotState, str, str], Transition] = next_step, assigned: list[Move] | None = None) -> int:
        """Take slots from the shard of `source` to the shard of `target` until `step` says done; returns keys moved.

        `step` is `slots.next_step` for a move and `slots.repair_step` for a repair. On a topology change the
        cluster is read again, `source`/`target` are mapped to the masters now serving their shards, and the slots'
        state is observed afresh; after `convergence_timeout_s` without progress the slots are left as they are.
        """
        try:
            return self._drive(slots, source, target, step, assigned)
        except MigrationError as e:
            others = [s for s in dict.fromkeys(slots) if s != e.slot]
            if step is next_step and others and e.slot in slots and not isinstance(e, Unsettled):
                self._wind_down(others, source, target, e, assigned)
            raise

    def _wind_down(self, slots: list[int], source: str, target: str, cause: MigrationError,
                   assigned: list[Move] | None) -> None:
        """After one slot of a group stopped the run, finish every other slot of the group (`repair_step`: closed only
        while its source was never MIGRATING), so at most the slot that failed stays open."""
        self.journal.record("wind_down", slots=slots, cause=str(cause))
        try:
            self.refresh()
            self._drive(slots, source, target, repair_step, assigned)
        except (MigrationError, TopologyChanged, BadInput) as e:
            self.journal.record("wind_down_incomplete", slots=slots, error=str(e))

    def _drive(self, slots: list[int], source: str, target: str, step: Callable[[SlotState, str, str], Transition],
               assigned: list[Move] | None) -> int:
        deadline = time.time() + self.settings.convergence_timeout_s
        pending = list(dict.fromkeys(slots))
        states: dict[int, SlotState] | None = None
        handed: set[int] = set()
        moved = 0
        while pending:
            try:
                if states is None:
                    states = self.observe_slots(pending)
                s, t = self.current_master(source), self.current_master(target)
                steps = {slot: step(states[slot], s, t) for slot in pending}
                stop = next((x for x in steps.values() if x.kind == MANUAL), None)
                if stop is not None:
                    self.journal.record("slot_stop", slot=stop.slot, reason=stop.reason)
                    raise MigrationError(stop.slot, stop.reason + "; the slot is left as it is: `runbook check` "
                                                                  "shows it")
                settled = [x for x in steps.values() if x.kind == DONE and x.slot not in handed]
                if settled:
                    self._settled(settled)
                pending = [p for p in pending if steps[p].kind != DONE]
                if not pending:
                    break
                kind = next(k for k in ORDER if any(x.kind == k for x in steps.values()))
                group = [x for x in steps.values() if x.kind == kind]
                moved += self._transition(kind, group, states, assigned)
                deadline = time.time() + self.settings.convergence_timeout_s
                if kind == HANDOVER:
                    handed.update(x.slot for x in group)
            except TopologyChanged as e:
                self.journal.record("topology_changed", slots=pending, error=str(e))
                if time.time() > deadline:
                    raise Unsettled(pending[0], f"the cluster did not settle within "
                                                f"{self.settings.convergence_timeout_s:.0f}s ({e}); the slots "
                                                f"{pending[:8]} are left as they are: run `runbook check`, then "
                                                "`runbook resume`") from None
                time.sleep(0.5)
                states = None
                try:
                    self.refresh()
                except BadInput:
                    continue
        return moved

    def observe_slots(self, slots: list[int]) -> dict[int, SlotState]:
        """Each slot's owner and markers (from every node's view of itself) and its key count on every master."""
        owners = self.topo.owners()
        migrating: dict[int, dict[str, str]] = defaultdict(dict)
        importing: dict[int, dict[str, str]] = defaultdict(dict)
        for view in self.topo.views.values():
            me = view.myself
            if not me.is_master:
                continue
            for s, peer in me.migrating.items():
                migrating[s][me.id] = peer
            for s, peer in me.importing.items():
                importing[s][me.id] = peer
        believed: dict[int, dict[str, str | None]] = defaultdict(dict)
        for view in self.topo.views.values():
            if view.myself.is_master and view.myself.id in self.masters:
                seen = view.owners()
                for s in slots:
                    believed[s][view.myself.id] = seen[s]
        keys: dict[int, dict[str, int]] = defaultdict(dict)
        for master in self.masters:
            counts = self._pipeline(master, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots])
            for s, n in zip(slots, counts):
                keys[s][master] = int(n)
        return {s: SlotState(s, owners[s], dict(migrating[s]), dict(importing[s]), dict(keys[s]), dict(believed[s]))
                for s in slots}

    def _transition(self, kind: str, group: list[Transition], states: dict[int, SlotState],
                    assigned: list[Move] | None) -> int:
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

    def _settled(self, steps: list[Transition]) -> None:
        """Slots found finished without a handover of this call (an earlier run, a repair) that the journal still
        has open: say so, so that the journal's open slots stay true."""
        still_open = self.journal.open_slots()
        for x in steps:
            if x.slot in still_open:
                self.journal.record("slot_done", slot=x.slot, owner=x.target, reason=x.reason)

    # -- the transitions, each for many slots in one pipeline per node ----------------------------------------

    def _open(self, group: list[Transition], states: dict[int, SlotState]) -> None:
        """Target IMPORTING, then source MIGRATING, each only where missing; big keys stop it before anything opens.

        A target that imported the slot from a master that failed over ignored the new master's claim (it still names
        the dead one, or nobody, and would answer CLUSTERDOWN to every RESTORE): it is told the owner first.
        """
        s, t = group[0].source, group[0].target
        fresh = [x.slot for x in group if not states[x.slot].is_open and states[x.slot].owner == s]
        if fresh and self.threshold:
            first = self._pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)
                                       for slot in fresh])
            self._guard(s, dict(zip(fresh, first)), is_open=False)
        slots = [x.slot for x in group]
        self.journal.record("slots_open", slots=slots, source=s, target=t)
        failpoint("open.journaled")
        unaware = [slot for slot in slots if states[slot].believed.get(t, s) not in (s, t)]
        self._check(t, self._pipeline(t, [("CLUSTER", "SETSLOT", slot, "NODE", s) for slot in unaware],
                                      raise_on_error=False))
        if unaware:
            failpoint("open.owner_told")
        importing = [slot for slot in slots if states[slot].owner != t and states[slot].importing.get(t) != s]
        self._check(t, self._pipeline(t, [("CLUSTER", "SETSLOT", slot, "IMPORTING", s) for slot in importing],
                                      raise_on_error=False), ok=(errors.ALREADY_OWNER,))
        failpoint("open.importing")
        migrating = [slot for slot in slots if states[slot].owner == s and states[slot].migrating.get(s) != t]
        self._check(s, self._pipeline(s, [("CLUSTER", "SETSLOT", slot, "MIGRATING", t) for slot in migrating],
                                      raise_on_error=False))
        failpoint("open.migrating")
        for slot in slots:
            states[slot] = states[slot].opened(s, t)

    def _drain(self, group: list[Transition], states: dict[int, SlotState]) -> int:
        """One round of MIGRATE per slot (up to `keys_per_migrate` keys each), then each slot's count on the source."""
        s, t = group[0].source, group[0].target
        slots = [x.slot for x in group]
        listed = self._pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)
                                    for slot in slots])
        slot_keys = dict(zip(slots, listed))
        sizes = self._sizes(s, slot_keys)
        self._guard(s, slot_keys, is_open=True, sizes=sizes)
        host, port = self._migrate_endpoint(t)
        limit = self.migrate_bytes(s)
        migrates = [(slot, keys, ("MIGRATE", host, port, "", 0, timeout, *self._auth, "KEYS", *keys))
                    for slot in slots for keys, timeout in self._groups(slot_keys[slot], sizes, limit)]
        self.journal.record("keys_migrating", slots={slot: len(k) for slot, k in slot_keys.items()}, source=s,
                            target=t)
        failpoint("drain.journaled")
        weights = [sum(sizes.get(k, 0) for k in keys) for _, keys, _ in migrates]
        replies = self._migrate_rounds(s, [m[2] for m in migrates], [("CLUSTER", "COUNTKEYSINSLOT", x) for x in slots],
                                       weights)
        counts = replies[len(migrates):]
        moved: dict[int, int] = defaultdict(int)
        failed: list[tuple[int, list[bytes], Exception]] = []
        for (slot, keys, _), reply in zip(migrates, replies):
            if isinstance(reply, Exception):
                failed.append((slot, keys, reply))
            else:
                moved[slot] += len(keys)
        self.journal.record("keys_migrated", slots=dict(moved), source=s, target=t, bytes=sum(weights))
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
                topology = TopologyChanged(f"{self.name(s)}: {error}")
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
        self._check(t, self._pipeline(t, [("CLUSTER", "SETSLOT", slot, "NODE", t) for slot in slots],
                                      raise_on_error=False))
        failpoint("handover.target")
        replies = self._pipeline(s, [("CLUSTER", "SETSLOT", slot, "NODE", t) for slot in slots], raise_on_error=False)
        refused = [slot for slot, r in zip(slots, replies)
                   if isinstance(r, Exception) and errors.classify(r) == errors.HOLDS_KEYS]
        if refused:
            done = [slot for slot, r in zip(slots, replies) if not isinstance(r, Exception)]
            self._assigned(done, s, t, states, assigned)
            self._handover_refused(refused, s, t)
        self._check(s, replies)
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
        counts = self._pipeline(s, [("CLUSTER", "COUNTKEYSINSLOT", slot) for slot in slots], raise_on_error=False)
        sample = self._pipeline(s, [("CLUSTER", "GETKEYSINSLOT", slots[0], 5)], raise_on_error=False)[0]
        names = [k.decode(errors="replace") for k in sample] if isinstance(sample, list) else []
        self.journal.record("handover_refused", slots=slots, source=s, target=t,
                            source_keys={slot: n for slot, n in zip(slots, counts) if isinstance(n, int)},
                            sample=names)
        raise MigrationError(slots[0], f"{self.name(s)} refused to hand slots {slots[:8]} to {self.name(t)}, which "
                                       f"already claims them, because it still holds keys of them "
                                       f"({dict(zip(slots, counts))} keys, e.g. {names}); nothing was dropped. "
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
            self._check(node, self._pipeline(node, [("CLUSTER", "SETSLOT", slot, "STABLE")], raise_on_error=False))
        if first and then:
            failpoint("close.source")
            time.sleep(ASK_GRACE_S)
        closed, keys = list(first), dict(state.keys)
        for node in then:
            count = int(self._pipeline(node, [("CLUSTER", "COUNTKEYSINSLOT", slot)])[0])
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
        pipe = self.client(node).pipeline(transaction=True)
        pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        pipe.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        try:
            count, reply = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.name(node)} unreachable: {e}") from e
        self._check(node, [reply])
        return int(count) if isinstance(count, int) else UNKNOWN

    def _rescue(self, step: Transition, states: dict[int, SlotState]) -> int:
        """Keys on a master that does not own their slot go to the owner: IMPORTING on the holder lets it serve an
        ASKING MIGRATE of them; then the marker goes. Equal copies on both sides keep the owner's. The rescue is
        journaled as an intent first, so an interrupted one is finished towards the owner."""
        slot, holder, owner = step.slot, step.source, step.target
        self.journal.record("slot_rescue", slot=slot, holder=holder, owner=owner, keys=states[slot].keys.get(holder))
        failpoint("rescue.journaled")
        if states[slot].importing.get(holder) != owner:
            self._check(holder, self._pipeline(holder, [("CLUSTER", "SETSLOT", slot, "IMPORTING", owner)],
                                               raise_on_error=False))
            failpoint("rescue.importing")
        host, port = self._migrate_endpoint(owner)
        moved = 0
        while True:
            keys = self._pipeline(holder, [("CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)])[0]
            if not keys:
                break
            reply = self._pipeline(holder, [("ASKING",), ("MIGRATE", host, port, "", 0, self.settings.migrate_timeout_ms,
                                                          *self._auth, "KEYS", *keys)], raise_on_error=False)[1]
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

    def _migrate_rounds(self, src_id: str, migrates: list[tuple], then: list[tuple],
                        weights: list[int] | None = None) -> list:
        """MIGRATEs at most `migrates_per_round_trip` per round trip, then `then` with the last: a source serves its
        clients between rounds. A client timeout counts as a failed MIGRATE for the commands of its round. With
        `weights` (bytes per MIGRATE) each round measures the source's MIGRATE throughput."""
        depth = self.settings.migrates_per_round_trip
        rounds = [list(range(i, min(i + depth, len(migrates)))) for i in range(0, len(migrates), depth)] or [[]]
        out: list = []
        for n, indices in enumerate(rounds):
            commands = [migrates[i] for i in indices] + (then if n == len(rounds) - 1 else [])
            started = time.monotonic()
            try:
                out.extend(self._pipeline(src_id, commands, raise_on_error=False))
            except TopologyChanged as e:
                if not isinstance(e.__cause__, redis.TimeoutError):
                    raise
                out.extend([e.__cause__] * len(commands))
                continue
            if weights:
                self._measured(src_id, sum(weights[i] for i in indices), time.monotonic() - started)
            failpoint("drain.round")
        return out

    def _measured(self, src_id: str, nbytes: int, seconds: float) -> None:
        """Fold one round's bytes per second into the source's MIGRATE throughput (EWMA, weight 0.3); rounds too
        small to time say nothing."""
        if nbytes < 4096 or seconds <= 0:
            return
        rate = nbytes / seconds
        old = self._throughput.get(src_id)
        self._throughput[src_id] = rate if old is None else 0.7 * old + 0.3 * rate

    def migrate_bytes(self, src_id: str) -> int | None:
        """The most bytes one MIGRATE from this source may carry so it blocks the source for at most
        `max_migrate_ms` at the throughput measured so far (None: no bound). One key always goes, however big."""
        if not self.settings.max_migrate_ms:
            return None
        rate = self._throughput.get(src_id, INITIAL_MIGRATE_BYTES_PER_S)
        return max(1, int(rate * self.settings.max_migrate_ms / 1000))

    def _sizes(self, src_id: str, slot_keys: dict[int, list[bytes]]) -> dict[bytes, int]:
        """MEMORY USAGE of every listed key of open slots, in one round trip (a key just deleted or expired has no
        size); nothing when neither the big-key threshold nor the MIGRATE time bound needs sizes."""
        keys = [k for ks in slot_keys.values() for k in ks]
        if not keys or not (self.threshold or self.settings.max_migrate_ms):
            return {}
        sizes = self._pipeline(src_id, [("MEMORY", "USAGE", k) for k in keys], raise_on_error=False)
        return {k: n for k, n in zip(keys, sizes) if isinstance(n, int)}

    def _pipeline(self, node_id: str, commands: list[tuple], raise_on_error: bool = True) -> list:
        """Send commands to one node in one round trip; with raise_on_error, the first error reply raises."""
        if not commands:
            return []
        pipe = self.client(node_id).pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.name(node_id)} unreachable: {e}") from e
        if raise_on_error:
            self._check(node_id, replies)
        return replies

    def _check(self, node_id: str, replies: list, ok: tuple[str, ...] = ()) -> None:
        """Raise on the first error reply that is not in `ok`: a topology change, or a stop of the run."""
        for r in replies:
            if not isinstance(r, Exception):
                continue
            kind = errors.classify(r)
            if kind in ok:
                continue
            if kind in (errors.TOPOLOGY, errors.NOT_OWNER):
                raise TopologyChanged(f"{self.name(node_id)}: {r}")
            raise MigrationError(-1, f"{self.name(node_id)} answered {r}; the slot is left as it is: "
                                     "`runbook check` shows it")

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
            sizes = self._sizes(src_id, todo) if sizes is None else sizes
            found = [(slot, k, sizes[k]) for slot, keys in todo.items() for k in keys
                     if sizes.get(k, 0) >= self.threshold]
        else:
            replies = self._pipeline(src_id, [("EVAL", BIG_KEYS_SCRIPT, len(keys), *keys, self.threshold)
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

    def _groups(self, keys: list[bytes], sizes: dict[bytes, int] | None = None, limit: int | None = None):
        """Keys for one MIGRATE each: allowed big keys alone with their own timeout, the rest in MIGRATEs of at most
        `limit` bytes by `sizes` (at least one key each)."""
        plain = [k for k in keys if k.decode(errors="replace") not in self.allowed]
        for part in chunk_by_bytes(plain, sizes or {}, limit):
            yield part, self.settings.migrate_timeout_ms
        for k in keys:
            name = k.decode(errors="replace")
            if name in self.allowed:
                yield [k], self.allowed[name]

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
        raise MigrationError(slot, f"MIGRATE of {len(keys)} keys from {self.name(src_id)} to {self.name(tgt_id)} "
                                   f"failed: {error}. {located}; no copy was removed. The slot is left open: run "
                                   "`runbook check`, then `runbook resume`")

    def _each(self, node_id: str, command: str, keys: list[bytes], asking: bool) -> list:
        """COMMAND key on one node for each key, each after ASKING where the slot is importing there."""
        pipe = self.client(node_id).pipeline(transaction=False)
        for k in keys:
            if asking:
                pipe.execute_command("ASKING")
            pipe.execute_command(command, k)
        replies = pipe.execute(raise_on_error=False)
        return replies[1::2] if asking else replies

    def _sides(self, src_id: str, tgt_id: str, keys: list[bytes]) -> dict[str, int]:
        """How many of these keys each side holds, so a failed MIGRATE is accounted for key by key."""
        on_source = self._each(src_id, "EXISTS", keys, asking=False)
        on_target = self._each(tgt_id, "EXISTS", keys, asking=True)
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
        target = self._pipeline(tgt_id, [c for k in keys for c in (*asking, ("DUMP", k), *asking, ("PTTL", k))],
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
        replies = self._pipeline(src_id, commands, raise_on_error=False)
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
                raise MigrationError(slot, f"key {name!r} exists on both {self.name(src_id)} and {self.name(tgt_id)} "
                                           f"with different {what}; both copies are kept and the slot is left open. "
                                           "Decide which copy is right, delete the other, then `runbook resume`")

    def _broadcast_owners(self, assigned: list[Move]) -> None:
        """Tell every other master the new owners of handed-over slots, one pipeline each (gossip would, later).

        During a run this goes on in the background while the next batch moves: the target and source already
        agree, and a third master that has not heard yet only redirects a client one hop further.
        """
        for master in list(self.masters):
            commands = [("CLUSTER", "SETSLOT", m.slot, "NODE", m.target) for m in assigned
                        if master not in (m.source, m.target)]
            if not commands:
                continue
            try:
                failed = [r for r in self._pipeline(master, commands, raise_on_error=False) if isinstance(r, Exception)]
            except TopologyChanged as e:
                failed = [e]
            if failed:
                self.journal.record("broadcast_incomplete", node=self.name(master), errors=len(failed),
                                    first=str(failed[0]))
