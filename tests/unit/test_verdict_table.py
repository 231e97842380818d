"""The report's acceptance table from what 60_validate writes: measured, without a probe, and not run."""

from runbook_lib.run import verdict_table

CHECKS = [{"name": n, "status": "pass", "detail": "d"} for n in
          ("latency variation", "failed requests", "lost writes", "downtime")]
MEASURED = {
    "measured": True, "checks": CHECKS,
    "latency": {"measured": True, "budget_pct": 200.0, "article_budget_pct": 10.0, "baseline_n": 3000,
                "during_n": 1600, "moving_s": 17.5, "status": "pass", "verdict": "pass",
                "article_verdict": "inconclusive", "confidence": 0.95, "ratio": 1.234, "low": 1.035, "high": 1.518,
                "baseline_p99_ms": 3.66, "during_p99_ms": 4.51, "reference": "control", "reference_p99_ms": 3.66,
                "reference_n": 400, "control_n": 400, "control_s": 4.0,
                "against_baseline": {"ratio": 1.5, "low": 1.2, "high": 1.9, "verdict": "fail", "n": 3000,
                                     "p99_ms": 3.0},
                "worst_window": {"start": 100.0, "start_utc": "12:00:10", "n": 2000, "p99_ms": 7.5},
                "quiet": {"spells": 2, "quiet_s": 4.0, "cost_s": 6.5, "migration_s": 40.0, "share": 0.1625}},
    "failed_requests": {"ops": 300, "errors": 2, "errors_by_kind": {"AttributeError": 2},
                        "ops_by_client": {"patched": 200, "stock": 100},
                        "errors_by_client": {"patched": {}, "stock": {"AttributeError": 2}}},
    "lost_writes": {"acknowledged": 150, "verified": 150, "missing": 0, "wrong": 0, "unverifiable": 0,
                    "lost_reads": 0, "wrong_reads": 0},
    "downtime": {"limit_ms": 250.0, "per_master_ms": {"127.0.0.1:7000": 12.0, "127.0.0.1:7006": 6.0},
                 "cluster_gap_ms": 33.0},
}
VALIDATE = {"checks": [{"name": "all slots covered", "status": "pass", "detail": "ok"},
                       {"name": "no key stranded", "status": "pass", "detail": "ok"},
                       {"name": "key count", "status": "warn", "detail": "12 unexplained"}] + CHECKS}


def test_measured_rows_name_interval_budget_article_clients_and_masters():
    rows = verdict_table.rows(MEASURED, VALIDATE)
    assert [r.criterion for r in rows] == ["latency variation", "failed requests", "lost writes",
                                           "downtime per master", "data checks"]
    latency = rows[0]
    assert "+23.4 %" in latency.measured and "95% interval +3.5 % to +51.8 %" in latency.measured
    assert latency.judged_against == "the control: the params' budget +200 % (the article's +10 %: inconclusive)"
    assert "vs 3.66 ms in the quiet spells of the same minutes (400 requests, 4.0 s)" in latency.measured
    assert "against the pre-move baseline 3.00 ms: +50.0 % [+20.0 %, +90.0 %], fail" in latency.measured
    assert "worst 10 s window 7.50 ms from 12:00:10 UTC" in latency.measured
    assert "the 2 quiet spells cost 6.5 s of 40.0 s (16 %)" in latency.measured
    failed = rows[1].measured
    assert failed.index("stock clients: 2 of 100 (AttributeError: 2)") < failed.index("patched clients: 0 of 200")
    assert "127.0.0.1:7006: 6 ms" in rows[3].measured and "250 ms per master" in rows[3].judged_against
    data = rows[4]
    assert data.verdict == "warn" and "2 of 3 passed" in data.measured and "latency" not in data.measured
    assert "WARN key count: 12 unexplained" in data.measured


def test_article_budget_alone_when_the_params_use_it_and_inconclusive_is_said():
    latency = {**MEASURED["latency"], "budget_pct": 10.0, "verdict": "inconclusive"}
    row = verdict_table.latency_row(latency, [{"name": "latency variation", "status": "warn"}])
    assert row.judged_against == "the control: the article's +10 %" and row.verdict == "inconclusive"


def test_an_older_run_without_a_control_still_reads_as_judged_against_its_baseline():
    old = {k: v for k, v in MEASURED["latency"].items()
           if k not in ("reference", "reference_p99_ms", "reference_n", "against_baseline", "quiet", "worst_window")}
    row = verdict_table.latency_row(old, CHECKS)
    assert "vs 3.66 ms baseline before the first slot moved (3000" in row.measured
    assert row.judged_against.startswith("the baseline:")


def test_without_a_probe_the_table_says_not_measured_first():
    data = {"measured": False, "note": "NOT MEASURED: no traffic probe ran", "checks": [],
            "latency": {"measured": False, "budget_pct": 10.0, "article_budget_pct": 10.0}}
    rows = verdict_table.rows(data, VALIDATE)
    assert rows[0].verdict == "not measured" and "NOT MEASURED" in rows[0].measured
    assert [r.verdict for r in rows[1:5]] == ["not measured"] * 4
    assert verdict_table.overall(rows) == "NOT MEASURED"
    assert verdict_table.to_html(rows).index("not measured") < verdict_table.to_html(rows).index("data checks")


def test_without_validation_every_row_says_not_run():
    rows = verdict_table.rows(None, None)
    assert {r.verdict for r in rows} == {"not run"} and verdict_table.overall(rows) == "NOT RUN"


def test_headline_fails_on_any_failed_row_and_passes_only_when_all_pass():
    rows = verdict_table.rows(MEASURED, {"checks": VALIDATE["checks"][:2]})
    assert verdict_table.overall(rows) == "PASS"
    failed = {**MEASURED, "checks": [{**CHECKS[0]}, {**CHECKS[1], "status": "fail"}, *CHECKS[2:]]}
    assert verdict_table.overall(verdict_table.rows(failed, VALIDATE)) == "FAIL"
    assert verdict_table.rows(failed, VALIDATE)[1].verdict == "fail"


def test_the_terminal_headline_names_what_did_not_pass_and_what_would_settle_it(tmp_path):
    import json
    latency = {**MEASURED["latency"], "verdict": "inconclusive", "settle": "about 6 times the seconds of samples "
                                                                           "on each side would settle it"}
    checks = [{**CHECKS[0], "status": "warn"}, *CHECKS[1:]]
    (tmp_path / "acceptance.json").write_text(json.dumps({**MEASURED, "latency": latency, "checks": checks}))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "60_validate.json").write_text(json.dumps({"checks": VALIDATE["checks"][:2]}))
    assert verdict_table.headline(tmp_path) == ("Zero downtime: INCONCLUSIVE; latency variation: inconclusive (about "
                                                "6 times the seconds of samples on each side would settle it)")
