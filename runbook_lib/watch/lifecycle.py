"""Watching a run: the metrics sampler and traffic probe lifecycle, the latency baseline, and the zero-downtime verdict.

The sampler runs from 40_migrate until the end of the run, the probe (when params enable it) from before the first
batch until after validation; both are detached processes recorded in the run folder, so any later notebook, the
runner or the CLI can stop them. `runbook resume` and `runbook rollback` move slots under the same watch (`watch`):
they stop what an interrupted run left running in its folder (`running` finds it), start fresh watchers when the first
batch is about to move (`WatchWhenMoving`), and stop them when they end.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Params, new_master_addresses
from runbook_lib.watch import detached
from runbook_lib.watch.metrics import METRICS_DIR, Sampler, write_table
from runbook_lib.watch.metrics import STATE_FILE as SAMPLER_STATE
from runbook_lib.watch.timeline import MOVE_TAIL_S, batch_windows, inside, label, moving_windows
from runbook_lib.watch.traffic import (
    PROBE_DIR,
    ProbeSummary,
    TrafficProbe,
    latency_stats,
    longest_gap,
    longest_unanswered_per_node,
    per_batch,
)
from runbook_lib.watch.traffic import STATE_FILE as PROBE_STATE
from runbook_lib.watch.verdict import bootstrap_quantile, latency_check, latency_verdict, p99_ratio_interval
from runbook_lib.watch.window import windowed

if TYPE_CHECKING:
    from runbook_lib.cluster.mover import Pace

BASELINE_FILE = "latency_baseline.json"
ACCEPTANCE_FILE = "acceptance.json"
"""What 60_validate writes: the acceptance checks and the numbers behind them, read by the report's index."""
BASELINE_SPREAD = 0.10
BASELINE_GROWTH = 3.0
ARTICLE_BUDGET_PCT = 10.0
"""The article's limit: p99 during the migration within +10 % of the baseline p99."""


def start(params: Params, run_dir: Path, extra_nodes: list[str]) -> dict[str, str]:
    """Start the sampler, and the probe when params enable it, unless they already run for this run folder."""
    status = {}
    detached.start_heartbeat(run_dir, detached.idle_limit_s())
    if (run_dir / METRICS_DIR / SAMPLER_STATE).exists() and Sampler.attach(run_dir).alive():
        status["sampler"] = "already running"
    else:
        Sampler(params.model.cluster.seed, params.credentials(), run_dir, extra=extra_nodes).start()
        status["sampler"] = "started"
    if not params.model.probe.enabled:
        status["probe"] = "disabled in params (probe.enabled: false)"
    elif probe_running(run_dir):
        status["probe"] = "already running"
    else:
        TrafficProbe.from_params(params, run_dir).start()
        status["probe"] = f"started at {params.model.probe.rate:g} ops/s"
    return status


def _has_probe(run_dir: Path) -> bool:
    """Whether a traffic probe was ever started in this run folder."""
    return (run_dir / PROBE_DIR / PROBE_STATE).exists()


def probe_running(run_dir: Path) -> bool:
    return _has_probe(run_dir) and bool(TrafficProbe.attach(run_dir).alive())


def baseline(run_dir: Path, gates: Gates) -> dict:
    """The probe's latency before the first batch, measured once per run folder: `gates.baseline_s`, grown by half
    that at a time (up to BASELINE_GROWTH times it) until the p99's 95 % bootstrap interval is within
    BASELINE_SPREAD of it, so that the verdict can judge a +10 % change."""
    path = run_dir / BASELINE_FILE
    if path.exists():
        return json.loads(path.read_text())
    if not probe_running(run_dir):
        return {"p50_ms": None, "p99_ms": None, "avg_ms": None, "ops": 0, "note": "no probe running"}
    start = time.time()
    time.sleep(gates.baseline_s)
    while True:
        now = time.time()
        records = TrafficProbe.attach(run_dir).records(since=start)
        width = p99_spread(records["latency_ms"].to_numpy(float))
        if width <= BASELINE_SPREAD or now - start >= gates.baseline_s * BASELINE_GROWTH:
            break
        time.sleep(gates.baseline_s / 2)
    stats = latency_stats(records, seconds=now - start)
    data = {k: stats[k] for k in ("p50_ms", "p99_ms", "avg_ms", "ops", "ops_per_s", "errors")} | {
        "ts": now, "since": start, "p99_spread": width}
    path.write_text(json.dumps(data, indent=2))
    return data


def p99_spread(values: np.ndarray) -> float:
    """Width of the p99's 95 % bootstrap interval relative to the p99 (inf with too few samples to tell)."""
    if len(values) < 200:
        return float("inf")
    replicates = bootstrap_quantile(values, 0.99, n_boot=400)
    p99 = float(np.percentile(values, 99))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float((high - low) / p99) if p99 > 0 else float("inf")


def batch_table(run_dir: Path) -> pd.DataFrame:
    """Per batch: probe latency, throughput and errors against the baseline (empty without a probe)."""
    if not _has_probe(run_dir):
        return pd.DataFrame()
    windows = batch_windows(Journal(run_dir / "journal.jsonl").entries())
    return per_batch(TrafficProbe.attach(run_dir).records(), windows)


def execution_table(run_dir: Path, batches: list, baseline_p99_ms: float | None) -> pd.DataFrame:
    """What one execution of 40_migrate moved and how the clients fared meanwhile: slots, keys, seconds, and from
    the probe's requests between its first batch's start and its last batch's end, the p99 against the baseline's
    and the failed requests (one row; empty when nothing moved)."""
    if not batches:
        return pd.DataFrame()
    start, end = min(b.started for b in batches), max(b.ended for b in batches)
    row = {"batches": len(batches), "slots": sum(b.slots for b in batches), "keys": sum(b.keys for b in batches),
           "seconds": round(end - start, 1)}
    if _has_probe(run_dir):
        records = TrafficProbe.attach(run_dir).records(since=start)
        stats = latency_stats(records[records["ts"] < end], seconds=end - start)
        base = baseline_p99_ms or float("nan")
        row |= {"requests": stats["ops"], "failed requests": stats["errors"], "p99_ms": round(stats["p99_ms"], 3),
                "baseline_p99_ms": round(base, 3), "p99_vs_baseline_pct": round((stats["p99_ms"] / base - 1) * 100, 1)}
    return pd.DataFrame([row])


PACE_TABLE = ["utc", "batch", "action", "slots_per_s", "slots_in_flight", "keys_per_migrate", "requests", "ratio",
              "low", "high", "limit", "reason"]


def pace_timeline(run_dir: Path) -> tuple[pd.DataFrame, list[dict]]:
    """The pace chart's data: per second, slots and keys moved, the pace set and the clients' p99 (see
    `timeline.pace_series`), and the governor's decisions from the journal."""
    from runbook_lib.watch.timeline import pace_series
    entries = list(Journal(run_dir / "journal.jsonl").entries())
    records = TrafficProbe.attach(run_dir).records() if _has_probe(run_dir) else None
    return pace_series(entries, records), [e for e in entries if e.get("event") == "pace"]


def last_pace(report_dir: Path, node_ids: set[str], exclude: Path | None = None) -> tuple[dict | None, str]:
    """The pace the newest earlier migration on this cluster achieved (a run folder under `report_dir` whose
    journal moved slots between nodes with these ids), and the folder it came from; (None, "") when there is none."""
    from runbook_lib.watch.timeline import achieved_pace
    best: tuple[float, dict, str] | None = None
    for journal in Path(report_dir).glob("*/journal.jsonl"):
        if exclude is not None and journal.parent.resolve() == Path(exclude).resolve():
            continue
        try:
            pace = achieved_pace(Journal(journal).entries())
        except (OSError, ValueError, KeyError):
            continue
        if pace and set(pace["nodes"]) & node_ids and (best is None or pace["ended"] > best[0]):
            best = (pace["ended"], pace, journal.parent.name)
    return (best[1], best[2]) if best else (None, "")


def migration_estimate(params: Params, run_dir: Path, plan, topo, slot_bytes: dict[int, int] | None) -> dict:
    """30_plan's estimate: under a budget pace, from the pace the last migration on this cluster achieved (else the
    cautious start pace); under a fixed pace, from the mover's measured costs and the fixed rate."""
    from runbook_lib.cluster import plan as planning
    settings = params.model.migration
    record = planning.estimate(plan, slot_bytes, pause_s=settings.pause_between_batches_s,
                               max_slots_per_s=settings.max_slots_per_s if settings.pace == "fixed" else 0.0)
    if settings.pace == "budget":
        achieved, source = last_pace(params.report_dir, set(topo.nodes), exclude=run_dir)
        record.update(planning.paced_estimate(plan, settings, achieved, source))
    return record


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


def finish_probe(params: Params, run_dir: Path) -> ProbeSummary | None:
    """Stop the probe, read back every acknowledged write, delete the probe's keys; None when no probe ran. Once its
    keys are deleted, the summary of that verification is the answer (a re-run of 60_validate gives the same verdict,
    instead of finding every deleted write lost)."""
    if not _has_probe(run_dir):
        return None
    probe = TrafficProbe.attach(run_dir, params.credentials())
    done = probe.verified()
    if done is not None:
        return done
    probe.stop()
    summary = probe.verify()
    probe.cleanup()
    return summary


def running(run_dir: Path) -> dict[str, list[int]]:
    """The watcher processes of this run folder that still run, by name ("probe", "sampler"): the pids recorded in
    their state files, each confirmed by its command line naming this folder (a reused pid is not counted)."""
    found = {}
    if _has_probe(run_dir):
        pids = TrafficProbe.attach(run_dir).alive()
        if pids:
            found["probe"] = pids
    if (run_dir / METRICS_DIR / SAMPLER_STATE).exists():
        pids = Sampler.attach(run_dir).alive()
        if pids:
            found["sampler"] = pids
    return found


def describe(found: dict[str, list[int]]) -> str:
    """Watchers as `running` returns them, for a sentence: "the traffic probe (pids 1, 2) and the metrics sampler (pid
    3)"."""
    names = {"probe": "the traffic probe", "sampler": "the metrics sampler"}
    return " and ".join(f"{names.get(n, n)} (pid{'s' if len(p) > 1 else ''} {', '.join(map(str, p))})"
                        for n, p in found.items())


def stop_leftovers(run_dir: Path, acting: bool) -> str:
    """Stop (or, in a dry run, only name) the probe and sampler an interrupted run left running in its folder: they
    are not ours to adopt, and fresh ones start for the slots moved now. Returns what was found, as a sentence for the
    operator ("" when nothing ran)."""
    found = running(run_dir)
    if not found:
        return ""
    if acting:
        stop_all(run_dir)
    return (f"{'stopped' if acting else 'would stop'} {describe(found)}, still running from the interrupted run in "
            "this run folder")


def stop_all(run_dir: Path) -> list[str]:
    """Stop whatever still runs for this run folder (the runner calls this when a run ends or fails)."""
    found = running(run_dir)
    if "probe" in found:
        TrafficProbe.attach(run_dir).stop()
    if "sampler" in found:
        Sampler.attach(run_dir).stop()
    detached.end_heartbeat(run_dir)
    return list(found)


def save_metrics(run_dir: Path) -> Path | None:
    """The tidy metrics table (every node, the probe, labelled by batch) as metrics.csv in the run folder."""
    if not (run_dir / METRICS_DIR / SAMPLER_STATE).exists():
        return None
    return write_table(run_dir, batch_windows(Journal(run_dir / "journal.jsonl").entries()))


@dataclass
class Acceptance:
    """The article's acceptance: its checks, and the numbers behind them as 60_validate writes them to
    acceptance.json for the report's verdict table and chart."""

    checks: list[Check]
    data: dict


def acceptance(run_dir: Path, summary: ProbeSummary | None, gates: Gates) -> Acceptance:
    """The article's acceptance: latency variation, failed requests, lost writes, downtime per master, with the
    numbers behind each (`verdict` gives the checks alone).

    Latency: p99 while slots were open or being handed over against the baseline p99, decided on a bootstrap interval
    (pass, fail, or inconclusive shown as a warning) with the params' budget; a budget other than the article's +10 %,
    and a latency floor if params set one, are named beside the result, never applied silently.
    """
    if summary is None:
        checks = [Check("zero downtime proven", "warn", "NOT MEASURED: no traffic probe ran in this run (probe.enabled: "
                                                        "false); latency, failed requests and downtime were not "
                                                        "measured")]
        return Acceptance(checks, {"measured": False, "note": checks[0].detail, "checks": [asdict(c) for c in checks],
                                   "latency": {"measured": False, "budget_pct": gates.latency_budget_pct,
                                               "article_budget_pct": ARTICLE_BUDGET_PCT}})
    base = json.loads((run_dir / BASELINE_FILE).read_text()) if (run_dir / BASELINE_FILE).exists() else {}
    entries = list(Journal(run_dir / "journal.jsonl").entries())
    probe = TrafficProbe.attach(run_dir)
    records = label(probe.records(), batch_windows(entries))
    latency, latency_data = latency_evidence(records, base, moving_windows(entries), gates)
    worst, gap = downtime_numbers(records, probe.settings.prefix)
    checks = [latency, failed_requests(summary), lost_writes(summary),
              downtime(records, probe.settings.prefix, gates.max_downtime_ms / 1000)]
    data = {
        "measured": True, "checks": [asdict(c) for c in checks], "latency": latency_data,
        "failed_requests": {"ops": summary.ops, "errors": summary.errors, "errors_by_kind": summary.errors_by_kind,
                            "ops_by_client": summary.ops_by_client, "errors_by_client": summary.errors_by_client},
        "lost_writes": {"acknowledged": summary.acknowledged_writes, "verified": summary.verified_writes,
                        "missing": len(summary.lost_writes), "wrong": len(summary.wrong_writes),
                        "unverifiable": summary.unverifiable_writes, "lost_reads": summary.lost_reads,
                        "wrong_reads": summary.wrong_reads},
        "downtime": {"limit_ms": gates.max_downtime_ms, "per_master_ms": {n: round(s * 1000, 1) for n, s in
                                                                          sorted(worst.items())},
                     "cluster_gap_ms": _finite(gap * 1000)},
    }
    return Acceptance(checks, data)


def verdict(run_dir: Path, summary: ProbeSummary | None, gates: Gates) -> list[Check]:
    """The article's acceptance checks: latency variation, failed requests, lost writes, downtime per master (see
    `acceptance`, which gives the numbers behind them too)."""
    return acceptance(run_dir, summary, gates).checks


def latency_variation(records: pd.DataFrame, base: dict, moving: list[tuple[float, float]], gates: Gates) -> Check:
    """p99 while slots moved against the baseline window's p99, on a bootstrap interval (pure)."""
    return latency_evidence(records, base, moving, gates)[0]


def latency_evidence(records: pd.DataFrame, base: dict, moving: list[tuple[float, float]],
                     gates: Gates) -> tuple[Check, dict]:
    """The latency verdict and the numbers behind it: both p99s, the ratio's interval, the budget and the article's,
    and the p99 of consecutive groups of the same samples the verdict judges, for its chart (pure)."""
    ts = records["ts"].to_numpy(float)
    since = base.get("since", (base.get("ts") or 0) - gates.baseline_s)
    at_rest = records[(ts >= since) & (ts < (base.get("ts") or since))]["latency_ms"].to_numpy(float)
    moving_part = records[inside(ts, moving)]
    during = moving_part["latency_ms"].to_numpy(float)
    moved_s = sum(end - start for start, end in moving)
    data = {"measured": False, "budget_pct": gates.latency_budget_pct, "article_budget_pct": ARTICLE_BUDGET_PCT,
            "baseline_n": int(len(at_rest)), "during_n": int(len(during)), "moving_s": round(moved_s, 2)}
    if not len(at_rest) or not len(during):
        return Check("latency variation", "warn", f"not measured: {len(at_rest)} baseline requests and "
                                                  f"{len(during)} while slots moved"), data
    interval = p99_ratio_interval(at_rest, during)
    check = latency_check(at_rest, during, budget_pct=gates.latency_budget_pct, interval=interval)
    article = latency_verdict(interval, ARTICLE_BUDGET_PCT)
    notes = []
    if gates.latency_budget_pct != ARTICLE_BUDGET_PCT:
        notes.append(f"held to the params' budget +{gates.latency_budget_pct:g} %; against the article's "
                     f"+{ARTICLE_BUDGET_PCT:g} %: {article}")
    floor_within = None
    if gates.latency_floor_ms:
        floor_within = float(np.percentile(during, 99)) <= float(np.percentile(at_rest, 99)) + gates.latency_floor_ms
        notes.append(f"the params' floor (+{gates.latency_floor_ms:g} ms, not part of the verdict): "
                     f"{'within' if floor_within else 'beyond'} it")
    detail = (f"{check.detail}; while slots moved ({moved_s:.1f} s: each slot from its opening to "
              f"{MOVE_TAIL_S:g} s after its handover)" + "".join(f"; {n}" for n in notes))
    ratio, low, high = interval
    data.update(measured=True, status=check.status, verdict=latency_verdict(interval, gates.latency_budget_pct),
                article_verdict=article, confidence=0.95, ratio=_finite(ratio), low=_finite(low), high=_finite(high),
                baseline_p99_ms=float(np.percentile(at_rest, 99)), during_p99_ms=float(np.percentile(during, 99)),
                floor_ms=gates.latency_floor_ms or None, floor_within=floor_within,
                points=p99_points(moving_part))
    return Check(check.name, check.status, detail), data


LATENCY_POINT_SAMPLES = 200
"""Samples per point of the latency chart: fewer make a p99 that is the group's maximum, not its tail."""


def p99_points(part: pd.DataFrame, min_samples: int = LATENCY_POINT_SAMPLES) -> list[dict]:
    """The verdict's samples (time order) cut into consecutive groups of at least `min_samples`, each with its p99,
    time span and the batches it covers: what the verdict pooled, shown over time (pure)."""
    part = part.sort_values("ts", kind="stable")
    groups = max(1, len(part) // min_samples)
    out = []
    for chunk in np.array_split(np.arange(len(part)), groups):
        if not len(chunk):
            continue
        rows = part.iloc[chunk]
        batches = rows["batch"].dropna() if "batch" in rows else pd.Series(dtype="Int64")
        out.append({"n": int(len(rows)), "p99_ms": float(np.percentile(rows["latency_ms"].to_numpy(float), 99)),
                    "start": float(rows["ts"].iloc[0]), "end": float(rows["ts"].iloc[-1]),
                    "first_batch": int(batches.min()) if len(batches) else None,
                    "last_batch": int(batches.max()) if len(batches) else None})
    return out


def _finite(value: float) -> float | None:
    return float(value) if value == value and abs(value) != float("inf") else None


def failed_requests(summary: ProbeSummary) -> Check:
    """Failed requests by client (stock clients are what applications see) and kind."""
    by_client = {c: kinds for c, kinds in summary.errors_by_client.items() if kinds}
    return Check("failed requests", "pass" if not summary.errors else "fail",
                 f"{summary.errors} of {summary.ops} requests failed"
                 + (f": {by_client}" if by_client else f" ({', '.join(f'{n} {c}' for c, n in summary.ops_by_client.items())} requests)"))


def lost_writes(summary: ProbeSummary) -> Check:
    lost = len(summary.lost_writes) + len(summary.wrong_writes) + summary.lost_reads + summary.wrong_reads
    return Check("lost writes", "pass" if not lost else "fail",
                 f"{summary.verified_writes} of {summary.acknowledged_writes} acknowledged writes read back, "
                 f"{len(summary.lost_writes)} missing, {len(summary.wrong_writes)} wrong")


def downtime(records: pd.DataFrame, prefix: str, limit_s: float = 0.25) -> Check:
    """The longest time any one master was asked and did not serve, within each probe session, against `limit_s`
    (gates.max_downtime_ms); the cluster-wide longest gap beside it (pure)."""
    if records.empty:
        return Check("downtime", "warn", "no probe request recorded")
    worst, gap = downtime_numbers(records, prefix)
    if not worst:
        return Check("downtime", "pass" if gap < limit_s else "fail",
                     f"longest gap without a successful request: {gap * 1000:.0f} ms (limit {limit_s * 1000:.0f} ms; "
                     "no per-master records)")
    node, longest = max(worst.items(), key=lambda kv: kv[1])
    return Check("downtime", "pass" if longest < limit_s else "fail",
                 f"longest time a master was asked and did not answer: {longest * 1000:.0f} ms on {node} "
                 f"(limit {limit_s * 1000:.0f} ms per master, gates.max_downtime_ms); cluster-wide longest gap "
                 f"{gap * 1000:.0f} ms; "
                 + ", ".join(f"{n} {s * 1000:.0f} ms" for n, s in sorted(worst.items())))


def downtime_numbers(records: pd.DataFrame, prefix: str) -> tuple[dict[str, float], float]:
    """({master: longest seconds it was asked and did not answer}, cluster-wide longest gap in seconds), within each
    probe session (pure)."""
    if records.empty:
        return {}, float("nan")
    sessions = records["key"].str.slice(len(prefix)).str.split(":", n=1).str[0]
    worst: dict[str, float] = {}
    for _, part in records.groupby(sessions):
        for node, (seconds, _) in longest_unanswered_per_node(part).items():
            worst[node] = max(worst.get(node, 0.0), seconds)
    return worst, session_gap(prefix, records)


@dataclass
class Watch:
    """One piece of cluster work under watch: what was started (or found running), the latency baseline, and the
    pace the mover moves at (the budget governor, or the throttle of a fixed pace; its `decisions` are charted)."""

    throttle: "Pace"
    baseline: dict
    started: dict[str, str]


def session_gap(prefix: str, records: pd.DataFrame) -> float:
    """The longest gap without a served request while a probe ran: within each probe session (the token its keys
    carry after `prefix`), so that the pause between a killed run's probe and the one `runbook resume` starts in the
    same run folder is not counted as downtime (pure)."""
    if records.empty:
        return float("nan")
    sessions = records["key"].str.slice(len(prefix)).str.split(":", n=1).str[0]
    return max(longest_gap(part)[0] for _, part in records.groupby(sessions))


def watch(params: Params, run_dir: Path, journal: Journal) -> Watch:
    """The watch 40_migrate, `runbook resume` and `runbook rollback` move slots under: the sampler and probe started
    (kept when they already run for this folder), the latency baseline measured once per run folder, and a throttle
    over the params' gates, to pass to the mover: the budget governor for `migration.pace: budget`, else the
    throttle of a fixed pace."""
    from runbook_lib.config import new_node_addresses
    from runbook_lib.watch.pace import governor
    from runbook_lib.watch.throttle import Throttle, run_gate
    gates, settings = params.model.gates, params.model.migration
    started = start(params, run_dir, new_node_addresses(params))
    base = baseline(run_dir, gates)
    if settings.pace == "budget":
        pace = governor(settings, gates, run_dir, journal, base)
    else:
        pace = Throttle(settings, run_gate(run_dir, gates, base["p99_ms"], gates.window_s), journal,
                        pause_after_s=gates.pause_after_s)
    return Watch(throttle=windowed(pace, settings.window, journal), baseline=base, started=started)


def watching(watch: Watch) -> str:
    """What a watch started, its latency baseline and that it gates every batch, as a line for the operator."""
    base = watch.baseline.get("p99_ms")
    return ("watching: " + ", ".join(f"{name} {state}" for name, state in watch.started.items())
            + (f"; latency baseline p99 {base:.2f} ms" if base else "") + "; every batch gated by the throttle")


class WatchWhenMoving:
    """A pace for the mover (its `before_batch`) that sets up `watch` just before the first batch, so the watchers
    start only when slots really move (a resume that only repairs, or stops at another tool's open slot, starts
    none), then gates every batch with the watch's throttle. `on_start` is told of the watch once it runs."""

    def __init__(self, params: Params, run_dir: Path, journal: Journal,
                 on_start: Callable[[Watch], None] | None = None) -> None:
        self.params, self.run_dir, self.journal, self.on_start = params, run_dir, journal, on_start
        self.watch: Watch | None = None

    def before_batch(self, number: int):
        if self.watch is None:
            self.watch = watch(self.params, self.run_dir, self.journal)
            if self.on_start is not None:
                self.on_start(self.watch)
        return self.watch.throttle.before_batch(number)

    def before_group(self):
        return self.watch.throttle.before_group()

    def end(self) -> None:
        if self.watch is not None:
            self.watch.throttle.end()


def watched_migration(params: Params, run_dir: Path, topo, journal: Journal, progress: bool | None = None,
                      max_batches: int | None = None):
    """The migration under watch: observers started, baseline measured, the pace set by the governor (or the
    throttle of a fixed pace), at most `max_batches` batches (None: all that remain), progress fed by the journal
    where someone watches (`runbook_lib.progress.wanted`).

    Returns (plan, batches, pace decisions, baseline).
    """
    from runbook_lib import progress as shown
    from runbook_lib.cluster.migrate import migrate
    from runbook_lib.watch.journal_progress import follow
    w = watch(params, run_dir, journal)
    with follow(journal.path, "migrating") if shown.wanted(progress) else contextlib.nullcontext():
        plan, batches = migrate(topo, params.credentials(), new_master_addresses(params),
                                params.model.migration, journal, bigkeys=params.model.bigkeys, progress=False,
                                throttle=w.throttle, max_batches=max_batches)
    return plan, batches, w.throttle.decisions, w.baseline


def discard_probe(params: Params, run_dir: Path) -> int:
    """Stop the run's probe and delete every key it wrote (rollback returns the keyspace to what it was)."""
    if not _has_probe(run_dir):
        return 0
    probe = TrafficProbe.attach(run_dir, params.credentials())
    probe.stop()
    return probe.cleanup()
