"""The report's acceptance table from what 60_validate writes: measured, without a probe, and not run."""

from runbook_lib.run import verdict_table

CHECKS = [{"name": n, "status": "pass", "detail": "d"} for n in
          ("latency variation", "failed requests", "lost writes", "downtime")]
MEASURED = {
    "measured": True, "checks": CHECKS,
    "latency": {"measured": True, "budget_pct": 200.0, "article_budget_pct": 10.0, "baseline_n": 3000,
                "during_n": 1600, "moving_s": 17.5, "status": "pass", "verdict": "pass",
                "article_verdict": "inconclusive", "confidence": 0.95, "ratio": 1.234, "low": 1.035, "high": 1.518,
                "baseline_p99_ms": 3.66, "during_p99_ms": 4.51, "points": []},
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
    assert latency.judged_against == "the params' budget +200 % (the article's +10 %: inconclusive)"
    failed = rows[1].measured
    assert failed.index("stock clients: 2 of 100 (AttributeError: 2)") < failed.index("patched clients: 0 of 200")
    assert "127.0.0.1:7006: 6 ms" in rows[3].measured and "250 ms per master" in rows[3].judged_against
    data = rows[4]
    assert data.verdict == "warn" and "2 of 3 passed" in data.measured and "latency" not in data.measured
    assert "WARN key count: 12 unexplained" in data.measured


def test_article_budget_alone_when_the_params_use_it_and_inconclusive_is_said():
    latency = {**MEASURED["latency"], "budget_pct": 10.0, "verdict": "inconclusive"}
    row = verdict_table.latency_row(latency, [{"name": "latency variation", "status": "warn"}])
    assert row.judged_against == "the article's +10 %" and row.verdict == "inconclusive"


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
