"""The adaptive throttle (pure, with a scripted gate): go, slow down and measure again, pause, speed back up."""

import pytest

from runbook_lib.checks import Check
from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Migration
from runbook_lib.watch.throttle import GatePaused, Throttle, faster, slower

PASS = [Check("CPU", "pass", "10 %")]
FAIL = [Check("p99 within 10 % of baseline", "fail", "p99 9 ms, baseline 1 ms")]


def scripted(*answers):
    queue = list(answers)
    seen = []

    def gate(since=None):
        seen.append(since)
        return queue.pop(0) if len(queue) > 1 else queue[0]
    return gate, seen


def make(tmp_path, gate, **kw):
    return Throttle(Migration(preset="fast", slots_per_batch=256, slots_in_flight=32, keys_per_migrate=1000), gate,
                    Journal(tmp_path / "j.jsonl"), sleep=lambda s: None, **kw)


def test_passing_gate_keeps_the_configured_pace(tmp_path):
    gate, _ = scripted(PASS)
    t = make(tmp_path, gate)
    assert t.before_batch(1) == t.configured
    assert [d.action for d in t.decisions] == ["go"]


def test_failing_gate_slows_down_and_the_next_batch_is_judged_while_it_moves(tmp_path):
    """No idle re-measurement after a slow-down: an idle cluster always passes, so the slower pace is tried and the
    gate judges the next batch's moving time."""
    gate, seen = scripted(FAIL, PASS)
    t = make(tmp_path, gate)
    s = t.before_batch(3)
    assert (s.slots_per_batch, s.slots_in_flight, s.keys_per_migrate) == (128, 16, 500)
    assert s.pause_between_batches_s == 0.5
    assert [d.action for d in t.decisions] == ["slow down"]
    assert seen == [None]
    assert [e["event"] for e in Journal(tmp_path / "j.jsonl").entries()] == ["gate"]


def test_at_the_slowest_pace_it_waits_and_measures_only_what_follows(tmp_path):
    gate, seen = scripted(FAIL, FAIL, PASS)
    t = make(tmp_path, gate)
    while slower(t.settings) != t.settings:
        t.settings = slower(t.settings)
    slowest = t.settings
    s = t.before_batch(4)
    assert s == slowest
    assert [d.action for d in t.decisions] == ["wait", "wait", "go after slowing"]
    assert seen[0] is None and all(x is not None for x in seen[1:])


def test_gate_failing_too_long_pauses_with_the_gate_named(tmp_path):
    gate, _ = scripted(FAIL)
    t = make(tmp_path, gate, pause_after_s=0.0)
    with pytest.raises(GatePaused, match="p99 within 10 % of baseline kept failing.*runbook resume"):
        t.before_batch(7)
    assert t.decisions[-1].action == "pause"


def test_pace_recovers_one_step_per_passing_batch(tmp_path):
    gate, _ = scripted(FAIL, PASS, PASS, PASS)
    t = make(tmp_path, gate)
    t.before_batch(1)
    assert t.before_batch(2).slots_per_batch == 256
    assert t.decisions[-1].action == "faster"


def test_steps_stay_within_bounds():
    tiny = Migration(preset="fast", slots_per_batch=1, slots_in_flight=1, migrates_per_round_trip=1, keys_per_migrate=10,
                     pause_between_batches_s=10)
    assert slower(tiny) == tiny
    base = Migration(preset="fast")
    assert faster(slower(slower(base)), base) == slower(base)


def test_slot_rate_halves_and_recovers_when_one_is_set():
    gentle = Migration(preset="gentle")
    assert gentle.max_slots_per_s == 5.0
    assert slower(gentle).max_slots_per_s == 2.5
    assert faster(slower(gentle), gentle).max_slots_per_s == 5.0
    assert slower(Migration(preset="fast", max_slots_per_s=0.6)).max_slots_per_s == 0.5
    assert slower(Migration(preset="fast", max_slots_per_s=0.2)).max_slots_per_s == 0.2, "a step down never speeds up"
    assert slower(Migration(preset="fast")).max_slots_per_s == 0.0, "an unpaced run stays unpaced; the other steps slow it"


def test_the_gate_window_covers_the_latest_moving_seconds_not_the_idle_ones(tmp_path):
    import json
    import time

    from runbook_lib.watch.throttle import _moving_window
    now = time.time()
    lines = [{"event": "slots_open", "slots": [1], "ts": now - 30}, {"event": "slots_assigned", "slots": [1], "ts": now - 27},
             {"event": "slots_open", "slots": [2], "ts": now - 10}, {"event": "slots_assigned", "slots": [2], "ts": now - 8}]
    (tmp_path / "journal.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    back, spans = _moving_window(tmp_path, window_s=4.0)
    assert 26.5 <= back <= 27.5, ("4 s of moving time (each slot until a second after its handover) reach back into "
                                  "the first span, over the idle 16 s between")
    assert len(spans) == 2 and abs(spans[-1][1] - (now - 7)) < 0.01
    (tmp_path / "journal.jsonl").write_text("")
    assert _moving_window(tmp_path, window_s=4.0) == (4.0, None)
