"""The planner's time estimate: a cost per slot, per key and per byte, per batch and in total."""

import pytest

from runbook_lib.cluster.plan import (
    MoveRates,
    batch_estimates,
    batch_summary,
    describe_estimate,
    estimate,
    estimate_seconds,
    plan_expansion,
)
from runbook_lib.cluster.topology import SLOTS
from runbook_lib.exceptions import BadInput

RATES = MoveRates(slot_s=0.001, keys_per_s=1000.0, bytes_per_s=1e6)


def three_masters() -> dict[str, set[int]]:
    share = SLOTS // 3
    return {"a": set(range(0, share)), "b": set(range(share, 2 * share)), "c": set(range(2 * share, SLOTS))}


def test_each_term_adds_up():
    assert estimate_seconds(10, 0, 0, RATES) == pytest.approx(0.01)
    assert estimate_seconds(0, 500, 0, RATES) == pytest.approx(0.5)
    assert estimate_seconds(0, 0, 3_000_000, RATES) == pytest.approx(3.0)
    assert estimate_seconds(10, 500, 3_000_000, RATES) == pytest.approx(3.51)
    assert estimate_seconds(0, 0, 0, RATES) == 0


@pytest.mark.parametrize("bad", [dict(slot_s=-1), dict(keys_per_s=0), dict(bytes_per_s=-5)])
def test_rates_must_be_positive(bad):
    with pytest.raises(BadInput, match="move rates"):
        MoveRates(**bad)


def test_defaults_match_the_sandbox_measurement():
    """4096 slots with the sandbox's mixed data (50 000 keys, 47 MB) moved in 1.3 to 1.5 s on this machine."""
    assert 1.0 <= estimate_seconds(4096, 50_000, 47_000_000) <= 2.5
    assert estimate_seconds(4096, 0, 0) == pytest.approx(4096 * MoveRates().slot_s)


def test_batch_estimates_follow_the_plan():
    keys = {s: 2 for s in range(SLOTS)}
    plan = plan_expansion(three_masters(), ["d"], slots_per_batch=1000, keys_per_slot=keys)
    per_batch = batch_estimates(plan, rates=RATES)
    assert len(per_batch) == len(plan.batches)
    for batch, seconds in zip(plan.batches, per_batch):
        assert seconds == pytest.approx(len(batch) * 0.001 + 2 * len(batch) / 1000)
    heavy = {plan.batches[1][0].slot: 5_000_000}
    with_bytes = batch_estimates(plan, heavy, RATES)
    assert with_bytes[1] == pytest.approx(per_batch[1] + 5.0)
    assert [a for i, a in enumerate(with_bytes) if i != 1] == [a for i, a in enumerate(per_batch) if i != 1]


def test_total_counts_the_pauses_between_batches():
    plan = plan_expansion(three_masters(), ["d"], slots_per_batch=1024)
    record = estimate(plan, None, RATES, pause_s=2.0)
    assert record["seconds"] == pytest.approx(sum(record["batches"]) + 2.0 * (len(plan.batches) - 1))
    assert record["rates"] == {"slot_s": 0.001, "keys_per_s": 1000.0, "bytes_per_s": 1e6}
    assert record["bytes_known"] is False and estimate(plan, {}, RATES)["bytes_known"] is True
    text = describe_estimate(record)
    assert f"{record['seconds']:.1f} s" in text and "no `bigkeys.json`" in text


def test_batch_summary_shows_estimates_and_bytes_when_known():
    plan = plan_expansion(three_masters(), ["d"], slots_per_batch=2048, keys_per_slot={s: 1 for s in range(SLOTS)})
    rows = batch_summary(plan, rates=RATES)
    assert "MB (est.)" not in rows[0]
    assert [r["seconds (est.)"] for r in rows] == [round(s, 2) for s in batch_estimates(plan, rates=RATES)]
    rows = batch_summary(plan, slot_bytes={m.slot: 1048576 for m in plan.moves}, rates=RATES)
    assert [r["MB (est.)"] for r in rows] == [len(b) for b in plan.batches]


def test_a_slot_rate_makes_each_batch_last_its_slots_over_the_rate():
    plan = plan_expansion(three_masters(), ["d"], slots_per_batch=32)
    record = estimate(plan, None, RATES, max_slots_per_s=10.0)
    assert record["batches"] == [pytest.approx(len(b) / 10.0) for b in plan.batches]
    assert record["seconds"] == pytest.approx(len(plan.moves) / 10.0)
    assert "at most 10 slots/s" in describe_estimate(record)


def test_a_budget_pace_estimates_from_the_last_migration_on_the_cluster_or_says_it_could_not():
    from runbook_lib.cluster.plan import paced_estimate
    from runbook_lib.config import Migration
    the_plan = plan_expansion(three_masters(), ["d"], 256, keys_per_slot={s: 10 for s in range(SLOTS)})
    settings = Migration(preset="budget", start_slots_per_s=4.0)
    cautious = paced_estimate(the_plan, settings, None)
    assert f"would take {len(the_plan.moves) / 4.0:.0f} s" in cautious["basis"] and cautious["from_run"] is None
    achieved = {"slots_per_s": 40.0, "keys_per_s": 200.0, "seconds": 100.0}
    learned = paced_estimate(the_plan, settings, achieved, "20261201T000000Z")
    assert learned["seconds"] == pytest.approx(len(the_plan.moves) * 10 / 200.0), "keys take longer than slots here"
    assert "20261201T000000Z" in learned["basis"] and "20261201T000000Z" in describe_estimate(learned)


def test_achieved_pace_reads_what_a_journal_moved():
    from runbook_lib.watch.timeline import achieved_pace
    entries = [{"event": "slots_open", "ts": 100.0, "slots": [1, 2]},
               {"event": "keys_migrated", "ts": 101.0, "slots": {"1": 30, "2": 10}},
               {"event": "slots_assigned", "ts": 102.0, "slots": [1, 2], "source": "a", "target": "d"},
               {"event": "slots_assigned", "ts": 110.0, "slots": [3, 4, 5, 6], "source": "b", "target": "d"}]
    pace = achieved_pace(entries)
    assert pace["slots"] == 6 and pace["seconds"] == 10.0 and pace["slots_per_s"] == pytest.approx(0.6)
    assert pace["keys_per_s"] == pytest.approx(4.0) and pace["nodes"] == ["a", "b", "d"]
    assert achieved_pace(entries[:1]) is None


def test_with_bytes_per_slot_the_bytes_the_last_migration_moved_per_second_can_set_the_estimate():
    from runbook_lib.cluster.plan import paced_estimate
    from runbook_lib.config import Migration
    the_plan = plan_expansion(three_masters(), ["d"], 256, keys_per_slot={s: 10 for s in range(SLOTS)})
    slot_bytes = {m.slot: 100_000 for m in the_plan.moves}
    achieved = {"slots_per_s": 40.0, "keys_per_s": 200.0, "bytes_per_s": 1e6, "seconds": 100.0}
    record = paced_estimate(the_plan, Migration(preset="budget"), achieved, "r1", slot_bytes)
    assert record["seconds"] == pytest.approx(len(the_plan.moves) * 100_000 / 1e6)
    assert record["bytes"] == len(the_plan.moves) * 100_000 and "its bytes take longest" in record["basis"]
    assert "1.00 MB/s" in record["basis"]
    without = paced_estimate(the_plan, Migration(preset="budget"), achieved, "r1")
    assert without["seconds"] == pytest.approx(len(the_plan.moves) * 10 / 200.0) and without["bytes"] is None


def test_the_duty_table_spreads_the_heaviest_sources_blocked_time_over_the_duty_cycle():
    from runbook_lib.cluster.plan import duty_table
    the_plan = plan_expansion(three_masters(), ["d"], 256)
    heavy = next(iter({m.source for m in the_plan.moves}))
    slot_bytes = {m.slot: 3_000_000 if m.source == heavy else 1_000 for m in the_plan.moves}
    rows = duty_table(the_plan, slot_bytes, bytes_per_blocked_s=30e6, duties_pct=(1.0, 10.0))
    heaviest = sum(slot_bytes[m.slot] for m in the_plan.moves if m.source == heavy)
    assert rows[0]["seconds_blocked"] == pytest.approx(heaviest / 30e6, abs=0.1)
    assert rows[0]["at_least_s"] == pytest.approx(100 * heaviest / 30e6, abs=1)
    assert rows[1]["at_least_s"] == pytest.approx(rows[0]["at_least_s"] / 10, abs=1)


def test_the_report_sets_the_estimate_against_what_the_migration_took(tmp_path):
    import json

    from runbook_lib.sections.plan import estimate_against_actual, estimate_text_after
    assert estimate_against_actual(tmp_path) is None, "no estimate, no line"
    (tmp_path / "plan-estimate.json").write_text(json.dumps({"seconds": 40.0, "basis": "at the cautious start pace"}))
    entries = [{"event": "slots_open", "ts": 100.0, "slots": [1, 2]},
               {"event": "keys_migrated", "ts": 101.0, "slots": {"1": 30}, "bytes": 3000},
               {"event": "slots_assigned", "ts": 200.0, "slots": [1, 2], "source": "a", "target": "d"}]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    found = estimate_against_actual(tmp_path)
    assert found["actual_s"] == 100.0 and found["actual_over_estimate"] == pytest.approx(2.5)
    assert not found["within_2x"] and "outside a factor of 2" in estimate_text_after(found)
    (tmp_path / "plan-estimate.json").write_text(json.dumps({"seconds": 80.0}))
    assert estimate_against_actual(tmp_path)["within_2x"]


def test_a_folder_that_expanded_then_rolled_back_is_timed_per_migration(tmp_path):
    import json

    from runbook_lib.sections.plan import estimate_against_actual, last_pace
    expansion = [{"event": "slots_open", "ts": 100.0, "slots": [1, 2]},
                 {"event": "keys_migrated", "ts": 101.0, "slots": {"1": 30}, "bytes": 3000, "block_ms": 10.0,
                  "migrates": 3, "source": "a", "target": "d"},
                 {"event": "slots_assigned", "ts": 110.0, "slots": [1, 2], "source": "a", "target": "d"}]
    rollback = [{"event": "rollback_start", "ts": 1000.0},
                {"event": "slots_open", "ts": 1000.0, "slots": [1, 2]},
                {"event": "keys_migrated", "ts": 1001.0, "slots": {"1": 30}, "bytes": 3000, "block_ms": 30.0,
                 "migrates": 3, "source": "d", "target": "a"},
                {"event": "slots_assigned", "ts": 1040.0, "slots": [1, 2], "source": "d", "target": "a"}]
    run = tmp_path / "reports" / "r1"
    run.mkdir(parents=True)
    (run / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in expansion + rollback))
    (run / "plan-estimate.json").write_text(json.dumps({"seconds": 20.0}))
    assert estimate_against_actual(run)["actual_s"] == 10.0, "the expansion alone, not through its rollback"
    pace, source = last_pace(tmp_path / "reports", {"a", "d"})
    assert source == "r1" and pace["seconds"] == 40.0, "the newest migration in the folder: its rollback"
    assert pace["migrate_cost"]["blocked_s"] == pytest.approx(0.03)
    assert last_pace(tmp_path / "reports", {"x"}) == (None, "")


def test_without_history_the_estimate_is_the_budget_pace_the_clients_never_slow_down():
    from runbook_lib.cluster.plan import open_loop_seconds, paced_estimate
    from runbook_lib.config import Migration
    the_plan = plan_expansion(three_masters(), ["d"], 256)
    settings = Migration(preset="budget")
    quiet = 1 + settings.quiet_s / settings.quiet_every_s
    assert open_loop_seconds(the_plan, settings) == pytest.approx(len(the_plan.moves) / 64.0 * quiet), "slot ceiling"
    heavy = {m.slot: 1_000_000 for m in the_plan.moves}
    per_source = max(sum(1 for m in the_plan.moves if m.source == s) for s in {m.source for m in the_plan.moves})
    assert open_loop_seconds(the_plan, settings, heavy, bytes_per_blocked_s=20e6) == pytest.approx(
        per_source * 1_000_000 / 20e6 / 0.01 * quiet, rel=0.01), "the heaviest source's bytes at a 1 % duty cycle"
    record = paced_estimate(the_plan, settings, None, slot_bytes=heavy)
    assert record["seconds"] == pytest.approx(open_loop_seconds(the_plan, settings, heavy))
    assert "open-loop pace" in record["basis"] and "duty cycle" in record["basis"]
    assert f"it would take {len(the_plan.moves) / settings.start_slots_per_s:.0f} s" in record["basis"]
