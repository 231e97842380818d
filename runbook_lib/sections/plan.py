"""30_plan: the slot moves that remain on the live cluster, their estimated duration, and the checks that must hold
before any slot moves (big keys in the slots to move, each new master's replica). Nothing changes here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.cluster import plan as slot_plan
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import current_plan
from runbook_lib.cluster.plan import Plan
from runbook_lib.cluster.topology import Topology, named, names
from runbook_lib.config import Params, new_master_addresses
from runbook_lib.sections import bigkeys, nodes
from runbook_lib.watch.migrate_cost import blocked_rate
from runbook_lib.watch.timeline import achieved_pace, migrations


@dataclass
class PlanReport:
    """What 30_plan found: the plan, the node names for its tables, preflight's scan (when the run has one), the
    estimate, and the checks."""

    plan: Plan
    names: dict[str, str]
    scan: bigkeys.ScanResult | None
    estimate: dict
    checks: list[Check]

    @property
    def slot_bytes(self) -> dict[int, int] | None:
        """Bytes per slot from preflight's scan (None without one)."""
        return bigkeys.slot_bytes(self.scan) if self.scan else None

    def headline(self) -> str:
        """The plan in one sentence: slots, batches, keys."""
        return (f"**{len(self.plan.moves)}** slots to move in **{len(self.plan.batches)}** batches, about "
                f"**{sum(self.plan.keys_per_slot.get(m.slot, 0) for m in self.plan.moves)}** keys.")

    def slots_before_after(self) -> tuple[dict[str, int], dict[str, int]]:
        """Slots per master (by address) now and after the plan."""
        return named(self.plan.before, self.names), named(self.plan.after, self.names)

    def estimate_text(self) -> str:
        """The estimate in words: the total and where its pace comes from."""
        return slot_plan.describe_estimate(self.estimate)

    def batch_rows(self) -> list[dict]:
        """One row per batch with its estimated seconds."""
        return slot_plan.batch_summary(self.plan, self.names, self.slot_bytes)

    def summary(self) -> str:
        """The section's closing line."""
        return (f"{len(self.plan.moves)} slots in {len(self.plan.batches)} batches, about "
                f"{self.estimate['seconds']:.0f} s")


def current(params: Params, topo: Topology) -> Plan:
    """What remains to move to the params' new masters on the live cluster (a master not joined yet is planned by its
    address): the one plan 30_plan shows, 40_migrate's dry run and `runbook plan` print."""
    return current_plan(topo, params.credentials(), new_master_addresses(params), params.model.migration,
                        allow_unjoined=True)


def report(params: Params, topo: Topology, run_dir: Path, scanned: dict | None) -> PlanReport:
    """30_plan: the plan, its estimate and its checks; `scanned` is preflight's bigkeys.json when the run has it
    (without it the slots to move are scanned for big keys here)."""
    plan = current(params, topo)
    scan = bigkeys.from_json(scanned) if scanned else None
    found = PlanReport(plan=plan, names=names(topo), scan=scan, estimate={}, checks=[])
    found.estimate = estimate(params, run_dir, plan, topo, found.slot_bytes)
    found.checks = checks(params, topo, plan, scan)
    return found


def checks(params: Params, topo: Topology, plan: Plan, scan: bigkeys.ScanResult | None) -> list[Check]:
    """The plan adds up, no big key blocks a slot it moves, and each new master's replica is in sync (a warning here:
    40_migrate refuses to move slots to a master without one unless params allow it)."""
    creds = params.credentials()
    found = [Check("plan adds up", "pass", f"{sum(plan.after.values())} slots after, none moved twice, only old "
                                           "masters give and only new masters receive")]
    found += bigkeys.plan_checks(scan, params.model.bigkeys, {m.slot for m in plan.moves}, topo, creds)
    found += nodes.new_master_replicas(topo, params, missing="warn")
    return found


def estimate(params: Params, run_dir: Path, plan: Plan, topo: Topology, slot_bytes: dict[int, int] | None) -> dict:
    """The plan's duration: under a budget pace, from the pace the last migration on this cluster achieved (else the
    open-loop pace of the budget); under a fixed pace, from the mover's measured costs and the fixed rate."""
    settings = params.model.migration
    record = slot_plan.estimate(plan, slot_bytes, pause_s=settings.pause_between_batches_s,
                                max_slots_per_s=settings.max_slots_per_s if settings.pace == "fixed" else 0.0)
    if settings.pace == "budget":
        achieved, source = last_pace(params.report_dir, set(topo.nodes), exclude=run_dir)
        record.update(slot_plan.paced_estimate(plan, settings, achieved, source, slot_bytes))
        cost = achieved.get("migrate_cost") if achieved else None
        if cost and slot_bytes is not None:
            record["duty_table"] = slot_plan.duty_table(plan, slot_bytes, cost["bytes_per_blocked_s"])
    return record


def duty_frame(found: PlanReport) -> pd.DataFrame:
    """30_plan's table of duty cycle against the time the MIGRATEs alone need (empty without an earlier migration on
    this cluster that recorded its MIGRATE cost, or without preflight's bytes per slot)."""
    return pd.DataFrame(found.estimate.get("duty_table", []),
                        columns=["duty_cycle_pct", "heaviest_source_MB", "seconds_blocked", "at_least_s"])


def last_pace(report_dir: Path, node_ids: set[str], exclude: Path | None = None) -> tuple[dict | None, str]:
    """The pace the newest earlier migration on this cluster achieved (an expansion or a rollback in a run folder
    under `report_dir` whose journal moved slots between nodes with these ids), with its MIGRATE cost, and the folder
    it came from; (None, "") when there is none."""
    best: tuple[float, dict, str] | None = None
    for journal in Path(report_dir).glob("*/journal.jsonl"):
        if exclude is not None and journal.parent.resolve() == Path(exclude).resolve():
            continue
        try:
            parts = migrations(Journal(journal).entries()).values()
            paces = [(achieved_pace(part), part) for part in parts]
        except (OSError, ValueError, KeyError):
            continue
        for pace, part in paces:
            if pace and set(pace["nodes"]) & node_ids and (best is None or pace["ended"] > best[0]):
                pace["migrate_cost"] = blocked_rate(part)
                best = (pace["ended"], pace, journal.parent.name)
    return (best[1], best[2]) if best else (None, "")


def estimate_against_actual(run_dir: Path) -> dict | None:
    """30_plan's estimate (its `plan-estimate.json`) beside what the run's migration took (from its journal: first
    slot opened to last handed over), for the report; None when the folder lacks either."""
    path = Path(run_dir) / "plan-estimate.json"
    if not path.exists():
        return None
    estimated = json.loads(path.read_text())
    actual = achieved_pace(migrations(Journal(Path(run_dir) / "journal.jsonl").entries())["expansion"])
    if actual is None or not estimated.get("seconds"):
        return None
    ratio = actual["seconds"] / estimated["seconds"]
    return {"estimated_s": estimated["seconds"], "actual_s": actual["seconds"], "actual_over_estimate": ratio,
            "basis": estimated.get("basis", "the mover's measured costs at the fixed pace"),
            "within_2x": 0.5 <= ratio <= 2.0, "slots": actual["slots"], "keys": actual["keys"],
            "bytes": actual["bytes"]}


def estimate_text_after(found: dict) -> str:
    """The estimate against the actual in one sentence."""
    return (f"30_plan estimated {found['estimated_s']:.0f} s; the slots moved in {found['actual_s']:.0f} s "
            f"(x{found['actual_over_estimate']:.2f} the estimate, "
            + ("within" if found["within_2x"] else "outside") + f" a factor of 2). The estimate was {found['basis']}.")
