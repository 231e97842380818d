"""40_migrate: move what remains of the plan under watch (sampler, probe, latency baseline, the pace), or in a dry
run say what would move; its tables (what an execution moved and how the clients fared, per batch, every decision on
the pace); then the checks on the slot map the migration leaves."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from runbook_lib import progress as shown
from runbook_lib.checks import Check
from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.migrate import migrate, summary
from runbook_lib.cluster.mover import BatchResult
from runbook_lib.cluster.plan import Plan
from runbook_lib.cluster.topology import Topology, names
from runbook_lib.config import Params, new_master_addresses, replicas_pending
from runbook_lib.sections import nodes, validate
from runbook_lib.sections import plan as planning
from runbook_lib.watch.journal_progress import follow
from runbook_lib.watch.migrate_cost import COLUMNS as COST_COLUMNS
from runbook_lib.watch.migrate_cost import migrate_costs
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import latency_stats, per_batch
from runbook_lib.watch.timeline import batch_windows, pace_series
from runbook_lib.watch.watchers import has_probe, watch


@dataclass
class MigrationResult:
    """One execution of 40_migrate: the plan it worked from, the batches it moved (none in a dry run), the pace's
    decisions and the latency baseline."""

    apply: bool
    plan: Plan
    batches: list[BatchResult] = field(default_factory=list)
    decisions: list = field(default_factory=list)
    baseline: dict = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line on what this execution did or would do."""
        return summary(self.plan, self.batches, self.apply)

    def record(self) -> dict:
        """What goes to migration.json in the run folder."""
        return {"apply": self.apply, "batches": [asdict(b) for b in self.batches], "summary": self.summary,
                "throttle": self.decisions, "latency_baseline": self.baseline}

    def batch_rows(self) -> list[dict]:
        """One row per batch moved: slots, keys, seconds."""
        return [{"batch": b.batch, "slots": b.slots, "keys": b.keys, "seconds": b.seconds} for b in self.batches]


def run(params: Params, run_dir: Path, topo: Topology, journal: Journal, apply: bool, max_batches: int | None = None,
        progress: bool | None = None) -> MigrationResult:
    """Move what remains (at most `max_batches` batches; None: all) under watch: watchers started, baseline measured,
    the pace set by the governor (or the throttle of a fixed pace), progress fed by the journal where someone watches
    (`runbook_lib.progress.wanted`). Without `apply`, the plan only: nothing changes and nothing starts."""
    if not apply:
        return MigrationResult(apply=False, plan=planning.current(params, topo))
    w = watch(params, run_dir, journal)
    with follow(journal.path, "migrating") if shown.wanted(progress) else contextlib.nullcontext():
        plan, batches = migrate(topo, params.credentials(), new_master_addresses(params), params.model.migration,
                                journal, bigkeys=params.model.bigkeys, progress=False, throttle=w.throttle,
                                max_batches=max_batches)
    return MigrationResult(apply=True, plan=plan, batches=batches, decisions=w.throttle.decisions,
                           baseline=w.baseline)


def after_checks(params: Params, topo: Topology, applied: bool) -> list[Check]:
    """The slot map the migration leaves: every slot covered, none open, the nodes agreeing, every master with a
    replica; after moving, the balance and each new master's replica in sync too."""
    checks = validate.slot_map(topo, pending_replicas=replicas_pending(params))
    if applied:
        checks.append(validate.balance(topo))
        checks += nodes.new_master_replicas(topo, params)
    return checks


def batch_table(run_dir: Path) -> pd.DataFrame:
    """Per batch: probe latency, throughput and errors against the baseline (empty without a probe)."""
    if not has_probe(run_dir):
        return pd.DataFrame()
    windows = batch_windows(Journal(run_dir / "journal.jsonl").entries())
    return per_batch(TrafficProbe.attach(run_dir).records(), windows)


def execution_table(run_dir: Path, moved: MigrationResult) -> pd.DataFrame:
    """What one execution of 40_migrate moved and how the clients fared meanwhile: slots, keys, seconds, and from
    the probe's requests between its first batch's start and its last batch's end, the p99 against the baseline's
    and the failed requests (one row; empty when nothing moved)."""
    batches, baseline_p99_ms = moved.batches, moved.baseline.get("p99_ms")
    if not batches:
        return pd.DataFrame()
    start, end = min(b.started for b in batches), max(b.ended for b in batches)
    row = {"batches": len(batches), "slots": sum(b.slots for b in batches), "keys": sum(b.keys for b in batches),
           "seconds": round(end - start, 1)}
    if has_probe(run_dir):
        records = TrafficProbe.attach(run_dir).records(since=start)
        stats = latency_stats(records[records["ts"] < end], seconds=end - start)
        base = baseline_p99_ms or float("nan")
        row |= {"requests": stats["ops"], "failed requests": stats["errors"], "p99_ms": round(stats["p99_ms"], 3),
                "baseline_p99_ms": round(base, 3), "p99_vs_baseline_pct": round((stats["p99_ms"] / base - 1) * 100, 1)}
    return pd.DataFrame([row])


def migrate_cost_table(run_dir: Path, topo: Topology) -> pd.DataFrame:
    """What each source's MIGRATEs cost in this run folder (`migrate_cost.migrate_costs`): MIGRATEs, MB, seconds the
    source was blocked, the longest round, and the duty cycle against the seconds slots moved."""
    rows = migrate_costs(Journal(run_dir / "journal.jsonl").entries(), names(topo))
    return pd.DataFrame(rows, columns=COST_COLUMNS)


PACE_TABLE = ["utc", "batch", "action", "slots_per_s", "slots_in_flight", "keys_per_migrate", "requests", "ratio",
              "low", "high", "limit", "reason"]


def pace_timeline(run_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The pace chart's data: per second, slots and keys moved, the pace set and the clients' p99 (see
    `timeline.pace_series`), and the governor's decisions from the journal."""
    entries = list(Journal(run_dir / "journal.jsonl").entries())
    records = TrafficProbe.attach(run_dir).records() if has_probe(run_dir) else None
    return pace_series(entries, records), [e for e in entries if e.get("event") == "pace"]


GATE_TABLE = ["utc", "batch", "action", "failing", "slots_per_batch", "slots_in_flight", "keys_per_migrate",
              "max_slots_per_s"]


def pace_decisions(run_dir: Path) -> pd.DataFrame:
    """Every decision on the pace, from the journal: the budget governor's (with the measurement behind each), or
    the fixed pace's throttle decisions before each batch."""
    entries = list(Journal(run_dir / "journal.jsonl").entries())
    paces = [e for e in entries if e.get("event") == "pace"]
    if paces:
        return pd.DataFrame(paces, columns=PACE_TABLE)
    return pd.DataFrame([e for e in entries if e.get("event") == "gate"], columns=GATE_TABLE)
