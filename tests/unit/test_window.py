"""The off-peak window: inside or not, when it next opens (across midnight, across DST), and the pace that waits for
it or stops the run."""

from __future__ import annotations

import datetime as dt
import json
import time
from contextlib import nullcontext
from zoneinfo import ZoneInfo

import pytest

from runbook_lib.cluster.journal import Journal
from runbook_lib.config import Gates, Migration, Window
from runbook_lib.exceptions import PaceStop
from runbook_lib.watch.pace import Bounds, Governor, Level, Reading
from runbook_lib.watch.window import Windowed, is_open, next_open, until, windowed

BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.timezone.utc


def at(text: str, zone=BERLIN) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=zone)


def test_a_window_inside_one_day():
    w = Window(start="02:00", end="04:00", timezone="Europe/Berlin")
    assert not is_open(w, at("2026-03-10T01:59:59"))
    assert is_open(w, at("2026-03-10T02:00:00"))
    assert is_open(w, at("2026-03-10T03:59:59"))
    assert not is_open(w, at("2026-03-10T04:00:00"))
    assert next_open(w, at("2026-03-10T01:00:00")) == at("2026-03-10T02:00:00")
    assert next_open(w, at("2026-03-10T05:00:00")) == at("2026-03-11T02:00:00")
    assert next_open(w, at("2026-03-10T03:00:00")) == at("2026-03-10T03:00:00"), "open now: now"


def test_a_window_across_midnight():
    w = Window(start="22:00", end="04:00", timezone="Europe/Berlin")
    assert is_open(w, at("2026-03-10T23:30:00")) and is_open(w, at("2026-03-11T00:30:00"))
    assert is_open(w, at("2026-03-11T03:59:00")) and not is_open(w, at("2026-03-11T04:00:00"))
    assert not is_open(w, at("2026-03-11T12:00:00"))
    assert next_open(w, at("2026-03-11T12:00:00")) == at("2026-03-11T22:00:00")


def test_the_zone_decides_not_the_machine_clock():
    w = Window(start="02:00", end="04:00", timezone="Europe/Berlin")
    assert is_open(w, dt.datetime(2026, 1, 10, 1, 30, tzinfo=UTC)), "01:30 UTC is 02:30 in Berlin in winter"
    assert not is_open(w, dt.datetime(2026, 7, 10, 2, 30, tzinfo=UTC)), "02:30 UTC is 04:30 in Berlin in summer"
    assert next_open(w, dt.datetime(2026, 7, 10, 12, 0, tzinfo=UTC)) == dt.datetime(2026, 7, 11, 0, 0, tzinfo=UTC)


def test_clocks_going_forward_open_the_window_after_the_gap():
    """29 March 2026, Berlin: 02:00 CET jumps to 03:00 CEST, so 02:00-04:00 that night is one hour long."""
    w = Window(start="02:00", end="04:00", timezone="Europe/Berlin")
    opens = next_open(w, at("2026-03-29T00:30:00"))
    assert opens.astimezone(UTC) == dt.datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert opens.astimezone(BERLIN).hour == 3, "the first wall-clock time after the skipped hour"
    assert is_open(w, opens)
    assert not is_open(w, dt.datetime(2026, 3, 29, 2, 0, tzinfo=UTC)), "04:00 CEST: closed again"


def test_clocks_going_back_keep_the_window_open_for_both_passes_of_the_repeated_hour():
    """25 October 2026, Berlin: 03:00 CEST goes back to 02:00 CET: 02:00-04:00 holds three hours."""
    w = Window(start="02:00", end="04:00", timezone="Europe/Berlin")
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert first.astimezone(BERLIN).hour == second.astimezone(BERLIN).hour == 2
    assert is_open(w, first) and is_open(w, second)
    assert is_open(w, dt.datetime(2026, 10, 25, 2, 30, tzinfo=UTC))
    assert not is_open(w, dt.datetime(2026, 10, 25, 3, 0, tzinfo=UTC))
    assert next_open(w, at("2026-10-24T12:00:00")) == dt.datetime(2026, 10, 25, 0, 0, tzinfo=UTC)


def test_seconds_are_allowed_and_the_message_says_when():
    w = Window(start="02:00:30", end="02:10", timezone="UTC")
    now = dt.datetime(2026, 5, 1, 2, 0, 0, tzinfo=UTC)
    assert not is_open(w, now)
    assert until(w, now) == "2026-05-01 02:00:30 UTC (in 30 s)"
    assert "(in 23 h" in until(w, dt.datetime(2026, 5, 1, 3, 0, tzinfo=UTC))


@pytest.mark.parametrize("window, problem", [
    ({"start": "2:00", "end": "04:00"}, "pattern"),
    ({"start": "24:00", "end": "04:00"}, "pattern"),
    ({"start": 120, "end": "04:00"}, "quotes"),
    ({"start": "02:00", "end": "02:00"}, "empty"),
    ({"start": "02:00", "end": "04:00", "timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"start": "02:00", "end": "04:00", "outside": "skip"}, "wait"),
    ({"start": "02:00", "end": "04:00", "when": "night"}, "Extra"),
])
def test_a_bad_window_is_refused(window, problem):
    with pytest.raises(ValueError, match=problem):
        Migration.model_validate({"window": window})


def test_no_window_means_any_time():
    assert Migration.model_validate({}).window is None


class Inner:
    """The pace being wrapped: counts what the mover asked it."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.decisions = ["kept"]
        self.settings = Migration()

    def before_batch(self, number: int) -> Migration:
        self.asked.append(f"batch {number}")
        return self.settings

    def before_group(self) -> Migration:
        self.asked.append("group")
        return self.settings

    def idle(self):
        return nullcontext()

    def end(self) -> None:
        self.asked.append("end")


class Clock:
    def __init__(self, start: dt.datetime) -> None:
        self.t = start.timestamp()
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def events(journal: Journal) -> list[dict]:
    return [json.loads(line) for line in journal.path.read_text().splitlines()]


def test_outside_the_window_the_pace_waits_says_when_and_journals_it(tmp_path):
    clock = Clock(dt.datetime(2026, 5, 1, 1, 59, 0, tzinfo=UTC))
    journal, said, inner = Journal(tmp_path / "journal.jsonl"), [], Inner()
    pace = Windowed(inner, Window(start="02:00", end="04:00"), journal, say=said.append, now=clock.now,
                    sleep=clock.sleep)
    pace.before_batch(1)
    assert inner.asked == ["batch 1"], "the inner pace is asked once the window is open"
    assert clock.t == dt.datetime(2026, 5, 1, 2, 0, tzinfo=UTC).timestamp()
    assert max(clock.slept) <= 5.0, "the clock is looked at every few seconds at most"
    assert "outside the off-peak window 02:00-04:00 UTC" in said[0] and "2026-05-01 02:00:00 UTC (in 1 min 00 s)" in said[0]
    assert "open" in said[1]
    kinds = [e["event"] for e in events(journal)]
    assert kinds == ["window_wait", "window_open"]
    assert events(journal)[1]["waited_s"] == 60.0
    pace.before_group()
    pace.end()
    assert inner.asked == ["batch 1", "group", "end"] and len(said) == 2, "inside the window: no wait, no message"
    assert pace.decisions == ["kept"] and pace.settings is inner.settings, "the inner pace's attributes show through"


def test_outside_stop_raises_pace_stop_before_asking_the_inner_pace(tmp_path):
    clock = Clock(dt.datetime(2026, 5, 1, 12, 0, tzinfo=UTC))
    journal, inner = Journal(tmp_path / "journal.jsonl"), Inner()
    pace = Windowed(inner, Window(start="02:00", end="04:00", outside="stop"), journal, say=lambda s: None,
                    now=clock.now, sleep=clock.sleep)
    with pytest.raises(PaceStop, match=r"stopped.*opens 2026-05-02 02:00:00 UTC \(in 14 h 00 min\).*runbook resume"):
        pace.before_group()
    assert inner.asked == [] and clock.slept == []
    assert [e["event"] for e in events(journal)] == ["window_stop"]


def test_without_a_window_the_pace_is_the_inner_one(tmp_path):
    inner = Inner()
    assert windowed(inner, None, Journal(tmp_path / "j.jsonl")) is inner
    assert isinstance(windowed(inner, Window(start="02:00", end="04:00"), Journal(tmp_path / "j.jsonl")), Windowed)


class Measured:
    """A measurement that would ramp every tick (node gates pass, no probe), noting the `since` it was asked for."""

    def __init__(self) -> None:
        self.since: list[float] = []

    def __call__(self, since: float) -> Reading:
        self.since.append(since)
        return Reading()


def test_a_window_that_closes_mid_migration_freezes_the_governor_until_it_opens_again(tmp_path):
    """The defect: the governor kept ticking while the run waited for its window, and ramped on an idle cluster."""
    clock = Clock(dt.datetime(2026, 5, 1, 3, 59, 59, tzinfo=UTC))

    def sleep(s: float) -> None:
        time.sleep(0.02)
        clock.sleep(s)
    journal, measured = Journal(tmp_path / "journal.jsonl"), Measured()
    settings = Migration(preset="budget", start_slots_per_s=2.0, max_slots_per_s=64.0)
    governor = Governor(settings, Bounds.of(settings, Gates(), None), measured, journal, interval_s=0.005,
                        clock=clock.now)
    levels: list[tuple[str, Level]] = []
    pace = Windowed(governor, Window(start="02:00", end="04:00"), journal,
                    say=lambda s: levels.append((s, governor.level)), now=clock.now, sleep=sleep,
                    check_every_s=3600.0)
    try:
        pace.before_batch(1)
        clock.t += 2.0
        pace.before_group()
        assert len(levels) == 2 and "waiting" in levels[0][0] and "open" in levels[1][0]
        assert levels[1][1] == levels[0][1], "the level when the window opens is the level when it closed"
        entries = events(journal)
        wait = next(i for i, e in enumerate(entries) if e["event"] == "window_wait")
        opened = next(i for i, e in enumerate(entries) if e["event"] == "window_open")
        assert not [e for e in entries[wait:opened] if e["event"] == "pace"], "no tick while waiting"
        reopened = clock.now()
        deadline = time.time() + 5
        while not [s for s in measured.since if s >= reopened] and time.time() < deadline:
            time.sleep(0.01)
    finally:
        pace.end()
    after = [s for s in measured.since if s >= reopened]
    assert after and after[0] == reopened, "after the wait the governor measures afresh, from the window's opening"
    assert governor.tick() in ("ramp", "ceiling"), "measuring again after the wait"
