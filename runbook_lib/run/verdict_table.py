"""The report's acceptance table: the article's zero-downtime criteria (latency variation, failed requests, lost writes,
downtime per master) and the data checks, each with what was measured, what it was judged against and the verdict,
from what 60_validate wrote into the run folder (acceptance.json, results/60_validate.json)."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from runbook_lib.watch.acceptance import ACCEPTANCE_FILE
from runbook_lib.watch.verdict import ratio_pct

VALIDATE = "60_validate"
ACCEPTANCE_CHECKS = {"latency variation", "failed requests", "lost writes", "downtime", "zero downtime proven"}
NOT_MEASURED = "not measured"
NOT_RUN = "not run"


@dataclass
class Row:
    """One criterion of the acceptance table."""

    criterion: str
    measured: str
    judged_against: str
    verdict: str


def load(run_dir: Path) -> tuple[dict | None, dict | None]:
    """(acceptance.json, results/60_validate.json) of a run folder, None for each that is missing."""
    def read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    return read(run_dir / ACCEPTANCE_FILE), read(run_dir / "results" / f"{VALIDATE}.json")


def _status(checks: list[dict], name: str) -> str:
    found = [c["status"] for c in checks if c.get("name") == name]
    return found[0] if found else NOT_RUN


def latency_row(latency: dict, checks: list[dict]) -> Row:
    """Latency variation: p99 while slots moved against the control of the quiet spells (or the baseline when there
    was no control), its interval, the pre-move baseline comparison beside it, the worst 10 s window, and the budget
    judged against, with the article's +10 % named beside it when the params' budget differs (pure)."""
    budget, article = latency["budget_pct"], latency["article_budget_pct"]
    reference = latency.get("reference", "baseline")
    against = f"the {reference}: the article's +{article:g} %" if budget == article else (
        f"the {reference}: the params' budget +{budget:g} % (the article's +{article:g} %: "
        f"{latency.get('article_verdict', NOT_MEASURED)})")
    if not latency.get("measured"):
        return Row("latency variation", f"{NOT_MEASURED}: {latency.get('baseline_n', 0)} baseline requests, "
                                        f"{latency.get('control_n', 0)} in quiet spells, "
                                        f"{latency.get('during_n', 0)} while slots moved", against, NOT_MEASURED)
    ref_p99 = latency.get("reference_p99_ms", latency.get("baseline_p99_ms"))
    ref_n = latency.get("reference_n", latency.get("baseline_n"))
    if reference == "control":
        ref_text = (f"{ref_p99:.2f} ms in the quiet spells of the same minutes ({ref_n} requests, "
                    f"{latency['control_s']:.1f} s)")
    else:
        ref_text = f"{ref_p99:.2f} ms baseline before the first slot moved ({ref_n}; no quiet spell to compare with)"
    measured = (f"p99 {latency['during_p99_ms']:.2f} ms while slots moved ({latency['during_n']} requests, "
                f"{latency['moving_s']:.1f} s) vs {ref_text}: {ratio_pct(latency['ratio'])}, "
                f"{latency['confidence']:.0%} interval {ratio_pct(latency['low'])} to {ratio_pct(latency['high'])}")
    beside = latency.get("against_baseline")
    if beside:
        measured += (f"; beside it, against the pre-move baseline {beside['p99_ms']:.2f} ms: "
                     f"{ratio_pct(beside['ratio'])} [{ratio_pct(beside['low'])}, {ratio_pct(beside['high'])}], "
                     f"{beside['verdict']}")
    worst = latency.get("worst_window")
    if worst:
        measured += f"; worst 10 s window {worst['p99_ms']:.2f} ms from {worst['start_utc']} UTC"
    quiet = latency.get("quiet") or {}
    if quiet.get("spells"):
        measured += (f"; the {quiet['spells']} quiet spells cost {quiet['cost_s']:.1f} s of "
                     f"{quiet['migration_s']:.1f} s ({quiet['share'] * 100:.0f} %)")
    status = _status(checks, "latency variation")
    return Row("latency variation", measured, against,
               "inconclusive" if latency.get("verdict") == "inconclusive" else status)


def failed_requests_row(failed: dict, checks: list[dict]) -> Row:
    """Failed requests, stock clients (what applications run) first, then patched ones, by error kind (pure)."""
    parts = [f"{failed['errors']} of {failed['ops']} requests failed"]
    for client in ("stock", "patched"):
        ops = failed["ops_by_client"].get(client)
        kinds = failed["errors_by_client"].get(client, {})
        if ops is None:
            parts.append(f"{client} clients: not run")
            continue
        text = f"{client} clients: {sum(kinds.values())} of {ops}"
        if kinds:
            text += " (" + ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) + ")"
        parts.append(text)
    return Row("failed requests", "; ".join(parts), "none may fail", _status(checks, "failed requests"))


def lost_writes_row(lost: dict, checks: list[dict]) -> Row:
    """Acknowledged writes read back at the end: missing and wrong values, and reads that lost or changed (pure)."""
    measured = (f"{lost['verified']} of {lost['acknowledged']} acknowledged writes read back, {lost['missing']} "
                f"missing, {lost['wrong']} wrong; reads: {lost['lost_reads']} lost, {lost['wrong_reads']} wrong")
    if lost.get("unverifiable"):
        measured += f"; {lost['unverifiable']} expired before the read-back"
    return Row("lost writes", measured, "none may be lost or changed", _status(checks, "lost writes"))


def downtime_row(down: dict, checks: list[dict]) -> Row:
    """The longest time each master was asked and did not answer (pure)."""
    per = down["per_master_ms"]
    measured = (", ".join(f"{n}: {ms:.0f} ms" for n, ms in per.items()) if per else "no per-master records")
    if down.get("cluster_gap_ms") is not None:
        measured += f"; cluster-wide longest gap {down['cluster_gap_ms']:.0f} ms"
    return Row("downtime per master", measured, f"under {down['limit_ms']:g} ms per master (gates.max_downtime_ms)",
               _status(checks, "downtime"))


def data_row(validate: dict | None) -> Row:
    """60_validate's checks of the data and the cluster (coverage, agreement, no key stranded, the round trip,
    the key count), the acceptance checks left out (pure)."""
    if validate is None:
        return Row("data checks", f"{NOT_RUN}: {VALIDATE} did not run in this run folder", "every check passes",
                   NOT_RUN)
    checks = [c for c in validate.get("checks", []) if c.get("name") not in ACCEPTANCE_CHECKS]
    bad = [c for c in checks if c.get("status") != "pass"]
    measured = f"{len(checks) - len(bad)} of {len(checks)} passed: " + ", ".join(c["name"] for c in checks)
    if bad:
        measured += "; " + "; ".join(f"{c['status'].upper()} {c['name']}: {c['detail']}" for c in bad)
    verdict = "fail" if any(c["status"] == "fail" for c in bad) else ("warn" if bad else "pass")
    return Row("data checks", measured, "every check passes", verdict if checks else NOT_RUN)


def rows(acceptance: dict | None, validate: dict | None) -> list[Row]:
    """The acceptance table, one row per criterion; without a probe its first row says "not measured" (pure)."""
    if acceptance is None:
        why = f"{NOT_RUN}: {VALIDATE} did not reach its verdict in this run folder"
        return [Row(name, why, against, NOT_RUN) for name, against in (
            ("latency variation", "the latency budget"), ("failed requests", "none may fail"),
            ("lost writes", "none may be lost or changed"), ("downtime per master", "gates.max_downtime_ms"))] + [
            data_row(validate)]
    checks = acceptance.get("checks", [])
    if not acceptance.get("measured"):
        note = acceptance.get("note", "no traffic probe ran in this run")
        return [Row("zero downtime", note, "the article's acceptance", NOT_MEASURED),
                latency_row(acceptance.get("latency", {"budget_pct": 10.0, "article_budget_pct": 10.0}), checks),
                Row("failed requests", NOT_MEASURED, "none may fail", NOT_MEASURED),
                Row("lost writes", NOT_MEASURED, "none may be lost or changed", NOT_MEASURED),
                Row("downtime per master", NOT_MEASURED, "gates.max_downtime_ms", NOT_MEASURED),
                data_row(validate)]
    return [latency_row(acceptance["latency"], checks), failed_requests_row(acceptance["failed_requests"], checks),
            lost_writes_row(acceptance["lost_writes"], checks), downtime_row(acceptance["downtime"], checks),
            data_row(validate)]


def headline(run_dir: Path) -> str:
    """The verdict in one line for the terminal: the headline, each criterion that did not pass, and what would
    settle an inconclusive latency verdict."""
    acceptance, validate = load(run_dir)
    table = rows(acceptance, validate)
    settle = ((acceptance or {}).get("latency") or {}).get("settle")
    others = [f"{r.criterion}: {r.verdict}" + (f" ({settle})" if settle and r.criterion == "latency variation" else "")
              for r in table if r.verdict != "pass"]
    return f"Zero downtime: {overall(table)}" + "".join(f"; {o}" for o in others)


def overall(table: list[Row]) -> str:
    """The headline: NOT MEASURED or NOT RUN when the first row says so, else FAIL, INCONCLUSIVE or PASS (pure)."""
    verdicts = [r.verdict for r in table]
    if verdicts[0] in (NOT_MEASURED, NOT_RUN):
        return verdicts[0].upper()
    if "fail" in verdicts:
        return "FAIL"
    if NOT_RUN in verdicts or NOT_MEASURED in verdicts:
        return "INCOMPLETE"
    if "inconclusive" in verdicts or "warn" in verdicts:
        return "INCONCLUSIVE"
    return "PASS"


_CLASS = {"pass": "pass", "warn": "warn", "inconclusive": "warn", "fail": "fail", NOT_MEASURED: "warn",
          NOT_RUN: "pending"}


def to_html(table: list[Row]) -> str:
    """The table as HTML (class "acceptance"), each verdict cell coloured by its status."""
    body = "".join(f'<tr class="{_CLASS.get(r.verdict, "")}"><th scope="row">{html.escape(r.criterion)}</th>'
                   f"<td>{html.escape(r.measured)}</td><td>{html.escape(r.judged_against)}</td>"
                   f"<td><strong>{html.escape(r.verdict)}</strong></td></tr>" for r in table)
    return ('<table class="acceptance"><caption>The article\'s acceptance: zero downtime and intact data</caption>'
            "<tr><th>criterion</th><th>measured</th><th>judged against</th><th>verdict</th></tr>"
            f"{body}</table>")
