"""The article's acceptance, from the probe's records and the run's journal: latency variation while slots moved,
failed requests, lost writes and downtime per master, each a check with the numbers behind it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from runbook_lib.checks import Check
from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates
from runbook_lib.watch.probe import TrafficProbe
from runbook_lib.watch.probe_stats import ProbeSummary, longest_gap, longest_unanswered_per_node
from runbook_lib.watch.timeline import (
    MOVE_TAIL_S,
    batch_windows,
    inside,
    label,
    moving_windows,
    quiet_cost,
    quiet_windows,
)
from runbook_lib.watch.verdict import (
    MIN_BLOCKS,
    effective_blocks,
    latency_check,
    latency_verdict,
    p99_ratio_interval,
    ratio_pct,
    time_blocks,
    to_settle,
)
from runbook_lib.watch.watchers import BASELINE_FILE

ACCEPTANCE_FILE = "acceptance.json"
"""What 60_validate writes: the acceptance checks and the numbers behind them, read by the report's index."""


ARTICLE_BUDGET_PCT = 10.0
"""The article's limit: p99 during the migration within +10 % of the baseline p99."""


@dataclass
class Acceptance:
    """The article's acceptance: its checks, and the numbers behind them as 60_validate writes them to
    acceptance.json for the report's verdict table and chart."""

    checks: list[Check]
    data: dict
    FILE: ClassVar[str] = ACCEPTANCE_FILE


def acceptance(run_dir: Path, summary: ProbeSummary | None, gates: Gates) -> Acceptance:
    """The article's acceptance: latency variation, failed requests, lost writes, downtime per master, with the
    numbers behind each .

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
    latency, latency_data = latency_evidence(records, base, moving_windows(entries), gates, quiet_windows(entries),
                                             quiet_cost(entries))
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


CONTROL_MIN_REQUESTS = 100
"""The control backs the verdict only with at least this many requests (and two seconds of them); a p99 rests on
its slowest 1 %."""


def latency_evidence(records: pd.DataFrame, base: dict, moving: list[tuple[float, float]], gates: Gates,
                     quiet: list[tuple[float, float]] = (), cost: dict | None = None) -> tuple[Check, dict]:
    """The latency verdict and the numbers behind it (pure).

    The verdict compares p99 while slots moved with p99 of the control: the requests of the mover's quiet spells,
    taken in the same minutes (`quiet`), so a change of the machine's load moves both sides. The comparison with
    the pre-move baseline is made beside it; it is the verdict's reference only when there is no control (no quiet
    spell: a short migration, or `migration.quiet_every_s: 0`), and the data says which. Also: both p99s, the
    interval, the budget and the article's, the p99 per fixed 10 s window for the dashboard view, and what the
    quiet spells cost in time (`cost`, from `timeline.quiet_cost`).
    """
    ts = records["ts"].to_numpy(float)
    since = base.get("since", (base.get("ts") or 0) - gates.baseline_s)
    rest = records[(ts >= since) & (ts < (base.get("ts") or since))]
    during = records[inside(ts, moving)]
    control = records[inside(ts, list(quiet))]
    moved_s = sum(end - start for start, end in moving)
    data = {"measured": False, "budget_pct": gates.latency_budget_pct, "article_budget_pct": ARTICLE_BUDGET_PCT,
            "baseline_n": int(len(rest)), "during_n": int(len(during)), "control_n": int(len(control)),
            "moving_s": round(moved_s, 2), "control_s": round(sum(end - start for start, end in quiet), 2),
            "quiet": cost or {}}
    has_control = len(control) >= CONTROL_MIN_REQUESTS and effective_blocks(time_blocks(control["ts"])) >= MIN_BLOCKS
    reference = control if has_control else rest
    if not len(reference) or not len(during):
        return Check("latency variation", "warn", f"not measured: {len(rest)} baseline requests, {len(control)} in "
                                                  f"quiet spells and {len(during)} while slots moved"), data
    interval = _interval(reference, during)
    check = latency_check(reference["latency_ms"], during["latency_ms"], budget_pct=gates.latency_budget_pct,
                          interval=interval, reference="control" if has_control else "baseline")
    against_baseline = _comparison(rest, during, gates.latency_budget_pct) if has_control and len(rest) else None
    windows = window_p99(records, moving, quiet)
    notes = [f"while slots moved: {moved_s:.1f} s, each slot from its opening to {MOVE_TAIL_S:g} s after its "
             "handover"]
    if has_control:
        notes.append(f"control: {len(control)} requests in {len(quiet)} quiet spells ({data['control_s']:.1f} s) "
                     "of the same minutes")
    else:
        notes.append(f"no control ({len(control)} requests in quiet spells): judged against the baseline before the "
                     "first slot moved, which the machine's load may have drifted from")
    if against_baseline:
        notes.append(f"against the pre-move baseline: {_pct_text(against_baseline)}")
    worst = _worst(windows)
    if worst:
        notes.append(f"worst 10 s window: {worst['p99_ms']:.2f} ms p99 ({worst['n']} requests) from "
                     f"{worst['start_utc']} UTC")
    verdict = latency_verdict(interval, gates.latency_budget_pct)
    article = latency_verdict(interval, ARTICLE_BUDGET_PCT)
    if gates.latency_budget_pct != ARTICLE_BUDGET_PCT:
        notes.append(f"held to the params' budget +{gates.latency_budget_pct:g} %; against the article's "
                     f"+{ARTICLE_BUDGET_PCT:g} %: {article}")
    reference_p99 = float(np.percentile(reference["latency_ms"], 99))
    during_p99 = float(np.percentile(during["latency_ms"], 99))
    floor_within = None
    if gates.latency_floor_ms:
        floor_within = during_p99 <= reference_p99 + gates.latency_floor_ms
        notes.append(f"the params' floor (+{gates.latency_floor_ms:g} ms, not part of the verdict): "
                     f"{'within' if floor_within else 'beyond'} it")
    if cost and cost.get("spells"):
        notes.append(f"the quiet spells cost {cost['cost_s']:.1f} s of {cost['migration_s']:.1f} s "
                     f"({cost['share'] * 100:.0f} %)")
    ratio, low, high = interval
    data.update(measured=True, status=check.status, verdict=verdict, article_verdict=article, confidence=0.95,
                reference="control" if has_control else "baseline", reference_p99_ms=reference_p99,
                reference_n=int(len(reference)), ratio=_finite(ratio), low=_finite(low), high=_finite(high),
                baseline_p99_ms=float(np.percentile(rest["latency_ms"], 99)) if len(rest) else None,
                control_p99_ms=float(np.percentile(control["latency_ms"], 99)) if len(control) else None,
                during_p99_ms=during_p99, against_baseline=against_baseline, floor_ms=gates.latency_floor_ms or None,
                floor_within=floor_within, windows=windows, worst_window=worst,
                settle=to_settle(interval, gates.latency_budget_pct))
    return Check(check.name, check.status, "; ".join([check.detail, *notes])), data


def _interval(reference: pd.DataFrame, during: pd.DataFrame) -> tuple[float, float, float]:
    return p99_ratio_interval(reference["latency_ms"].to_numpy(float), during["latency_ms"].to_numpy(float),
                              baseline_ts=reference["ts"].to_numpy(float), during_ts=during["ts"].to_numpy(float))


def _comparison(reference: pd.DataFrame, during: pd.DataFrame, budget_pct: float) -> dict:
    """p99 while slots moved against one reference: ratio, interval, verdict and the reference's p99 (pure)."""
    ratio, low, high = _interval(reference, during)
    return {"ratio": _finite(ratio), "low": _finite(low), "high": _finite(high),
            "verdict": latency_verdict((ratio, low, high), budget_pct), "n": int(len(reference)),
            "p99_ms": float(np.percentile(reference["latency_ms"], 99))}


def _pct_text(c: dict) -> str:
    return (f"{ratio_pct(c['ratio'])} [{ratio_pct(c['low'])}, {ratio_pct(c['high'])}] vs {c['p99_ms']:.2f} ms: "
            f"{c['verdict']}")


WINDOW_S = 10.0
"""The dashboard's window: p99 per fixed 10 s, as a Grafana panel of the clients' latency shows it."""
WINDOW_MIN_REQUESTS = 100
"""A window's p99 is named the worst only on at least this many requests (fewer: its p99 is its maximum)."""


def window_p99(records: pd.DataFrame, moving: list[tuple[float, float]], quiet: list[tuple[float, float]],
               window_s: float = WINDOW_S) -> list[dict]:
    """p99 of every request per fixed `window_s` from the first slot opened to the last handed over (epoch-aligned
    windows, as a dashboard draws them), with how much of each window slots moved and was quiet (pure)."""
    if not moving or records.empty:
        return []
    first = np.floor(moving[0][0] / window_s) * window_s
    last = moving[-1][1]
    order = np.argsort(records["ts"].to_numpy(float), kind="stable")
    ts, lat = records["ts"].to_numpy(float)[order], records["latency_ms"].to_numpy(float)[order]
    starts = np.arange(first, last, window_s)
    bounds = np.searchsorted(ts, np.append(starts, starts[-1] + window_s), side="left")
    out = []
    for i, start in enumerate(starts):
        end = start + window_s
        part = lat[bounds[i]:bounds[i + 1]]
        out.append({"start": float(start), "start_utc": _utc(start), "n": int(len(part)),
                    "p99_ms": float(np.percentile(part, 99)) if len(part) else None,
                    "moving_s": round(_overlap(moving, start, end), 2), "quiet_s": round(_overlap(quiet, start, end), 2)})
    return out


def _overlap(spans: list[tuple[float, float]], start: float, end: float) -> float:
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)


def _utc(ts: float) -> str:
    return pd.Timestamp(ts, unit="s").strftime("%H:%M:%S")


def _worst(windows: list[dict]) -> dict | None:
    """The window with the highest p99 among those with enough requests (pure)."""
    full = [w for w in windows if w["p99_ms"] is not None and w["n"] >= WINDOW_MIN_REQUESTS]
    return max(full, key=lambda w: w["p99_ms"]) if full else None


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


def session_gap(prefix: str, records: pd.DataFrame) -> float:
    """The longest gap without a served request while a probe ran: within each probe session (the token its keys
    carry after `prefix`), so that the pause between a killed run's probe and the one `runbook resume` starts in the
    same run folder is not counted as downtime (pure)."""
    if records.empty:
        return float("nan")
    sessions = records["key"].str.slice(len(prefix)).str.split(":", n=1).str[0]
    return max(longest_gap(part)[0] for _, part in records.groupby(sessions))
