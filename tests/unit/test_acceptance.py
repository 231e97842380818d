"""The acceptance verdict on synthetic probe records: latency while slots moved, on the article's limit, per master."""

import numpy as np
import pandas as pd

from runbook_lib.config import Gates
from runbook_lib.watch.acceptance import downtime, latency_evidence
from runbook_lib.watch.timeline import moving_windows


def records(latencies, start=0.0, rate=200.0, node="127.0.0.1:7000"):
    n = len(latencies)
    ts = start + np.arange(n) / rate
    return pd.DataFrame({"ts": ts, "latency_ms": latencies, "service_ms": latencies, "outcome": "ok",
                         "key": ["runbook:probe:tok:0:%d" % i for i in range(n)], "node": node, "op": "get",
                         "worker": 0, "error": "", "note": "", "client": "patched"})


def test_moving_windows_cover_open_slots_only_not_the_pauses_between_them():
    journal = [{"event": "batch_start", "batch": 1, "ts": 9.0}, {"event": "slots_open", "slots": [1, 2], "ts": 10.0},
               {"event": "slots_assigned", "slots": [1, 2], "ts": 10.5}, {"event": "slots_open", "slots": [3], "ts": 12},
               {"event": "slots_assigned", "slots": [3], "ts": 12.2}, {"event": "batch_end", "batch": 1, "ts": 13.0}]
    assert moving_windows(journal, now=100.0, tail_s=0.0) == [(10.0, 10.5), (12.0, 12.2)]
    assert moving_windows(journal, now=100.0) == [(10.0, 11.5), (12.0, 13.2)], "a second after each handover counts"
    assert moving_windows(journal, now=12.5) == [(10.0, 11.5), (12.0, 12.5)], "nothing after now"


def test_latency_fails_at_plus_15_percent_and_passes_at_plus_5_with_the_article_budget():
    rng = np.random.default_rng(1)
    base = rng.gamma(4, 0.1, 20_000)
    slow = records(np.concatenate([base, base * 1.15]))
    quick = records(np.concatenate([base, base * 1.05]))
    window = {"ts": 100.0, "since": 0.0}
    moving = [(100.0, 1000.0)]
    assert latency_evidence(slow, window, moving, Gates(latency_budget_pct=10))[0].status == "fail"
    ok, _ = latency_evidence(quick, window, moving, Gates(latency_budget_pct=10))
    assert ok.status == "pass" and "interval" in ok.detail


def test_a_wider_budget_and_a_floor_are_named_beside_the_article_verdict():
    rng = np.random.default_rng(2)
    base = rng.gamma(4, 0.1, 20_000)
    check, _ = latency_evidence(records(np.concatenate([base, base * 1.3])), {"ts": 100.0, "since": 0.0},
                                 [(100.0, 1000.0)], Gates(latency_budget_pct=50, latency_floor_ms=2.0))
    assert check.status == "pass"
    assert "against the article's +10 %: fail" in check.detail and "floor" in check.detail


def test_downtime_is_judged_per_master():
    fine = records(np.full(400, 0.5), node="127.0.0.1:7000")
    stalled = records(np.full(400, 0.5), node="127.0.0.1:7001")
    during = (stalled["ts"] >= 0.5) & (stalled["ts"] < 2.0)
    stalled.loc[during, "latency_ms"] = (2.0 - stalled.loc[during, "ts"]) * 1000 + 0.5
    stalled.loc[during, "service_ms"] = stalled.loc[during, "latency_ms"]
    verdict = downtime(pd.concat([fine, stalled]).sort_values("ts"), "runbook:probe:")
    assert verdict.status == "fail" and "127.0.0.1:7001" in verdict.detail
    assert downtime(fine, "runbook:probe:").status == "pass"


def test_the_latency_evidence_is_the_verdict_s_own_samples_and_its_chart_draws_the_same_budget():
    from runbook_lib.run.charts import acceptance_latency
    rng = np.random.default_rng(4)
    base = rng.gamma(4, 0.1, 5_000)
    frame = records(np.concatenate([base, base * 1.02]))
    moving = [(25.0, 40.0), (42.0, 50.0)]
    check, data = latency_evidence(frame, {"ts": 25.0, "since": 0.0}, moving, Gates(latency_budget_pct=50))
    during = frame[((frame["ts"] >= 25) & (frame["ts"] < 40)) | ((frame["ts"] >= 42) & (frame["ts"] < 50))]
    assert check.status == data["status"] == "pass" and data["verdict"] == "pass"
    assert data["during_n"] == len(during) and data["reference"] == "baseline"
    assert data["during_p99_ms"] == np.percentile(during["latency_ms"], 99)
    assert data["low"] <= data["ratio"] <= data["high"] and data["article_verdict"] in ("pass", "inconclusive", "fail")
    assert [w["start"] for w in data["windows"]] == [20.0, 30.0, 40.0]
    ax = acceptance_latency(data).axes[0]
    levels = {round(line.get_ydata()[0], 6) for line in ax.get_lines() if len(set(line.get_ydata())) == 1}
    assert round(data["baseline_p99_ms"] * 1.5, 6) in levels and round(data["baseline_p99_ms"] * 1.1, 6) in levels
    assert "PASS" in ax.get_title()


def drifting(moving_factor: float, seed: int = 7) -> tuple[pd.DataFrame, list, list]:
    """Records of a machine whose load rises by half once the migration starts (t = 60 s): quiet spells of 2 s in
    every 20 s see the new load; the moving times see it times `moving_factor`."""
    rng = np.random.default_rng(seed)
    n = 200 * 300
    ts = np.arange(n) / 200.0
    lat = rng.gamma(4, 0.1, n) * np.where(ts >= 60, 1.5, 1.0)
    quiet = [(60.0 + 20 * k + 18, 60.0 + 20 * k + 20) for k in range(12)]
    moving = [(60.0 + 20 * k, 60.0 + 20 * k + 17) for k in range(12)]
    in_moving = np.zeros(n, dtype=bool)
    for a, b in moving:
        in_moving |= (ts >= a) & (ts < b)
    lat[in_moving] *= moving_factor
    frame = records(lat)
    return frame, moving, quiet


def test_the_verdict_compares_with_the_control_of_the_same_minutes_and_shows_the_baseline_beside_it():
    frame, moving, quiet = drifting(1.0)
    cost = {"spells": 12, "quiet_s": 24.0, "cost_s": 40.0, "migration_s": 240.0, "share": 40 / 240}
    check, data = latency_evidence(frame, {"ts": 60.0, "since": 0.0}, moving, Gates(), quiet, cost)
    assert data["reference"] == "control" and data["control_n"] == 12 * 2 * 200
    assert data["verdict"] != "fail" and data["low"] <= 1.0 <= data["high"], "no slower than the control"
    assert data["against_baseline"]["verdict"] == "fail", "the drift alone fails the pre-move comparison"
    assert "against the pre-move baseline" in check.detail and "quiet spells cost 40.0 s of 240.0 s (17 %)" in \
        check.detail
    slow, slow_data = latency_evidence(*drifting(1.3)[:1], {"ts": 60.0, "since": 0.0}, moving, Gates(), quiet)
    assert slow.status == "fail" and slow_data["reference"] == "control"


def test_without_quiet_spells_the_baseline_is_the_reference_and_the_report_says_so():
    frame, moving, _ = drifting(1.0)
    check, data = latency_evidence(frame, {"ts": 60.0, "since": 0.0}, moving, Gates())
    assert data["reference"] == "baseline" and data["against_baseline"] is None
    assert "no control" in check.detail and check.status == "fail"


def test_the_dashboard_windows_name_the_worst_ten_seconds():
    frame, moving, quiet = drifting(1.0)
    frame.loc[(frame["ts"] >= 130) & (frame["ts"] < 131), "latency_ms"] = 50.0
    check, data = latency_evidence(frame, {"ts": 60.0, "since": 0.0}, moving, Gates(), quiet)
    assert len(data["windows"]) == 24 and all(w["n"] == 2000 for w in data["windows"])
    assert data["worst_window"]["start"] == 130.0 and "worst 10 s window: 50.00 ms" in check.detail
    assert sum(w["quiet_s"] for w in data["windows"]) == 24.0


def test_quiet_cost_counts_drain_tail_and_spell_against_the_migration():
    from runbook_lib.watch.timeline import quiet_cost
    journal = [{"event": "slots_open", "slots": [1], "ts": 0.0},
               {"event": "quiet_start", "ts": 21.0, "drained_s": 0.5, "tail_s": 1.0},
               {"event": "quiet_end", "ts": 23.0}, {"event": "slots_assigned", "slots": [1], "ts": 40.0}]
    assert quiet_cost(journal) == {"spells": 1, "quiet_s": 2.0, "cost_s": 3.5, "migration_s": 40.0,
                                   "share": 0.0875}


def test_nothing_while_slots_moved_is_not_measured_and_the_chart_says_so():
    from runbook_lib.run.charts import acceptance_latency
    check, data = latency_evidence(records(np.full(100, 0.5)), {"ts": 1.0, "since": 0.0}, [], Gates())
    assert check.status == "warn" and "not measured" in check.detail and data["measured"] is False
    fig = acceptance_latency(data)
    assert "NOT MEASURED" in fig.axes[0].texts[0].get_text()


def test_the_dashboard_table_gives_each_window_as_a_multiple_of_the_reference():
    from runbook_lib.sections.validate import latency_windows
    from runbook_lib.watch.acceptance import Acceptance
    frame, moving, quiet = drifting(1.0)
    _, data = latency_evidence(frame, {"ts": 60.0, "since": 0.0}, moving, Gates(), quiet)
    table = latency_windows(Acceptance([], {"latency": data}))
    assert list(table.columns) == ["window (UTC)", "requests", "p99 ms", "x control", "moving s", "quiet s"]
    assert len(table) == 24 and table["requests"].sum() == 24 * 2000
    assert abs(table["x control"].median() - 1.0) < 0.15
    assert latency_windows(Acceptance([], {"latency": {"measured": False}})).empty
