"""The budget pace controller on synthetic measurements: it backs off on a step up, ramps on quiet, holds ceilings."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Migration
from runbook_lib.watch.inflight import INFLIGHT_FILE, InFlight
from runbook_lib.watch.pace import (
    MIN_BACKOFF_REQUESTS,
    MIN_CONTROL_REQUESTS,
    MIN_REQUESTS,
    Bounds,
    Governor,
    Level,
    Reading,
    decide,
    ratio_interval,
    reference,
    run_measure,
    settings_at,
    start_level,
)
from runbook_lib.watch.probe import PROBE_DIR
from runbook_lib.watch.probe_stats import COLUMNS
from runbook_lib.watch.throttle import GatePaused

SETTINGS = Migration(preset="budget")
BOUNDS = Bounds.of(SETTINGS, Gates(latency_budget_pct=10.0), baseline_p99_ms=1.0)
QUIET = Reading(requests=500, ratio=1.02, low=0.95, high=1.08, p99_ms=1.02)
STEP_UP = Reading(requests=500, ratio=1.6, low=1.3, high=1.9, p99_ms=1.6)


def test_a_quiet_series_ramps_to_the_ceilings_and_stays_there():
    level = start_level(SETTINGS)
    actions = []
    for _ in range(40):
        level, action, _ = decide(level, QUIET, BOUNDS)
        actions.append(action)
    assert level == Level(SETTINGS.max_slots_per_s, SETTINGS.slots_in_flight, SETTINGS.keys_per_migrate)
    assert actions[0] == "ramp" and actions[-1] == "ceiling"
    rates = []
    level = start_level(SETTINGS)
    for _ in range(5):
        level, _, _ = decide(level, QUIET, BOUNDS)
        rates.append(level.slots_per_s)
    assert np.allclose(np.diff(rates), BOUNDS.step), "the ramp is additive: one step per quiet window"


def test_before_the_first_back_off_a_ramp_doubles_and_the_governor_leaves_slow_start_on_it(tmp_path):
    level = start_level(SETTINGS)
    doubled = decide(level, QUIET, BOUNDS, slow_start=True)[0]
    assert doubled.slots_per_s == min(SETTINGS.max_slots_per_s, 2 * level.slots_per_s)
    readings = iter([QUIET, QUIET, STEP_UP, QUIET, QUIET])
    gov = Governor(SETTINGS, BOUNDS, lambda since: next(readings), Journal(tmp_path / "journal.jsonl"))
    rates = []
    for t in range(5):
        gov.tick(now=100.0 + t)
        rates.append(gov.level.slots_per_s)
    start = start_level(SETTINGS).slots_per_s
    assert rates[:2] == [2 * start, 4 * start], "slow start doubles"
    assert rates[2] == 2 * start, "a back-off halves"
    assert np.allclose(np.diff(rates[2:]), BOUNDS.step), "after it, the ramp is additive"


def test_a_step_up_in_p99_backs_off_within_one_interval_and_halves():
    level = Level(32.0, 16, 1000)
    lower, action, why = decide(level, STEP_UP, BOUNDS)
    assert action == "back off" and "over the budget" in why
    assert lower == Level(16.0, 8, 500)


def test_a_failing_node_gate_backs_off_even_when_latency_is_fine():
    lower, action, why = decide(Level(8.0, 4, 1000), Reading(500, 1.0, 0.9, 1.05, 1.0, ("CPU: 91 % >= 70 %",)),
                                BOUNDS)
    assert action == "back off" and "CPU" in why and lower.slots_per_s == 4.0


def test_back_off_stops_at_the_floors():
    level = Level(32.0, 16, 1000)
    for _ in range(20):
        level, action, _ = decide(level, STEP_UP, BOUNDS)
    assert level == Level(SETTINGS.min_slots_per_s, 1, 10) and action == "slowest"


def test_jitter_over_the_limit_holds_a_sure_or_large_excess_backs_off():
    jitter = Reading(requests=300, ratio=1.16, low=0.86, high=1.5, p99_ms=1.16)
    assert decide(Level(4.0, 2, 500), jitter, BOUNDS)[1] == "hold", "not surely slower than at rest"
    sure = Reading(requests=300, ratio=1.16, low=1.02, high=1.3, p99_ms=1.16)
    assert decide(Level(4.0, 2, 500), sure, BOUNDS)[1] == "back off"
    large = Reading(requests=120, ratio=2.5, low=0.9, high=6.0, p99_ms=2.5)
    assert decide(Level(4.0, 2, 500), large, BOUNDS)[1] == "back off", "twice the limit needs no certainty"


def test_an_uncertain_or_thin_window_holds():
    unsure_over = Reading(requests=500, ratio=1.15, low=0.95, high=1.4, p99_ms=1.15)
    assert decide(Level(4.0, 2, 500), unsure_over, BOUNDS)[1] == "hold", "over the limit, not surely slower"
    surely_slower = Reading(requests=5000, ratio=1.08, low=1.02, high=1.14, p99_ms=1.08)
    assert decide(Level(4.0, 2, 500), surely_slower, BOUNDS)[1] == "hold", "within, but surely slower: near the limit"
    unsure_within = Reading(requests=500, ratio=1.05, low=0.9, high=1.25, p99_ms=1.05)
    assert decide(Level(4.0, 2, 500), unsure_within, BOUNDS)[1] == "ramp", "within and not shown to hurt"
    thin = Reading(requests=MIN_BACKOFF_REQUESTS - 1, ratio=3.0, low=2.0, high=4.0, p99_ms=3.0)
    assert decide(Level(4.0, 2, 500), thin, BOUNDS)[1] == "hold", "too few requests to judge either way"
    quiet_but_thin = Reading(requests=MIN_REQUESTS - 1, ratio=1.0, low=0.9, high=1.05, p99_ms=1.0)
    assert decide(Level(4.0, 2, 500), quiet_but_thin, BOUNDS)[1] == "hold", "a ramp needs a surer window"
    over_on_fewer = Reading(requests=MIN_BACKOFF_REQUESTS, ratio=3.0, low=2.0, high=4.0, p99_ms=3.0)
    assert decide(Level(4.0, 2, 500), over_on_fewer, BOUNDS)[1] == "back off"


def test_without_client_latency_only_node_gates_govern():
    assert decide(Level(4.0, 2, 500), Reading(), BOUNDS)[1] == "ramp"
    assert decide(Level(4.0, 2, 500), Reading(failing=("memory: 85 %",)), BOUNDS)[1] == "back off"


def test_the_budget_and_its_floor_set_the_limit():
    assert Bounds.of(SETTINGS, Gates(latency_budget_pct=10.0), 1.0).limit == pytest.approx(1.1)
    assert Bounds.of(SETTINGS, Gates(latency_budget_pct=10.0, latency_floor_ms=2.0), 1.0).limit == pytest.approx(3.0)


def test_settings_at_a_level_never_exceed_the_ceilings():
    s = settings_at(SETTINGS, Level(SETTINGS.max_slots_per_s, SETTINGS.slots_in_flight, SETTINGS.keys_per_migrate))
    assert (s.max_slots_per_s, s.slots_in_flight, s.keys_per_migrate) == (64.0, 16, 1000)
    first = start_level(Migration(preset="budget", start_slots_per_s=100.0))
    assert first.slots_per_s == 64.0, "the start is capped by the ceiling"


def test_budget_pace_needs_a_ceiling():
    with pytest.raises(ValueError, match="needs a ceiling"):
        Migration(preset="budget", max_slots_per_s=0.0)


def test_ratio_interval_sees_a_step_in_a_few_hundred_samples():
    rng = np.random.default_rng(1)
    base = rng.gamma(4.0, 0.25, 3000)
    same = rng.gamma(4.0, 0.25, 400)
    worse = same * 1.5
    r, lo, hi = ratio_interval(base, same)
    assert lo <= 1.0 <= hi * 1.05
    r2, lo2, _ = ratio_interval(base, worse)
    assert lo2 > 1.1 and r2 > r


def test_a_window_without_an_interval_holds_and_only_a_doubled_p99_backs_off():
    """Under two seconds of samples the interval has no ends (whole seconds are resampled): never a ramp."""
    level = Level(8.0, 4, 1000)
    same, action, why = decide(level, Reading(500, 1.02, None, None, 1.02), BOUNDS)
    assert (same, action) == (level, "hold") and "no interval" in why
    assert decide(level, Reading(500, 1.5, None, None, 1.5), BOUNDS)[1] == "hold"
    assert decide(level, Reading(500, 2.5, None, None, 2.5), BOUNDS)[1] == "back off"
    base_ts = 1_700_000_000.0 + np.arange(3000) / 100
    rng = np.random.default_rng(2)
    _, low, high = ratio_interval(rng.gamma(4.0, 0.25, 3000), rng.gamma(4.0, 0.25, 150), base_ts,
                                  base_ts[-1] + 1 + np.arange(150) / 100)
    assert np.isnan(low) and np.isnan(high)


class Series:
    """A synthetic measurement: `readings[i]` at tick i."""

    def __init__(self, readings):
        self.readings, self.i = list(readings), 0

    def __call__(self, since: float) -> Reading:
        r = self.readings[min(self.i, len(self.readings) - 1)]
        self.i += 1
        return r


def test_the_governor_journals_every_change_with_its_measurement(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    g = Governor(SETTINGS, BOUNDS, Series([QUIET, QUIET, STEP_UP]), journal, baseline_p99_ms=1.0)
    g.before_batch(1)
    g.end()
    assert [g.tick(now=t) for t in (1.0, 2.0, 3.0)] == ["ramp", "ramp", "back off"]
    paces = [e for e in journal.entries() if e["event"] == "pace"]
    assert [e["action"] for e in paces] == ["start", "ramp", "ramp", "back off"]
    assert paces[-1]["ratio"] == pytest.approx(1.6) and paces[-1]["limit_ms"] == pytest.approx(1.1)
    assert g.before_group().max_slots_per_s == g.level.slots_per_s


def test_the_governor_pauses_between_slots_when_gates_keep_failing_at_the_slowest_pace(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    slow = Level(SETTINGS.min_slots_per_s, 1, 10)
    g = Governor(SETTINGS, BOUNDS, Series([STEP_UP]), journal, pause_after_s=5.0, level=slow)
    g.before_batch(1)
    g.end()
    assert g.tick(now=100.0) == "slowest"
    assert g.tick(now=103.0) == "slowest"
    assert g.tick(now=106.0) == "pause"
    assert g.tick(now=107.0) == "pause"
    with pytest.raises(GatePaused, match="slowest pace for 5 s.*runbook resume"):
        g.before_group()
    assert [e["action"] for e in journal.entries() if e["event"] == "pace"] == ["start", "slowest", "pause"]


def test_a_gate_that_recovers_at_the_slowest_pace_does_not_pause(tmp_path):
    slow = Level(SETTINGS.min_slots_per_s, 1, 10)
    g = Governor(SETTINGS, BOUNDS, Series([STEP_UP, STEP_UP, QUIET, STEP_UP]), Journal(tmp_path / "j.jsonl"),
                 pause_after_s=5.0, level=slow)
    g.before_batch(1)
    g.end()
    assert [g.tick(now=t) for t in (100.0, 103.0, 104.0, 106.0)] == ["slowest", "slowest", "ramp", "back off"]
    g.before_group()


def test_the_pace_series_bins_what_moved_against_the_pace_set_and_the_clients_p99():
    import pandas as pd

    from runbook_lib.watch.timeline import pace_series
    entries = [{"event": "slots_open", "ts": 100.0, "slots": [1]},
               {"event": "pace", "ts": 100.0, "slots_per_s": 2.0, "limit_ms": 1.1},
               {"event": "keys_migrated", "ts": 100.5, "slots": {"1": 50}},
               {"event": "slots_assigned", "ts": 100.6, "slots": [1]},
               {"event": "pace", "ts": 101.2, "slots_per_s": 6.0, "limit_ms": 1.1},
               {"event": "slots_assigned", "ts": 102.5, "slots": [2, 3, 4]}]
    records = pd.DataFrame({"ts": [100.1, 100.2, 102.1, 102.2], "latency_ms": [1.0, 1.0, 3.0, 3.0]})
    s = pace_series(entries, records)
    assert s["slots_per_s"].tolist() == [1.0, 0.0, 3.0]
    assert s["keys_per_s"].tolist() == [50.0, 0.0, 0.0]
    assert s["pace_slots_per_s"].tolist() == [2.0, 6.0, 6.0]
    assert s["p99_ms"].iloc[2] == pytest.approx(3.0) and s["requests"].tolist() == [2, 0, 2]
    assert pace_series(entries[:1], records).empty


def test_the_pace_chart_draws_the_series_and_the_back_offs():
    import pandas as pd
    from matplotlib.figure import Figure

    from runbook_lib.run.charts import pace_timeline
    from runbook_lib.watch.timeline import pace_series
    entries = [{"event": "slots_open", "ts": 100.0, "slots": [1]},
               {"event": "pace", "ts": 100.0, "slots_per_s": 2.0, "limit_ms": 1.1, "action": "start"},
               {"event": "slots_assigned", "ts": 100.6, "slots": [1]},
               {"event": "pace", "ts": 101.2, "slots_per_s": 1.0, "limit_ms": 1.1, "action": "back off"},
               {"event": "slots_assigned", "ts": 102.5, "slots": [2, 3, 4]}]
    records = pd.DataFrame({"ts": [100.1, 102.1], "latency_ms": [1.0, 3.0]})
    fig = pace_timeline(pace_series(entries, records), [e for e in entries if e["event"] == "pace"], 1.0)
    assert isinstance(fig, Figure)
    lines = fig.axes[1].get_lines()
    assert any(line.get_label() == "backed off" for line in lines)


def test_a_probe_without_samples_holds_and_says_so():
    """The defect: 0 requests from a probe that measures read as "no probe", so every empty window ramped."""
    level = Level(4.0, 2, 500)
    for empty in (Reading(probing=True, reference="control", reference_p99_ms=1.0),
                  Reading(requests=MIN_BACKOFF_REQUESTS - 1, probing=True, reference="baseline"),
                  Reading(probing=True)):
        same, action, why = decide(level, empty, BOUNDS)
        assert (same, action) == (level, "hold"), empty
        assert "too few" in why or "no reference" in why
    assert decide(level, Reading(probing=True, failing=("CPU: 91 %",)), BOUNDS)[1] == "back off", \
        "a failing node gate is evidence enough"


@settings(max_examples=300, deadline=None)
@given(rate=st.floats(0.5, 64.0), in_flight=st.integers(1, 16), keys=st.integers(10, 1000),
       requests=st.integers(0, MIN_REQUESTS - 1), has_ratio=st.booleans(), ratio=st.floats(0.1, 1.5),
       spread=st.floats(0.0, 0.5), reference=st.sampled_from([None, "control", "baseline"]))
def test_no_reading_without_enough_samples_ever_ramps(rate, in_flight, keys, requests, has_ratio, ratio, spread,
                                                      reference):
    level = Level(rate, in_flight, keys)
    reading = Reading(requests=requests, ratio=ratio if has_ratio else None,
                      low=ratio - spread if has_ratio else None, high=ratio + spread if has_ratio else None,
                      probing=True, reference=reference)
    after, action, _ = decide(level, reading, BOUNDS)
    assert action not in ("ramp", "ceiling")
    assert after.slots_per_s <= level.slots_per_s and after.keys_per_migrate <= level.keys_per_migrate


def test_the_reference_is_the_control_once_it_has_enough_samples_else_the_baseline():
    base_ms, base_ts = np.ones(3000), 1000.0 + np.arange(3000) / 100
    thin_ms, thin_ts = np.full(MIN_CONTROL_REQUESTS - 1, 2.0), 2000.0 + np.arange(MIN_CONTROL_REQUESTS - 1) / 50
    assert reference(thin_ms, thin_ts, base_ms, base_ts)[0] == "baseline", "too few requests"
    spell_ms, spell_ts = np.full(190, 2.0), 2000.0 + np.arange(190) / 95
    assert reference(spell_ms, spell_ts, base_ms, base_ts)[0] == "control", "one 2 s spell at 100 requests/s"
    one_second_ms, one_second_ts = np.full(400, 2.0), 2000.0 + np.arange(400) / 1000
    assert reference(one_second_ms, one_second_ts, base_ms, base_ts)[0] == "baseline", "under two seconds of blocks"
    ok_ms, ok_ts = np.full(400, 2.0), 2000.0 + np.arange(400) / 100
    name, ref_ms, _ = reference(ok_ms, ok_ts, base_ms, base_ts)
    assert name == "control" and ref_ms is ok_ms
    assert reference(thin_ms, thin_ts, base_ms[:10], base_ts[:10])[0] is None


class RunFolder:
    """A run folder written by hand: a probe state, one worker's records, the journal, the in-flight board."""

    def __init__(self, root, now: float) -> None:
        self.root, self.now = root, now
        self.probe = root / PROBE_DIR
        self.probe.mkdir(parents=True)
        (self.probe / "probe.json").write_text(json.dumps({
            "seeds": ["127.0.0.1:1"], "token": "t", "timeout_s": 2.0, "max_runtime_s": 3600.0, "clients": ["patched"],
            "settings": {"rate": 100.0, "processes": 1, "stock_processes": 0, "prefix": "p:", "ttl_s": 3600,
                         "read_ratio": 0.5}}))
        self.journal = Journal(root / "journal.jsonl")

    def records(self, spans: list[tuple[float, float, float]]) -> None:
        """Records every 10 ms in each (start, end, latency_ms) span."""
        rows = [(t, lat) for a, b, lat in spans for t in np.arange(a, b, 0.01)]
        df = pd.DataFrame({c: "" for c in COLUMNS}, index=range(len(rows)))
        df["ts"] = [f"{t:.6f}" for t, _ in rows]
        df["latency_ms"] = [f"{lat:.3f}" for _, lat in rows]
        df["service_ms"] = df["latency_ms"]
        df["worker"], df["op"], df["outcome"], df["client"] = 0, "set", "ok", "patched"
        df[COLUMNS].to_csv(self.probe / "worker-0.csv", index=False)

    def event(self, event: str, ago: float, **fields) -> None:
        with patch("time.time", return_value=self.now - ago):
            self.journal.record(event, **fields)


def test_run_measure_judges_the_moving_samples_against_the_recent_quiet_spells(tmp_path):
    """The machine got three times slower since the baseline, moving and quiet alike: against the control the
    moving samples are fine; against the baseline (the old reference) they were three times over."""
    now = time.time()
    run = RunFolder(tmp_path, now)
    run.records([(now - 100, now - 70, 1.0), (now - 50, now - 46, 3.0), (now - 40, now - 30, 3.0),
                 (now - 25, now - 21, 3.0), (now - 20, now - 1, 3.0)])
    run.event("quiet_start", 50)
    run.event("quiet_end", 46)
    run.event("slots_open", 40, slots=[1, 2])
    run.event("slots_assigned", 31, slots=[1, 2])
    run.event("quiet_start", 25)
    run.event("quiet_end", 21)
    run.event("slots_open", 20, slots=[3])
    measure = run_measure(tmp_path, Gates(latency_budget_pct=10.0), {"since": now - 100, "ts": now - 70,
                                                                       "p99_ms": 1.0}, clock=lambda: now)
    reading = measure(now - 19)
    assert reading.probing and reading.reference == "control"
    assert reading.reference_p99_ms == pytest.approx(3.0)
    assert reading.requests == pytest.approx(1800, abs=5), "only samples since the change, while slots moved"
    assert reading.ratio == pytest.approx(1.0) and reading.high <= 1.1


def test_run_measure_falls_back_to_the_baseline_until_the_control_has_enough(tmp_path):
    now = time.time()
    run = RunFolder(tmp_path, now)
    run.records([(now - 100, now - 70, 1.0), (now - 25, now - 24.2, 3.0), (now - 20, now - 1, 3.0)])
    run.event("quiet_start", 25)
    run.event("quiet_end", 24.2)
    run.event("slots_open", 20, slots=[3])
    reading = run_measure(tmp_path, Gates(latency_budget_pct=10.0), {"since": now - 100, "ts": now - 70,
                                                                      "p99_ms": 1.0}, clock=lambda: now)(now - 19)
    assert reading.reference == "baseline" and reading.ratio == pytest.approx(3.0)


def test_run_measure_with_a_probe_but_no_moving_samples_reads_as_probing_and_holds(tmp_path):
    """A quiet spell (or a wait between groups) since the last change: nothing moved, nothing to judge."""
    now = time.time()
    run = RunFolder(tmp_path, now)
    run.records([(now - 100, now - 70, 1.0), (now - 5, now - 1, 1.0)])
    run.event("slots_open", 20, slots=[3])
    run.event("slots_assigned", 10, slots=[3])
    run.event("quiet_start", 5)
    measure = run_measure(tmp_path, Gates(), {"since": now - 100, "ts": now - 70, "p99_ms": 1.0}, clock=lambda: now)
    reading = measure(now - 6)
    assert reading.probing and reading.requests == 0 and reading.ratio is None
    assert decide(Level(4.0, 2, 500), replace(reading, failing=()), BOUNDS)[1] == "hold"


def test_run_measure_counts_a_stall_in_progress_as_late_requests(tmp_path):
    """The only worker has been stuck for 3 s on a request: its 300 owed sends are late now, not in 3 s."""
    now = time.time()
    run = RunFolder(tmp_path, now)
    run.records([(now - 100, now - 70, 1.0), (now - 10, now - 3, 1.0)])
    run.event("slots_open", 10, slots=[3])
    InFlight(run.probe / INFLIGHT_FILE, 0, 1).sending(now - 3.0)
    reading = run_measure(tmp_path, Gates(latency_budget_pct=10.0), {"since": now - 100, "ts": now - 70,
                                                                      "p99_ms": 1.0}, clock=lambda: now)(now - 10)
    assert reading.late == pytest.approx(300, abs=5), "the sends owed since the stall began, beyond 1.1 ms late"
    assert reading.requests == pytest.approx(1000, abs=10)
    assert reading.ratio > 100, "p99 of the window: seconds late, where the baseline is 1 ms"
    assert decide(Level(4.0, 2, 500), replace(reading, failing=()), BOUNDS)[1] == "back off"


def test_the_governor_journals_the_reference_it_judged_by(tmp_path):
    journal = Journal(tmp_path / "journal.jsonl")
    control = replace(QUIET, probing=True, reference="control", reference_p99_ms=2.0, late=3)
    g = Governor(SETTINGS, BOUNDS, Series([control]), journal, baseline_p99_ms=1.0)
    g.before_batch(1)
    g.end()
    assert g.tick(now=1.0) == "ramp"
    last = [e for e in journal.entries() if e["event"] == "pace"][-1]
    assert (last["reference"], last["reference_p99_ms"], last["late"]) == ("control", 2.0, 3)
    assert last["limit_ms"] == pytest.approx(2.2) and "of control" in last["reason"]


def test_a_rate_the_mover_did_not_use_is_not_raised():
    level = Level(16.0, 8, 1000)
    unused = replace(QUIET, moved_per_s=3.0)
    held, action, why = decide(level, unused, BOUNDS, slow_start=True)
    assert (held, action) == (level, "hold") and "used 3.0 of 16 slots/s" in why
    used = replace(QUIET, moved_per_s=12.0)
    assert decide(level, used, BOUNDS, slow_start=True)[1] == "ramp"
    assert decide(level, replace(STEP_UP, moved_per_s=3.0), BOUNDS)[1] == "back off", "backing off needs no use"


def test_moved_per_s_counts_the_slots_handed_over_since_the_change():
    from runbook_lib.watch.pace import moved_per_s
    entries = [{"event": "slots_assigned", "ts": 99.0, "slots": [1, 2, 3]},
               {"event": "slots_assigned", "ts": 101.0, "slots": [4, 5]},
               {"event": "slots_open", "ts": 102.0, "slots": [6]},
               {"event": "slots_assigned", "ts": 103.0, "slots": [6, 7]}]
    assert moved_per_s(entries, since=100.0, now=104.0) == pytest.approx(1.0)
    assert moved_per_s(entries, since=103.5, now=104.0) is None, "under a second says nothing"
