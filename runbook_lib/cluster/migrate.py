"""The migration as a whole: the plan for what remains on the live cluster, and the guarded, journaled move of it.

The protocol itself lives in `slots` (the state machine) and `mover` (its driver); this module decides what to move:
slots this journal left open are finished first, another tool's open slots stop the run, stranded keys are rescued,
and no new master receives a slot before its replica is in sync unless params allow it.
"""

from __future__ import annotations

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import BatchResult, Mover, Pace
from runbook_lib.cluster.plan import Plan, plan_expansion
from runbook_lib.cluster.repair import settle_own_open_slots
from runbook_lib.cluster.replicas import require_replicas
from runbook_lib.cluster.topology import Topology, key_counts
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import BadInput


def new_master_ids(topo: Topology, addresses: list[str], allow_unjoined: bool = False,
                   partners: dict[str, str] | None = None) -> list[str]:
    """Node ids of the masters now serving the new shards; a node not yet joined is named by its address when
    `allow_unjoined`.

    Params name a shard's two nodes, not their roles forever: a new master that failed over to its replica is still
    that shard, served by the master it now replicates (with `partners`, new master address → its replica's
    address, only when that master is the replica params name).
    """
    ids = []
    for address in addresses:
        entry = topo.by_address(address)
        if entry is not None and not entry.is_master:
            serving = topo.nodes.get(entry.master_id or "")
            named = partners is None or (serving is not None and partners.get(address) == serving.address)
            if serving is not None and serving.is_master and serving.healthy and named:
                ids.append(serving.id)
                continue
            raise BadInput(f"{address} is in the cluster as a replica, not a master"
                           + (f" (of {topo.nodes[entry.master_id].address})" if entry.master_id in topo.nodes else ""))
        if entry is None and not allow_unjoined:
            raise BadInput(f"{address} is not a master of the cluster yet; run 20_add_masters first")
        ids.append(entry.id if entry is not None else address)
    return ids


def shard_notes(topo: Topology, addresses: list[str]) -> list[str]:
    """Say where a new shard is served by the replica params named, because its master failed over."""
    notes = []
    for address in addresses:
        entry = topo.by_address(address)
        serving = topo.nodes.get(entry.master_id or "") if entry is not None and not entry.is_master else None
        if serving is not None:
            notes.append(f"{address} failed over to {serving.address}, which now serves that shard; the run goes "
                         f"on with {serving.address} as the shard's master and {address} as its replica")
    return notes


def current_plan(topo: Topology, creds: Credentials, addresses: list[str], settings: Migration,
                 allow_unjoined: bool = False, partners: dict[str, str] | None = None) -> Plan:
    """The plan for what remains, from the live slot map and the key counts of the slots it moves."""
    owned = topo.slots_by_master()
    ids = new_master_ids(topo, addresses, allow_unjoined, partners)
    draft = plan_expansion(owned, ids, settings.slots_per_batch, warmup=False)
    counts = key_counts(topo, creds, {m.slot for m in draft.moves})
    return plan_expansion(owned, ids, settings.slots_per_batch, keys_per_slot=counts, warmup=settings.warmup_slot)


def migrate(topo: Topology, creds: Credentials, addresses: list[str], settings: Migration, journal: Journal,
            bigkeys: BigKeys | None = None, progress: bool = True, throttle: "Pace | None" = None,
            partners: dict[str, str] | None = None, max_batches: int | None = None) -> tuple[Plan, list[BatchResult]]:
    """Observe, finish the slots this journal left open, rescue stranded keys, plan what remains, move it (at most
    `max_batches` batches of it: a later call goes on with what remains).

    Open slots this run did not open (another tool, an operator) are refused: `runbook resume` repairs those. No
    slot moves to a master without a replica in sync unless `settings.allow_master_without_replica`.
    """
    topo = settle_own_open_slots(topo, creds, journal, settings, bigkeys)
    plan = current_plan(topo, creds, addresses, settings, partners=partners)
    if not plan.moves:
        return plan, []
    targets = list(dict.fromkeys(m.target for m in plan.moves))
    replicas = require_replicas(topo, creds, targets, settings.allow_master_without_replica)
    journal.record("migration_start", moves=len(plan.moves), batches=len(plan.batches),
                   replicas=[c.__dict__ for c in replicas], notes=shard_notes(topo, addresses))
    results = Mover(topo, creds, settings, journal, bigkeys).run(plan, progress=progress, throttle=throttle,
                                                                 max_batches=max_batches)
    moved = sum(r.slots for r in results)
    journal.record("migration_end", keys=sum(r.keys for r in results), slots=moved,
                   remaining=len(plan.moves) - moved)
    return plan, results


def summary(plan: Plan, batches: list[BatchResult], applied: bool) -> str:
    """One line on what the migration did or would do."""
    if not plan.moves:
        return "Nothing to do: the new masters already hold their share."
    if not applied:
        return f"Dry run: would move {len(plan.moves)} slots in {len(plan.batches)} batches."
    seconds = sum(b.seconds for b in batches)
    keys = sum(b.keys for b in batches)
    moved = sum(b.slots for b in batches)
    rate = keys / seconds if seconds else 0.0
    left = len(plan.moves) - moved
    return (f"Moved {moved} slots and {keys} keys in {len(batches)} batches, "
            f"{seconds:.1f} s of migration ({rate:,.0f} keys/s)."
            + (f" {left} slots remain: run this section again to go on." if left > 0 else ""))
