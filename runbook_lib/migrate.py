"""The slot mover: the IMPORTING/MIGRATING/MIGRATE/SETSLOT NODE protocol, one worker per source master.

It stops at the first failed MIGRATE and leaves that slot open for a deliberate repair, and it never assigns a slot
to its new owner while the source still holds keys of it (DESIGN section 5).
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
from tqdm.auto import tqdm

from .config import Credentials, Migration, parse_address
from .connection import migrate_auth_args, node_client
from .exceptions import BadInput, CheckFailed, MigrationError
from .journal import Journal
from .plan import Move, Plan, plan_expansion
from .topology import Topology, key_counts


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


class Mover:
    """Moves planned slots between masters of one cluster, journaling every change."""

    def __init__(self, topology: Topology, creds: Credentials, settings: Migration, journal: Journal) -> None:
        self.creds = creds
        self.settings = settings
        self.journal = journal
        self.address = {e.id: e.address for e in topology.nodes.values()}
        self.masters = [m.id for m in topology.masters()]
        self._clients: dict[str, redis.Redis] = {}
        self._auth = migrate_auth_args(creds)
        self._timeout_s = settings.migrate_timeout_ms / 1000 + 5

    def client(self, node_id: str) -> redis.Redis:
        """A cached client for a node id (thread-safe: redis-py pools connections)."""
        if node_id not in self._clients:
            self._clients[node_id] = node_client(self.address[node_id], self.creds, timeout=self._timeout_s)
        return self._clients[node_id]

    def run(self, plan: Plan, progress: bool = True) -> list[BatchResult]:
        """Move every batch of the plan in order, pausing between batches as the params say."""
        results: list[BatchResult] = []
        bar = tqdm(total=len(plan.moves), unit="slot", desc="migrating", disable=not progress)
        try:
            for number, batch in enumerate(plan.batches, start=1):
                result = self.move_batch(number, batch)
                results.append(result)
                bar.update(result.slots)
                bar.set_postfix(batch=f"{number}/{len(plan.batches)}", keys=sum(r.keys for r in results))
                if self.settings.pause_between_batches_s and number < len(plan.batches):
                    time.sleep(self.settings.pause_between_batches_s)
        finally:
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
        self._broadcast_owners(assigned)
        ended = time.time()
        self.journal.record("batch_end", batch=number, keys=keys, seconds=round(ended - started, 3),
                            errors=[str(e) for e in errors])
        if errors:
            raise errors[0]
        return BatchResult(batch=number, slots=len(assigned), keys=keys, seconds=ended - started, started=started, ended=ended)

    def _move_all(self, moves: list[Move], assigned: list[Move]) -> int:
        """One source's worker: its slots one after the other, stopping at the first error."""
        keys = 0
        for m in moves:
            keys += self.move_slot(m)
            assigned.append(m)
        return keys

    def move_slot(self, move: Move) -> int:
        """Move one slot's keys and hand it over; returns the number of keys moved."""
        slot, src_id, tgt_id = move.slot, move.source, move.target
        src, tgt = self.client(src_id), self.client(tgt_id)
        host, port = parse_address(self.address[tgt_id])
        self.journal.record("slot_open", slot=slot, source=src_id, target=tgt_id)
        try:
            tgt.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", tgt_id)
        except (redis.RedisError, OSError) as e:
            raise MigrationError(slot, f"could not open the slot ({e}); run `runbook check`") from None
        moved = 0
        n = self.settings.keys_per_migrate
        while True:
            keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, n)
            if not keys:
                break
            try:
                src.execute_command("MIGRATE", host, port, "", 0, self.settings.migrate_timeout_ms,
                                    *self._auth, "KEYS", *keys)
            except (redis.RedisError, OSError) as e:
                self.journal.record("migrate_failed", slot=slot, source=src_id, target=tgt_id, keys=len(keys),
                                    error=str(e))
                raise MigrationError(slot, f"MIGRATE of {len(keys)} keys from {self.address[src_id]} to "
                                           f"{self.address[tgt_id]} failed: {e}. The slot is left open for repair: "
                                           "run `runbook check`, then `runbook resume`") from None
            moved += len(keys)
            if len(keys) < n and src.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0:
                break
        self._assign(move)
        self.journal.record("slot_assigned", slot=slot, source=src_id, target=tgt_id, keys=moved)
        return moved

    def _assign(self, move: Move) -> None:
        """SETSLOT NODE on the target first, then the source, only once the source holds no key of the slot."""
        src = self.client(move.source)
        left = src.execute_command("CLUSTER COUNTKEYSINSLOT", move.slot)
        if left:
            raise MigrationError(move.slot, f"source {self.address[move.source]} still holds {left} keys; "
                                            "not assigning the slot (it would delete them)")
        try:
            self.client(move.target).execute_command("CLUSTER SETSLOT", move.slot, "NODE", move.target)
            src.execute_command("CLUSTER SETSLOT", move.slot, "NODE", move.target)
        except (redis.RedisError, OSError) as e:
            raise MigrationError(move.slot, f"SETSLOT NODE failed ({e}); run `runbook check`") from None

    def _broadcast_owners(self, assigned: list[Move]) -> None:
        """Tell every other master the new owners of handed-over slots, one pipeline each (gossip would, later)."""
        for master in self.masters + sorted({m.target for m in assigned} - set(self.masters)):
            pipe = self.client(master).pipeline(transaction=False)
            for m in assigned:
                if master not in (m.source, m.target):
                    pipe.execute_command("CLUSTER SETSLOT", m.slot, "NODE", m.target)
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
    """The plan for what remains, from the live slot map and key counts (empty when balanced already)."""
    counts = key_counts(topo, creds)
    return plan_expansion(topo.slots_by_master(), new_master_ids(topo, addresses, allow_unjoined),
                          settings.slots_per_batch, keys_per_slot=counts, warmup=settings.warmup_slot)


def migrate(topo: Topology, creds: Credentials, addresses: list[str], settings: Migration, journal: Journal,
            progress: bool = True) -> tuple[Plan, list[BatchResult]]:
    """Observe, plan what remains, move it; refuses to start while any slot is open."""
    open_slots = topo.open_slots()
    if open_slots:
        first = open_slots[0]
        raise CheckFailed(f"{len(open_slots)} open slots (first: slot {first['slot']} {first['state']} on "
                          f"{first['node']}); repair them before migrating (`runbook check` shows them)")
    plan = current_plan(topo, creds, addresses, settings)
    if not plan.moves:
        return plan, []
    journal.record("migration_start", moves=len(plan.moves), batches=len(plan.batches))
    results = Mover(topo, creds, settings, journal).run(plan, progress=progress)
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
