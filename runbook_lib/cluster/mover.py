"""The slot mover's loop: the plan batch by batch, a worker per source master moving its slots in groups of
`slots_in_flight` that share a target, the pace's hooks before each batch and group, a second copy required on each
target before every batch, and the driver that reads a group's state from the live cluster and asks `slots.next_step`
(or `slots.repair_step`) what each slot needs next.

`transitions` sends each step, one kind for all slots that need it, in one pipeline per node; `rounds` the MIGRATEs of
a drain; `nodes` follows a failover of the source or the target to the master now serving its shard, after which
the slots' state is read again and the same decisions go on. A single slot is a group of one: there is no second
implementation. After one slot of a group stops the run, the rest of the group is wound down (closed or finished).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable, Protocol

import redis
from tqdm.auto import tqdm

from runbook_lib.cluster.connection import application_connections
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.nodes import Nodes, TopologyChanged
from runbook_lib.cluster.plan import Move, Plan
from runbook_lib.cluster.quiet import QuietSpells
from runbook_lib.cluster.replicas import require_replicas
from runbook_lib.cluster.rounds import Rounds
from runbook_lib.cluster.slots import DONE, HANDOVER, MANUAL, ORDER, SlotState, Transition, next_step, repair_step
from runbook_lib.cluster.topology import Topology
from runbook_lib.cluster.transitions import Transitions
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import BadInput, CheckFailed, MigrationError, PaceStop


class Pace(Protocol):
    """What sets the pace (the watch layer's governor or throttle): the settings before each batch, and before each
    group of slots a worker starts, where it may wait or raise `PaceStop` to stop the run between slots; `idle()`
    is entered while the run waits (for its off-peak window), when nothing that moves is there to measure."""

    def before_batch(self, number: int) -> Migration: ...

    def before_group(self) -> Migration: ...

    def idle(self) -> AbstractContextManager[None]: ...

    def end(self) -> None: ...


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


class Mover:
    """Moves slots between masters of one cluster through the slot state machine, journaling every change; its
    transitions and MIGRATE rounds read `settings` as the pace last set it."""

    def __init__(self, topology: Topology, creds: Credentials, settings: Migration, journal: Journal,
                 bigkeys: BigKeys | None = None) -> None:
        self.settings = settings
        self.journal = journal
        threshold = bigkeys.threshold_bytes if bigkeys else None
        allowed = dict(bigkeys.allow) if bigkeys else {}
        longest = max([settings.migrate_timeout_ms, *allowed.values()])
        self.nodes = Nodes(topology, creds, journal, timeout_s=longest / 1000 + 5)
        self.rounds = Rounds(self.nodes, lambda: self.settings, threshold, allowed)
        self.transitions = Transitions(self.nodes, self.rounds, journal, lambda: self.settings, threshold, allowed)
        self._broadcaster: ThreadPoolExecutor | None = None
        self._pacer = Pacer()
        self.quiet = QuietSpells(journal, settings.quiet_every_s, settings.quiet_s)
        self._pace: Pace | None = None
        self._stop = threading.Event()
        self._learn_lock = threading.Lock()
        self._known: set[str] = set()
        self._learning: dict[str, tuple[float, float]] = {}

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
        self.nodes.refresh()
        targets = list(dict.fromkeys(self.nodes.current_master(m.target) for m in batch))
        try:
            require_replicas(self.nodes.topo, self.nodes.creds, targets, self.settings.allow_master_without_replica)
        except CheckFailed as e:
            self.journal.record("replica_stop", batch=number, targets=[self.nodes.name(t) for t in targets], why=str(e))
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
        self.quiet.start_batch(len(by_source))
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
                self.quiet.before_group(self._stop.is_set)
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
        finally:
            self.quiet.worker_done()
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
            if target in self._known or self.settings.client_learn_wait_s <= 0 or target not in self.nodes.masters:
                return True
            now = time.monotonic()
            deadline, checked = self._learning.setdefault(target, (now + self.settings.client_learn_wait_s, 0.0))
            if now - checked < 0.5:
                return False
            self._learning[target] = (deadline, now)
            try:
                node_ips = {ip for ip, _ in self.nodes.migrate_to.values()}
                counts = {m: application_connections(self.nodes.client(m), node_ips) for m in self.nodes.masters}
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
            self.nodes.refresh()
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
                s, t = self.nodes.current_master(source), self.nodes.current_master(target)
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
                moved += self.transitions.act(kind, group, states, assigned)
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
                    self.nodes.refresh()
                except BadInput:
                    continue
        return moved

    def observe_slots(self, slots: list[int]) -> dict[int, SlotState]:
        """Each slot's owner and markers (from every node's view of itself) and its key count on every master."""
        owners = self.nodes.topo.owners()
        migrating: dict[int, dict[str, str]] = defaultdict(dict)
        importing: dict[int, dict[str, str]] = defaultdict(dict)
        for view in self.nodes.topo.views.values():
            me = view.myself
            if not me.is_master:
                continue
            for s, peer in me.migrating.items():
                migrating[s][me.id] = peer
            for s, peer in me.importing.items():
                importing[s][me.id] = peer
        believed: dict[int, dict[str, str | None]] = defaultdict(dict)
        for view in self.nodes.topo.views.values():
            if view.myself.is_master and view.myself.id in self.nodes.masters:
                seen = view.owners()
                for s in slots:
                    believed[s][view.myself.id] = seen[s]
        keys: dict[int, dict[str, int]] = defaultdict(dict)
        for master in self.nodes.masters:
            counts = self.nodes.pipeline(master, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots])
            for s, n in zip(slots, counts):
                keys[s][master] = int(n)
        return {s: SlotState(s, owners[s], dict(migrating[s]), dict(importing[s]), dict(keys[s]), dict(believed[s]))
                for s in slots}

    def _settled(self, steps: list[Transition]) -> None:
        """Slots found finished without a handover of this call (an earlier run, a repair) that the journal still
        has open: say so, so that the journal's open slots stay true."""
        still_open = self.journal.open_slots()
        for x in steps:
            if x.slot in still_open:
                self.journal.record("slot_done", slot=x.slot, owner=x.target, reason=x.reason)

    def _broadcast_owners(self, assigned: list[Move]) -> None:
        """Tell every other master the new owners of handed-over slots, one pipeline each (gossip would, later).

        During a run this goes on in the background while the next batch moves: the target and source already
        agree, and a third master that has not heard yet only redirects a client one hop further.
        """
        for master in list(self.nodes.masters):
            commands = [("CLUSTER", "SETSLOT", m.slot, "NODE", m.target) for m in assigned
                        if master not in (m.source, m.target)]
            if not commands:
                continue
            try:
                failed = [r for r in self.nodes.pipeline(master, commands, raise_on_error=False)
                          if isinstance(r, Exception)]
            except TopologyChanged as e:
                failed = [e]
            if failed:
                self.journal.record("broadcast_incomplete", node=self.nodes.name(master), errors=len(failed),
                                    first=str(failed[0]))
