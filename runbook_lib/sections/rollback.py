"""Rollback: move every slot back to its shard in the before-snapshot (its master then, or the replica promoted in
its place since), then remove the new nodes from the cluster."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import redis

from runbook_lib import progress as shown
from runbook_lib.checks import Check, StepReport
from runbook_lib.cluster.connection import node_client
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import Mover
from runbook_lib.cluster.nodes import journal_pairs
from runbook_lib.cluster.plan import Move, Plan
from runbook_lib.cluster.repair import settle_own_open_slots
from runbook_lib.cluster.slots import Shards
from runbook_lib.cluster.topology import SLOTS, Topology, observe, parse_ranges
from runbook_lib.config import BigKeys, Credentials, Migration, Params, new_node_addresses
from runbook_lib.exceptions import BadInput, CheckFailed
from runbook_lib.watch import watchers
from runbook_lib.watch.watchers import Watch

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace


@dataclass
class RollbackResult:
    """What a rollback did (or, in a dry run, would do): the plan back, the batches moved, the removal of the new
    nodes, the comparison with the before-picture; under watch also the watchers found left running (`leftover`), the
    watch slots moved under (None when none moved), the probe's keys deleted and the watchers stopped at the end."""

    plan: Plan
    batches: list = field(default_factory=list)
    removal: StepReport = field(default_factory=lambda: StepReport(actions=[], notes=[]))
    checks: list[Check] = field(default_factory=list)
    leftover: str = ""
    watch: Watch | None = None
    probe_keys: int = 0
    stopped: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether a check of the restored layout failed."""
        return any(c.status == "fail" for c in self.checks)

    def summary(self, applied: bool) -> str:
        """The section's closing line."""
        return f"{len(self.plan.moves)} slots returned" if applied else "dry run"

    def rows(self, applied: bool) -> list[dict]:
        """What the rollback did, or in a dry run would do, one step a row, for a table."""
        rows = [{"step": "watchers left running", "detail": self.leftover}] if self.leftover else []
        if self.watch is not None:
            rows.append({"step": "watch", "detail": watchers.watching(self.watch)})
        rows.append({"step": "slots moved back" if applied else "slots to move back",
                     "detail": f"{len(self.plan.moves)} slots to their shards in "
                               f"{len(self.batches) if applied else len(self.plan.batches)} batches"})
        rows += [{"step": "removal" if applied else "removal (would do)", "detail": a} for a in self.removal.actions]
        rows += [{"step": "note", "detail": n} for n in self.removal.notes]
        if applied:
            rows.append({"step": "probe keys deleted", "detail": f"{self.probe_keys} keys the run's traffic probe "
                                                                 "had written"})
        return rows


def original_owners(snapshot: dict) -> dict[str, set[int]]:
    """Slots per master id as recorded before the run."""
    return {m["id"]: parse_ranges(m["slots"]) for m in snapshot["masters"]}


def serving_masters(snapshot: dict, topo: Topology, pairs: Iterable[tuple[str, str]] = ()) -> dict[str, str | None]:
    """Each recorded master's id -> the healthy master now serving its shard: itself, or the replica promoted in its
    place (a failover since the snapshot); None while no replica has taken over. Who replicated whom comes from the
    snapshot's replicas, `pairs` (the journal's `replication` records, `nodes.journal_pairs`) and the live cluster."""
    shards = Shards(pairs)
    shards.learn({e.id: m["id"] for m in snapshot["masters"] for e in map(topo.by_address, m.get("replicas", []))
                  if e is not None and e.id != m["id"]})
    live = {e.id: e.master_id for e in topo.nodes.values() if not e.is_master and e.master_id}
    shards.learn(live)
    masters = {m.id for m in topo.masters()}
    return {m["id"]: shards.current(m["id"], masters, live) for m in snapshot["masters"]}


def rollback_plan(snapshot: dict, topo: Topology, slots_per_batch: int,
                  pairs: Iterable[tuple[str, str]] = ()) -> Plan:
    """Moves that return every slot to its recorded shard (the master now serving it, see `serving_masters`), in
    batches."""
    owners = topo.owners()
    current = {m.id: 0 for m in topo.masters()}
    for o in owners:
        if o is not None:
            current[o] = current.get(o, 0) + 1
    serving = serving_masters(snapshot, topo, pairs)
    names = {e.id: e.address for e in topo.nodes.values()}
    shared = [m for m in serving.values() if m is not None and list(serving.values()).count(m) > 1]
    if shared:
        raise BadInput(f"{names.get(shared[0], shared[0][:8])} now serves the shards of several original masters; "
                       "the recorded layout cannot be restored (check `runbook check` and the nodes' roles)")
    moves = []
    for m in snapshot["masters"]:
        target = serving[m["id"]]
        if target is None:
            raise BadInput(f"original master {m['address']} ({m['id'][:8]}) is not a healthy master and no replica "
                           "has taken over its shard; wait for the failover or bring the node back, then roll back")
        for s in sorted(parse_ranges(m["slots"])):
            if owners[s] is None:
                raise BadInput(f"slot {s} has no owner; repair the cluster before rolling back")
            if owners[s] != target:
                moves.append(Move(slot=s, source=owners[s], target=target))
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


def compare_with_snapshot(snapshot: dict, topo: Topology, pairs: Iterable[tuple[str, str]] = ()) -> list[Check]:
    """Prove the original layout: each recorded shard (its master, or the replica promoted in its place) holds the
    same slots as before, no other master holds any, no extra node in any view."""
    checks = []
    owned = topo.slots_by_master()
    original = original_owners(snapshot)
    serving = serving_masters(snapshot, topo, pairs)
    names = {e.id: e.address for e in topo.nodes.values()}
    for m in snapshot["masters"]:
        now = owned.get(serving[m["id"]] or m["id"], set())
        ok = now == original[m["id"]]
        moved = serving[m["id"]] not in (None, m["id"])
        where = f", on {names.get(serving[m['id']])}, its replica promoted in its place" if moved else ""
        checks.append(Check(f"slots of {m['address']}", "pass" if ok else "fail",
                            (f"{len(now)} slots, as before" if ok else
                             f"{len(now)} slots now, {len(original[m['id']])} before") + where))
    known = {serving[m["id"]] or m["id"] for m in snapshot["masters"]}
    extra = sorted({e.address for e in topo.masters() if e.id not in known})
    checks.append(Check("no extra masters", "pass" if not extra else "fail",
                        "only the original masters" if not extra else "still present: " + ", ".join(extra)))
    total = sum(len(s) for s in original.values())
    checks.append(Check("snapshot complete", "pass" if total == SLOTS else "fail", f"snapshot covers {total} slots"))
    return checks


def rollback(topo: Topology, creds: Credentials, snapshot: dict, new_addresses: list[str], settings: Migration,
             journal: Journal, apply: bool, bigkeys: BigKeys | None = None, progress: bool = True,
             throttle: "Pace | None" = None) -> RollbackResult:
    """Return the slots to their recorded owners, remove the new nodes, and compare with the snapshot.

    A `throttle` (from `watch.watchers.watch`) gates every batch of the slots moved back, as in the migration."""
    if apply:
        topo = settle_own_open_slots(topo, creds, journal, settings, bigkeys)
    elif topo.open_slots():
        raise CheckFailed("open slots in the cluster; `runbook check` shows them, `runbook resume` repairs them")
    pairs = journal_pairs(journal)
    plan = rollback_plan(snapshot, topo, settings.slots_per_batch, pairs)
    results = []
    if apply:
        journal.record("rollback_start", moves=len(plan.moves))
    if apply and plan.moves:
        results = Mover(topo, creds, settings, journal, bigkeys).run(plan, progress=progress, throttle=throttle)
    removal = remove_nodes(topo.seed, creds, new_addresses, journal, apply=apply) if apply or not plan.moves else \
        StepReport(actions=[f"remove {a}" for a in new_addresses], notes=["after the slots are back"])
    checks = compare_with_snapshot(snapshot, observe(topo.seed, creds), journal_pairs(journal)) if apply else []
    return RollbackResult(plan=plan, batches=results, removal=removal, checks=checks)


def watched_rollback(params: Params, run_dir: Path, topo: Topology, journal: Journal, apply: bool,
                     tell: Callable[[str], None] | None = None, progress: bool | None = None) -> RollbackResult:
    """The rollback every entry point runs (90_rollback, `runbook rollback`), so each moves slots under the same watch.

    The run's before-picture must predate the expansion. With `apply` (the caller has confirmed the cluster and holds
    the run lock) the watchers an interrupted run left in `run_dir` are stopped, the slots go back under the pace,
    gates, probe and sampler of 40_migrate (started before the first batch), the probe's keys are deleted and the
    watchers stopped at the end; `tell` hears each of these as a line; a progress bar where someone watches
    (`runbook_lib.progress.wanted`)."""
    say = tell or (lambda line: None)
    path = run_dir / "baseline.json"
    if not path.exists():
        raise BadInput(f"{path} is missing; rollback needs the before-picture 00_preflight takes in this run folder")
    snapshot = json.loads(path.read_text())
    if not snapshot.get("pre_expansion"):
        raise BadInput(f"{path} was taken after the new nodes joined; roll back from the run folder whose preflight "
                       "ran before the expansion")
    leftover = watchers.stop_leftovers(run_dir, acting=apply)
    if leftover:
        say(leftover)
    creds, model, progress = params.credentials(), params.model, shown.wanted(progress)
    if not apply:
        out = rollback(topo, creds, snapshot, new_node_addresses(params), model.migration, journal, apply=False,
                       bigkeys=model.bigkeys, progress=progress)
        return replace(out, leftover=leftover)
    pace = watchers.WatchWhenMoving(params, run_dir, journal, on_start=lambda w: say(watchers.watching(w)))
    try:
        out = rollback(observe(model.cluster.seed, creds), creds, snapshot, new_node_addresses(params),
                       model.migration, journal, apply=True, bigkeys=model.bigkeys, progress=progress, throttle=pace)
        probe_keys = watchers.discard_probe(params, run_dir)
    finally:
        stopped = watchers.stop_all(run_dir)
    return replace(out, leftover=leftover, watch=pace.watch, probe_keys=probe_keys, stopped=stopped)

