"""The slot mover: the IMPORTING/MIGRATING/MIGRATE/SETSLOT NODE protocol, one worker per source master.

It stops at the first failed MIGRATE and leaves that slot open for a deliberate repair, never assigns a slot to its
new owner while the source still holds keys of it, follows failovers of source or target (re-opening the slot on the
new master), refuses to move big keys unless allowed, and journals every change before the next (DESIGN section 5).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis
from tqdm.auto import tqdm

from runbook_lib.cluster.connection import NodeClients, migrate_auth_args
from runbook_lib.cluster.journal import Journal, failpoint
from runbook_lib.cluster.plan import Move, Plan, plan_expansion
from runbook_lib.cluster.topology import Topology, key_counts, observe_any
from runbook_lib.config import BigKeys, Credentials, Migration, parse_address
from runbook_lib.exceptions import BadInput, MigrationError

if TYPE_CHECKING:
    from runbook_lib.watch.throttle import Throttle

TOPOLOGY_ERRORS = ("READONLY", "MOVED", "ASK ", "CLUSTERDOWN", "TRYAGAIN", "only with masters", "I don't know about node",
                   "LOADING", "MASTERDOWN", "already the owner", "not a master")


BIG_KEYS_SCRIPT = """local out = {}
for _, key in ipairs(KEYS) do
  local bytes = redis.call('MEMORY', 'USAGE', key)
  if bytes and bytes >= tonumber(ARGV[1]) then out[#out + 1] = key; out[#out + 1] = bytes end
end
return out"""


class TopologyChanged(Exception):
    """A node stopped being what the mover thought (failover, not a master, unreachable): refresh and retry."""


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


class Mover:
    """Moves planned slots between masters of one cluster, journaling every change."""

    def __init__(self, topology: Topology, creds: Credentials, settings: Migration, journal: Journal,
                 bigkeys: BigKeys | None = None) -> None:
        self.creds = creds
        self.settings = settings
        self.journal = journal
        self.threshold = bigkeys.threshold_bytes if bigkeys else None
        self.allowed = dict(bigkeys.allow) if bigkeys else {}
        self._clients = NodeClients(creds, timeout=settings.migrate_timeout_ms / 1000 + 5)
        self._broadcaster: ThreadPoolExecutor | None = None
        self._auth = migrate_auth_args(creds)
        self._refresh_lock = threading.Lock()
        self._former_master: dict[str, str] = {}
        self._pacer = Pacer()
        self._adopt(topology)

    def _adopt(self, topo: Topology) -> None:
        self.topo = topo
        self.address = {e.id: e.address for e in topo.nodes.values()}
        self.masters = [m.id for m in topo.masters()]
        for e in topo.nodes.values():
            if not e.is_master and e.master_id:
                self._former_master.setdefault(e.id, e.master_id)

    def refresh(self) -> None:
        """Re-read the cluster (from any reachable master) after an error that may mean a failover."""
        with self._refresh_lock:
            self._adopt(observe_any([self.topo.seed] + [self.address[m] for m in self.masters], self.creds))

    def current_master(self, node_id: str) -> str:
        """The node now serving the shard `node_id` served: itself, or the replica that took over from it."""
        entry = self.topo.nodes.get(node_id)
        if entry is None:
            raise MigrationError(-1, f"node {node_id[:8]} is no longer in the cluster")
        if entry.is_master and entry.healthy:
            return node_id
        for candidate in self.topo.nodes.values():
            if candidate.is_master and candidate.healthy and (candidate.id == entry.master_id
                                                               or self._former_master.get(candidate.id) == node_id):
                return candidate.id
        raise TopologyChanged(f"{self.address[node_id]} is not a healthy master and no replica has taken over yet")

    def client(self, node_id: str) -> redis.Redis:
        """A cached client for a node id, shared by the worker threads (redis-py pools connections)."""
        return self._clients.get(self.address[node_id])

    def run(self, plan: Plan, progress: bool = True, throttle: "Throttle | None" = None) -> list[BatchResult]:
        """Move the plan batch by batch; a throttle may shrink batches, change the pace, or pause the run."""
        results: list[BatchResult] = []
        queue = [list(b) for b in plan.batches]
        bar = tqdm(total=len(plan.moves), unit="slot", desc="migrating", disable=not progress)
        self._broadcaster = ThreadPoolExecutor(max_workers=1, thread_name_prefix="broadcast")
        try:
            while queue:
                number = len(results) + 1
                if throttle is not None:
                    self.settings = throttle.before_batch(number)
                batch = queue.pop(0)
                if len(batch) > self.settings.slots_per_batch:
                    queue.insert(0, batch[self.settings.slots_per_batch:])
                    batch = batch[: self.settings.slots_per_batch]
                result = self.move_batch(number, batch)
                results.append(result)
                bar.update(result.slots)
                bar.set_postfix(batch=number, keys=sum(r.keys for r in results))
                if self.settings.pause_between_batches_s and queue:
                    time.sleep(self.settings.pause_between_batches_s)
        finally:
            self._broadcaster.shutdown(wait=True)
            self._broadcaster = None
            bar.close()
        return results

    def move_batch(self, number: int, batch: list[Move]) -> BatchResult:
        """Move one batch: a worker per source master, then tell the other masters the new owners."""
        started = time.time()
        self.journal.record("batch_start", batch=number, slots=[m.slot for m in batch])
        by_source: dict[str, list[Move]] = defaultdict(list)
        for m in batch:
            by_source[m.source].append(m)
        keys = 0
        assigned: list[Move] = []
        errors: list[MigrationError] = []
        with ThreadPoolExecutor(max_workers=len(by_source)) as pool:
            for worker in [pool.submit(self._move_all, moves, assigned) for moves in by_source.values()]:
                try:
                    keys += worker.result()
                except MigrationError as e:
                    errors.append(e)
        if self._broadcaster is not None:
            self._broadcaster.submit(self._broadcast_owners, list(assigned))
        else:
            self._broadcast_owners(assigned)
        ended = time.time()
        self.journal.record("batch_end", batch=number, keys=keys, seconds=round(ended - started, 3),
                            errors=[str(e) for e in errors])
        if errors:
            raise errors[0]
        return BatchResult(batch=number, slots=len(assigned), keys=keys, seconds=ended - started, started=started,
                           ended=ended)

    def _move_all(self, moves: list[Move], assigned: list[Move]) -> int:
        """One source's worker: its slots in groups of `slots_in_flight`, stopping at the first error."""
        keys = 0
        k = self.settings.slots_in_flight
        for i in range(0, len(moves), k):
            group = moves[i: i + k]
            for target in dict.fromkeys(m.target for m in group):
                same_target = [m for m in group if m.target == target]
                self._pacer.wait(len(same_target), self.settings.max_slots_per_s)
                keys += self._move_group(same_target, assigned)
        return keys

    def _move_group(self, moves: list[Move], assigned: list[Move]) -> int:
        """Move slots sharing source and target with one pipeline per protocol step (a few round trips in all).

        Slots whose keys do not all move in one MIGRATE, or that meet any error, finish on the careful per-slot path
        (finish_slot), which handles BUSYKEY, failovers and timeouts.
        """
        try:
            src_id, tgt_id = self.current_master(moves[0].source), self.current_master(moves[0].target)
        except TopologyChanged:
            src_id = tgt_id = ""
        if not src_id or src_id == tgt_id or len(moves) == 1:
            return sum(self._careful(m, assigned) for m in moves)
        slots = [m.slot for m in moves]
        n = self.settings.keys_per_migrate
        try:
            first = self._pipeline(src_id, [("CLUSTER", "GETKEYSINSLOT", s, n) for s in slots])
            self._guard_groups(src_id, list(zip(slots, first)))
            self.journal.record("slots_open", slots=slots, source=src_id, target=tgt_id)
            self._pipeline(tgt_id, [("CLUSTER", "SETSLOT", s, "IMPORTING", src_id) for s in slots])
            failpoint("after_importing")
            self._pipeline(src_id, [("CLUSTER", "SETSLOT", s, "MIGRATING", tgt_id) for s in slots])
        except (TopologyChanged, redis.ResponseError) as e:
            self.journal.record("group_fallback", slots=slots, error=str(e))
            return sum(self._careful(m, assigned, opened=True) for m in moves)
        host, port = parse_address(self.address[tgt_id])
        migrates = [("MIGRATE", host, port, "", 0, self.settings.migrate_timeout_ms, *self._auth, "KEYS", *keys)
                    for keys in first if keys]
        replies = self._migrate_rounds(src_id, migrates, [("CLUSTER", "COUNTKEYSINSLOT", s) for s in slots])
        counts = replies[len(migrates):]
        migrate_ok = iter(not isinstance(r, Exception) for r in replies[: len(migrates)])
        done, moved, keys_moved = [], {}, 0
        for m, keys, left in zip(moves, first, counts):
            ok = next(migrate_ok) if keys else True
            if ok and left == 0:
                done.append(m)
                moved[m.slot] = len(keys)
                keys_moved += len(keys)
        self.journal.record("keys_migrated", slots=moved, source=src_id, target=tgt_id)
        failpoint("after_migrate")
        if done:
            failpoint("before_setslot_node")
            try:
                self._pipeline(tgt_id, [("CLUSTER", "SETSLOT", m.slot, "NODE", tgt_id) for m in done])
                self._pipeline(src_id, [("CLUSTER", "SETSLOT", m.slot, "NODE", tgt_id) for m in done])
            except (TopologyChanged, redis.ResponseError) as e:
                self.journal.record("group_fallback", slots=[m.slot for m in done], error=str(e))
                return keys_moved + sum(self._careful(m, assigned, opened=True) for m in moves)
            self.journal.record("slots_assigned", slots=[m.slot for m in done], source=src_id, target=tgt_id)
            assigned.extend(Move(m.slot, src_id, tgt_id) for m in done)
        rest = [m for m in moves if m not in done]
        return keys_moved + sum(self._careful(m, assigned, opened=True) for m in rest)

    def _migrate_rounds(self, src_id: str, migrates: list[tuple], then: list[tuple]) -> list:
        """MIGRATEs at most `migrates_per_round_trip` per round trip, then `then` with the last: a source serves its
        clients between rounds, so a pipeline of MIGRATEs never blocks it for long."""
        depth = self.settings.migrates_per_round_trip
        rounds = [migrates[i: i + depth] for i in range(0, len(migrates), depth)] or [[]]
        rounds[-1] = rounds[-1] + then
        return [r for commands in rounds for r in self._pipeline(src_id, commands, raise_on_error=False)]

    def _careful(self, move: Move, assigned: list[Move], opened: bool = False) -> int:
        """The per-slot path; `opened` when the group already journaled the slot as open."""
        keys = self.finish_slot(move.slot, move.source, move.target) if opened else self.move_slot(move)
        assigned.append(Move(move.slot, self.current_master(move.source), self.current_master(move.target)))
        return keys

    def _pipeline(self, node_id: str, commands: list[tuple], raise_on_error: bool = True) -> list:
        """Send commands to one node in one round trip; with raise_on_error, the first error raises."""
        pipe = self.client(node_id).pipeline(transaction=False)
        for c in commands:
            pipe.execute_command(*c)
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.address[node_id]} unreachable: {e}") from None
        if raise_on_error:
            for r in replies:
                if isinstance(r, redis.ResponseError):
                    if any(marker in str(r) for marker in TOPOLOGY_ERRORS):
                        raise TopologyChanged(f"{self.address[node_id]}: {r}")
                    raise r
        return replies

    def move_slot(self, move: Move) -> int:
        """Move one slot's keys and hand it over; returns the number of keys moved."""
        self.journal.record("slot_open", slot=move.slot, source=move.source, target=move.target)
        return self.finish_slot(move.slot, move.source, move.target)

    def finish_slot(self, slot: int, source: str, target: str) -> int:
        """Open (idempotently), drain and assign one slot, following failovers; used by moves and repairs."""
        deadline = time.time() + self.settings.convergence_timeout_s
        moved = 0
        while True:
            try:
                src_id, tgt_id = self.current_master(source), self.current_master(target)
                if src_id == tgt_id:
                    return self._already_there(slot, source, tgt_id)
                first = self._call(src_id, "CLUSTER", "GETKEYSINSLOT", slot, self.settings.keys_per_migrate)
                self._guard_big_keys(slot, src_id, first)
                self._open(slot, src_id, tgt_id)
                moved += self._drain(slot, src_id, tgt_id, first)
                failpoint("before_setslot_node")
                self._assign(slot, src_id, tgt_id)
                self.journal.record("slot_assigned", slot=slot, source=src_id, target=tgt_id, keys=moved)
                return moved
            except TopologyChanged as e:
                self.journal.record("topology_changed", slot=slot, error=str(e))
                if time.time() > deadline:
                    raise MigrationError(slot, f"the cluster did not settle within "
                                               f"{self.settings.convergence_timeout_s:.0f}s ({e}); the slot is left "
                                               "open: run `runbook check`, then `runbook resume`") from None
                time.sleep(0.5)
                try:
                    self.refresh()
                except BadInput:
                    continue

    def _already_there(self, slot: int, source: str, target: str) -> int:
        """The source now replicates the target: a master that gave away its last slot does that on its own
        (cluster-allow-replica-migration). Then the target must own the slot; anything else needs a human."""
        owner = self.topo.owners()[slot]
        if owner != target:
            raise MigrationError(slot, f"{self.address.get(source, source[:8])} now replicates "
                                       f"{self.address[target]}, but slot {slot} is owned by "
                                       f"{self.address.get(owner or '', 'nobody')}; check it with `runbook check`")
        self.journal.record("slot_assigned", slot=slot, source=source, target=target, keys=0,
                            note="already owned by the target")
        return 0

    def _call(self, node_id: str, *args):
        """One command; errors that mean the topology changed become TopologyChanged."""
        try:
            return self.client(node_id).execute_command(*args)
        except redis.ResponseError as e:
            if any(marker in str(e) for marker in TOPOLOGY_ERRORS):
                raise TopologyChanged(f"{self.address[node_id]}: {e}") from None
            raise
        except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
            raise TopologyChanged(f"{self.address[node_id]} unreachable: {e}") from None

    def _open(self, slot: int, src_id: str, tgt_id: str) -> None:
        """Target IMPORTING first, then source MIGRATING (both idempotent); a target owning the slot skips IMPORTING."""
        try:
            self._call(tgt_id, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        except TopologyChanged as e:
            if "already the owner" not in str(e):
                raise
        failpoint("after_importing")
        try:
            self._call(src_id, "CLUSTER", "SETSLOT", slot, "MIGRATING", tgt_id)
        except redis.ResponseError as e:
            if "not the owner" not in str(e):
                raise

    def _guard_big_keys(self, slot: int, src_id: str, keys: list[bytes]) -> None:
        """Stop at a key over the threshold (before its slot is opened, for the slot's first keys), unless allowed."""
        self._guard_groups(src_id, [(slot, keys)])

    def _guard_groups(self, src_id: str, slot_keys: list[tuple[int, list[bytes]]]) -> None:
        """Size the keys of several slots with one script call per slot, all in one round trip."""
        todo = [(slot, keys) for slot, keys in slot_keys if keys]
        if not todo or not self.threshold:
            return
        pipe = self.client(src_id).pipeline(transaction=False)
        for _, keys in todo:
            pipe.eval(BIG_KEYS_SCRIPT, len(keys), *keys, self.threshold)
        for (slot, _), found in zip(todo, pipe.execute()):
            for key, size in zip(found[::2], found[1::2]):
                name = key.decode(errors="replace")
                if name in self.allowed:
                    continue
                self.journal.record("bigkey_stop", slot=slot, key=name, bytes=size)
                raise MigrationError(slot, f"key {name!r} is {size / 1048576:.1f} MB, over the big-key threshold "
                                           f"({self.threshold / 1048576:.1f} MB); not opening its slot. Split or delete "
                                           "it, or allow it in params (bigkeys.allow: {key: migrate_timeout_ms})")

    def _drain(self, slot: int, src_id: str, tgt_id: str, keys: list[bytes]) -> int:
        """MIGRATE the slot's keys in groups until the source holds none; returns the keys moved.

        `keys` were read (and checked for size) before the slot was opened; later groups are read and checked here.
        """
        host, port = parse_address(self.address[tgt_id])
        moved = 0
        n = self.settings.keys_per_migrate
        while True:
            if not keys:
                if self._call(src_id, "CLUSTER", "COUNTKEYSINSLOT", slot) == 0:
                    return moved
                keys = self._call(src_id, "CLUSTER", "GETKEYSINSLOT", slot, n)
                self._guard_big_keys(slot, src_id, keys)
                continue
            for group, timeout in self._groups(keys):
                pipe = self.client(src_id).pipeline(transaction=False)
                pipe.execute_command("MIGRATE", host, port, "", 0, timeout, *self._auth, "KEYS", *group)
                pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
                try:
                    reply, left = pipe.execute(raise_on_error=False)
                except redis.TimeoutError as e:
                    reply, left = e, None
                except (redis.ConnectionError, OSError) as e:
                    raise TopologyChanged(f"{self.address[src_id]} unreachable during MIGRATE: {e}") from None
                if isinstance(reply, Exception):
                    self._migrate_failed(slot, src_id, tgt_id, group, reply)
                    continue
                moved += len(group)
                self.journal.record("keys_migrated", slot=slot, source=src_id, target=tgt_id, keys=len(group))
                failpoint("after_migrate")
                if left == 0:
                    return moved
            keys = []

    def _groups(self, keys: list[bytes]):
        """Keys for one MIGRATE each: allowed big keys alone with their own timeout, the rest together."""
        plain = [k for k in keys if k.decode(errors="replace") not in self.allowed]
        if plain:
            yield plain, self.settings.migrate_timeout_ms
        for k in keys:
            name = k.decode(errors="replace")
            if name in self.allowed:
                yield [k], self.allowed[name]

    def _migrate_failed(self, slot: int, src_id: str, tgt_id: str, keys: list[bytes], error: Exception) -> None:
        """BUSYKEY: settle by DUMP comparison and go on; a changed topology: retry; anything else: stop the slot."""
        text = str(error)
        self.journal.record("migrate_failed", slot=slot, source=src_id, target=tgt_id, keys=len(keys), error=text)
        if "BUSYKEY" in text:
            self._resolve_busy(slot, src_id, tgt_id, keys)
            return
        if isinstance(error, redis.ResponseError) and any(m in text for m in TOPOLOGY_ERRORS) \
                and "IOERR" not in text and "timeout" not in text.lower():
            raise TopologyChanged(f"{self.address[src_id]}: {text}")
        try:
            sides = self._sides(src_id, tgt_id, keys)
            located = (f"Keys: {sides['source_only']} only on the source, {sides['target_only']} only on the target, "
                       f"{sides['both']} on both, {sides['neither']} on neither (deleted by clients)")
            self.journal.record("keys_located", slot=slot, **sides)
        except (redis.RedisError, OSError) as e:
            located = f"Could not locate the keys ({e})"
        raise MigrationError(slot, f"MIGRATE of {len(keys)} keys from {self.address[src_id]} to {self.address[tgt_id]} "
                                   f"failed: {text}. {located}; no copy was removed. The slot is left open: run "
                                   "`runbook check`, then `runbook resume`")

    def _target_pipeline(self, tgt_id: str, command: str, keys: list[bytes]) -> list:
        """Run COMMAND key on the target for each key, each after ASKING (the slot is importing there)."""
        pipe = self.client(tgt_id).pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("ASKING")
            pipe.execute_command(command, k)
        return pipe.execute(raise_on_error=False)[1::2]

    def _sides(self, src_id: str, tgt_id: str, keys: list[bytes]) -> dict[str, int]:
        """How many of these keys each side holds, so a failed MIGRATE is accounted for key by key."""
        pipe = self.client(src_id).pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("EXISTS", k)
        on_source = pipe.execute(raise_on_error=False)
        on_target = self._target_pipeline(tgt_id, "EXISTS", keys)
        pairs = [(s == 1, t == 1) for s, t in zip(on_source, on_target)]
        return {"source_only": sum(s and not t for s, t in pairs), "target_only": sum(t and not s for s, t in pairs),
                "both": sum(s and t for s, t in pairs), "neither": sum(not s and not t for s, t in pairs)}

    def _resolve_busy(self, slot: int, src_id: str, tgt_id: str, keys: list[bytes]) -> None:
        """Keys on both sides: identical DUMP payloads → drop the source copy; different → stop and report both."""
        pipe = self.client(src_id).pipeline(transaction=False)
        for k in keys:
            pipe.execute_command("DUMP", k)
        source = pipe.execute(raise_on_error=False)
        target = self._target_pipeline(tgt_id, "DUMP", keys)
        for key, mine, theirs in zip(keys, source, target):
            if mine is None or theirs is None or isinstance(mine, Exception) or isinstance(theirs, Exception):
                continue
            name = key.decode(errors="replace")
            if mine != theirs:
                self.journal.record("busykey_conflict", slot=slot, key=name, source_bytes=len(mine),
                                    target_bytes=len(theirs))
                raise MigrationError(slot, f"key {name!r} exists on both {self.address[src_id]} ({len(mine)} bytes "
                                           f"serialized) and {self.address[tgt_id]} ({len(theirs)} bytes) with different "
                                           "values; both copies are kept and the slot is left open. Decide which copy "
                                           "is right, delete the other, then `runbook resume`")
            self.journal.record("busykey_same_value", slot=slot, key=name, action="deleted the source copy")
            self._call(src_id, "DEL", key)

    def _assign(self, slot: int, src_id: str, tgt_id: str) -> None:
        """SETSLOT NODE on the target first, then the source.

        Only called right after _drain saw COUNTKEYSINSLOT 0 on the MIGRATING source, which creates no new keys of
        the slot (they are ASK-redirected), so the source cannot lose keys when it learns the new owner.
        """
        self._call(tgt_id, "CLUSTER", "SETSLOT", slot, "NODE", tgt_id)
        self._call(src_id, "CLUSTER", "SETSLOT", slot, "NODE", tgt_id)

    def close_slot(self, slot: int, node_id: str, reason: str) -> None:
        """Clear an IMPORTING/MIGRATING marker that nothing was moved under (SETSLOT STABLE)."""
        self.journal.record("slot_closed", slot=slot, node=node_id, reason=reason)
        self._call(node_id, "CLUSTER", "SETSLOT", slot, "STABLE")

    def _broadcast_owners(self, assigned: list[Move]) -> None:
        """Tell every other master the new owners of handed-over slots, one pipeline each (gossip would, later).

        During a run this goes on in the background while the next batch moves: the target and source already
        agree, and a third master that has not heard yet only redirects a client one hop further.
        """
        for master in list(self.masters):
            pipe = self.client(master).pipeline(transaction=False)
            for m in assigned:
                if master not in (m.source, m.target):
                    pipe.execute_command("CLUSTER", "SETSLOT", m.slot, "NODE", m.target)
            if not pipe.command_stack:
                continue
            try:
                failed = [r for r in pipe.execute(raise_on_error=False) if isinstance(r, Exception)]
            except (redis.RedisError, OSError) as e:
                failed = [e]
            if failed:
                self.journal.record("broadcast_incomplete", node=self.address[master], errors=len(failed),
                                    first=str(failed[0]))


def new_master_ids(topo: Topology, addresses: list[str], allow_unjoined: bool = False) -> list[str]:
    """Node ids of the new masters; a node not yet joined is named by its address when `allow_unjoined`."""
    ids = []
    for address in addresses:
        entry = topo.by_address(address)
        if entry is not None and not entry.is_master:
            raise BadInput(f"{address} is in the cluster as a replica, not a master")
        if entry is None and not allow_unjoined:
            raise BadInput(f"{address} is not a master of the cluster yet; run 20_add_masters first")
        ids.append(entry.id if entry is not None else address)
    return ids


def current_plan(topo: Topology, creds: Credentials, addresses: list[str], settings: Migration,
                 allow_unjoined: bool = False) -> Plan:
    """The plan for what remains, from the live slot map and the key counts of the slots it moves."""
    owned = topo.slots_by_master()
    ids = new_master_ids(topo, addresses, allow_unjoined)
    draft = plan_expansion(owned, ids, settings.slots_per_batch, warmup=False)
    counts = key_counts(topo, creds, {m.slot for m in draft.moves})
    return plan_expansion(owned, ids, settings.slots_per_batch, keys_per_slot=counts, warmup=settings.warmup_slot)


def migrate(topo: Topology, creds: Credentials, addresses: list[str], settings: Migration, journal: Journal,
            bigkeys: BigKeys | None = None, progress: bool = True,
            throttle: "Throttle | None" = None) -> tuple[Plan, list[BatchResult]]:
    """Observe, finish the slots this journal left open, plan what remains, move it.

    Open slots this run did not open (another tool, an operator) are refused: `runbook resume` repairs those.
    """
    from runbook_lib.cluster.repair import settle_own_open_slots
    topo = settle_own_open_slots(topo, creds, journal, settings, bigkeys)
    plan = current_plan(topo, creds, addresses, settings)
    if not plan.moves:
        return plan, []
    journal.record("migration_start", moves=len(plan.moves), batches=len(plan.batches))
    results = Mover(topo, creds, settings, journal, bigkeys).run(plan, progress=progress, throttle=throttle)
    journal.record("migration_end", keys=sum(r.keys for r in results), slots=sum(r.slots for r in results))
    return plan, results


def summary(plan: Plan, batches: list[BatchResult], applied: bool) -> str:
    """One line on what the migration did or would do."""
    if not plan.moves:
        return "Nothing to do: the new masters already hold their share."
    if not applied:
        return f"Dry run: would move {len(plan.moves)} slots in {len(plan.batches)} batches."
    seconds = sum(b.seconds for b in batches)
    keys = sum(b.keys for b in batches)
    rate = keys / seconds if seconds else 0.0
    return (f"Moved {sum(b.slots for b in batches)} slots and {keys} keys in {len(batches)} batches, "
            f"{seconds:.1f} s of migration ({rate:,.0f} keys/s).")
