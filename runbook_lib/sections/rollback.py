"""Rollback: move every slot back to its owner in the before-snapshot, then remove the new nodes from the cluster."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis

from runbook_lib.checks import Check, StepReport
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.plan import Move, Plan
from runbook_lib.cluster.repair import settle_own_open_slots
from runbook_lib.cluster.topology import SLOTS, Topology, observe, parse_ranges
from runbook_lib.config import BigKeys, Credentials, Migration
from runbook_lib.exceptions import BadInput, CheckFailed

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace


def original_owners(snapshot: dict) -> dict[str, set[int]]:
    """Slots per master id as recorded before the run."""
    return {m["id"]: parse_ranges(m["slots"]) for m in snapshot["masters"]}


def rollback_plan(snapshot: dict, topo: Topology, slots_per_batch: int) -> Plan:
    """Moves that return every slot whose owner changed to its recorded owner, in batches."""
    owners = topo.owners()
    current = {m.id: 0 for m in topo.masters()}
    for o in owners:
        if o is not None:
            current[o] = current.get(o, 0) + 1
    moves = []
    for master_id, slots in original_owners(snapshot).items():
        if master_id not in current:
            raise BadInput(f"original master {master_id[:8]} is no longer in the cluster; rollback needs every "
                           "original master (check `runbook check` and the node's state)")
        for s in sorted(slots):
            if owners[s] is None:
                raise BadInput(f"slot {s} has no owner; repair the cluster before rolling back")
            if owners[s] != master_id:
                moves.append(Move(slot=s, source=owners[s], target=master_id))
    after = dict(current)
    for m in moves:
        after[m.source] -= 1
        after[m.target] += 1
    batches = [moves[i: i + slots_per_batch] for i in range(0, len(moves), slots_per_batch)]
    return Plan(batches=batches, before=current, after=after, targets=after)


def remove_nodes(seed: str, creds: Credentials, addresses: list[str], journal: Journal, apply: bool) -> StepReport:
    """Forget the given nodes on every other node and reset them; replicas go before masters."""
    topo = observe(seed, creds)
    entries = [e for e in (topo.by_address(a) for a in addresses) if e is not None]
    missing = [a for a in addresses if topo.by_address(a) is None]
    notes = [f"{a} is not in the cluster; nothing to do" for a in missing]
    owning = [e.address for e in entries if e.is_master and e.slots]
    if owning:
        raise BadInput(f"cannot remove {owning}: they still own slots; move the slots back first")
    entries.sort(key=lambda e: e.is_master)
    actions = []
    for e in entries:
        others = [v for a, v in topo.views.items() if a != e.address and v.myself.id not in {x.id for x in entries}]
        actions.append(f"CLUSTER RESET HARD on {e.address}, then CLUSTER FORGET {e.id[:8]} on {len(others)} nodes")
        if not apply:
            continue
        journal.record("node_remove", address=e.address, node=e.id)
        node_client(e.address, creds).execute_command("CLUSTER", "RESET", "HARD")
        for view in others:
            try:
                node_client(view.address, creds).execute_command("CLUSTER FORGET", e.id)
            except redis.ResponseError as err:
                if "Unknown node" not in str(err):
                    raise
    if apply and entries:
        _wait_forgotten(seed, creds, {e.id for e in entries})
    return StepReport(actions=actions, notes=notes)


def _wait_forgotten(seed: str, creds: Credentials, ids: set[str], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while True:
        topo = observe(seed, creds)
        left = [a for a, v in topo.views.items() if ids & set(v.entries)]
        if not left:
            return
        if time.time() > deadline:
            raise CheckFailed(f"nodes {sorted(i[:8] for i in ids)} are still known by {left} after {timeout:.0f}s")
        time.sleep(0.2)


def compare_with_snapshot(snapshot: dict, topo: Topology) -> list[Check]:
    """Prove the original layout: same masters, same slots each, no extra node in any view."""
    checks = []
    owned = topo.slots_by_master()
    original = original_owners(snapshot)
    for m in snapshot["masters"]:
        now = owned.get(m["id"], set())
        ok = now == original[m["id"]]
        checks.append(Check(f"slots of {m['address']}", "pass" if ok else "fail",
                            f"{len(now)} slots, as before" if ok else f"{len(now)} slots now, {len(original[m['id']])} before"))
    known = {m["id"] for m in snapshot["masters"]}
    extra = sorted({e.address for e in topo.masters() if e.id not in known})
    checks.append(Check("no extra masters", "pass" if not extra else "fail",
                        "only the original masters" if not extra else "still present: " + ", ".join(extra)))
    total = sum(len(s) for s in original.values())
    checks.append(Check("snapshot complete", "pass" if total == SLOTS else "fail", f"snapshot covers {total} slots"))
    return checks


def rollback(topo: Topology, creds: Credentials, snapshot: dict, new_addresses: list[str], settings: Migration,
             journal: Journal, apply: bool, bigkeys: BigKeys | None = None, progress: bool = True,
             throttle: "Pace | None" = None) -> dict:
    """Return the slots to their recorded owners, remove the new nodes, and compare with the snapshot.

    A `throttle` (from `watch.lifecycle.watch`) gates every batch of the slots moved back, as in the migration."""
    if apply:
        topo = settle_own_open_slots(topo, creds, journal, settings, bigkeys)
    elif topo.open_slots():
        raise CheckFailed("open slots in the cluster; `runbook check` shows them, `runbook resume` repairs them")
    plan = rollback_plan(snapshot, topo, settings.slots_per_batch)
    results = []
    if apply:
        journal.record("rollback_start", moves=len(plan.moves))
    if apply and plan.moves:
        results = Mover(topo, creds, settings, journal, bigkeys).run(plan, progress=progress, throttle=throttle)
    removal = remove_nodes(topo.seed, creds, new_addresses, journal, apply=apply) if apply or not plan.moves else \
        StepReport(actions=[f"remove {a}" for a in new_addresses], notes=["after the slots are back"])
    checks = compare_with_snapshot(snapshot, observe(topo.seed, creds)) if apply else []
    return {"plan": plan, "batches": results, "removal": removal, "checks": checks}
