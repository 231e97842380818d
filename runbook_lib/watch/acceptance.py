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
from runbook_lib.watch.timeline import MOVE_TAIL_S, batch_windows, inside, label, moving_windows
from runbook_lib.watch.verdict import latency_check, latency_verdict, p99_ratio_interval
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


def latency_evidence(records: pd.DataFrame, base: dict, moving: list[tuple[float, float]],
                     gates: Gates) -> tuple[Check, dict]:
    """The latency verdict and the numbers behind it: both p99s, the ratio's interval, the budget and the article's,
    and the p99 of consecutive groups of the same samples the verdict judges, for its chart (pure)."""
    ts = records["ts"].to_numpy(float)
    since = base.get("since", (base.get("ts") or 0) - gates.baseline_s)
    rest_part = records[(ts >= since) & (ts < (base.get("ts") or since))]
    at_rest = rest_part["latency_ms"].to_numpy(float)
    moving_part = records[inside(ts, moving)]
    during = moving_part["latency_ms"].to_numpy(float)
    moved_s = sum(end - start for start, end in moving)
    data = {"measured": False, "budget_pct": gates.latency_budget_pct, "article_budget_pct": ARTICLE_BUDGET_PCT,
            "baseline_n": int(len(at_rest)), "during_n": int(len(during)), "moving_s": round(moved_s, 2)}
    if not len(at_rest) or not len(during):
        return Check("latency variation", "warn", f"not measured: {len(at_rest)} baseline requests and "
                                                  f"{len(during)} while slots moved"), data
    interval = p99_ratio_interval(at_rest, during, baseline_ts=rest_part["ts"].to_numpy(float),
                                  during_ts=moving_part["ts"].to_numpy(float))
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


def session_gap(prefix: str, records: pd.DataFrame) -> float:
    """The longest gap without a served request while a probe ran: within each probe session (the token its keys
    carry after `prefix`), so that the pause between a killed run's probe and the one `runbook resume` starts in the
    same run folder is not counted as downtime (pure)."""
    if records.empty:
        return float("nan")
    sessions = records["key"].str.slice(len(prefix)).str.split(":", n=1).str[0]
    return max(longest_gap(part)[0] for _, part in records.groupby(sessions))
