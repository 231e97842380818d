"""The off-peak window (`migration.window`): whether a time is inside it, when it next opens, and a pace that keeps
the mover to it.

Times are wall-clock times in the window's IANA time zone (zoneinfo), so a window keeps its local hours across
daylight-saving changes; a window whose end is before its start crosses midnight (22:00-04:00). On the night the
clocks go forward, a start inside the skipped hour opens the window at the first wall-clock time after the gap.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import zoneinfo
from contextlib import AbstractContextManager
from typing import Callable

from runbook_lib.cluster.journal import Journal
from runbook_lib.cluster.mover import Pace
from runbook_lib.config import Migration, Window
from runbook_lib.exceptions import PaceStop

CHECK_EVERY_S = 5.0
"""While waiting for the window, the clock is looked at at least this often."""


def clock_time(text: str) -> dt.time:
    """"HH:MM" or "HH:MM:SS" as a time of day (pure)."""
    parts = [int(p) for p in text.split(":")]
    return dt.time(*parts)


def _zone(window: Window) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(window.timezone)


def is_open(window: Window, at: dt.datetime) -> bool:
    """Whether the aware time `at` is inside the window: start <= local time < end, across midnight when end <
    start (pure)."""
    local = at.astimezone(_zone(window)).time().replace(tzinfo=None)
    start, end = clock_time(window.start), clock_time(window.end)
    if start < end:
        return start <= local < end
    return local >= start or local < end


def next_open(window: Window, at: dt.datetime) -> dt.datetime:
    """When the window is next open at or after the aware time `at`, in UTC: `at` itself when it is open now (pure).
    UTC, because an ambiguous local time (the repeated hour) never compares equal across zones."""
    if is_open(window, at):
        return at.astimezone(dt.timezone.utc)
    zone = _zone(window)
    today = at.astimezone(zone).date()
    start = clock_time(window.start)
    candidates = []
    for days in range(0, 3):
        wall = dt.datetime.combine(today + dt.timedelta(days=days), start, tzinfo=zone)
        real = wall.astimezone(dt.timezone.utc)
        if real >= at and is_open(window, real):
            candidates.append(real)
    return min(candidates)


def describe(window: Window) -> str:
    """The window as people write it: "02:00-04:00 Europe/Berlin"."""
    return f"{window.start}-{window.end} {window.timezone}"


def until(window: Window, at: dt.datetime) -> str:
    """When the window opens, for a message: local time and how long from `at` (pure)."""
    opens = next_open(window, at)
    left = max(0, int((opens - at).total_seconds()))
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    span = f"{hours} h {minutes:02d} min" if hours else (f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")
    return f"{opens.astimezone(_zone(window)).strftime('%Y-%m-%d %H:%M:%S %Z')} (in {span})"


class Windowed:
    """A pace (the mover's `Pace`) that keeps another to the off-peak window: before a batch and before each group of
    slots a worker starts (no slot of that worker open, so the cluster is consistent), outside the window it journals
    and says when it will continue and waits (the inner pace `idle` meanwhile: nothing to measure), or, with
    `outside: stop`, raises PaceStop for `runbook resume`. Every other attribute (the inner pace's decisions,
    settings) is the inner pace's."""

    def __init__(self, inner: Pace, window: Window, journal: Journal, say: Callable[[str], None] = print,
                 now: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 check_every_s: float = CHECK_EVERY_S) -> None:
        self.inner, self.window, self.journal, self.say = inner, window, journal, say
        self._now, self._sleep, self.check_every_s = now, sleep, check_every_s
        self._lock = threading.Lock()
        self._waiting = False
        self.waited_s = 0.0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def _at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self._now(), dt.timezone.utc)

    def wait_for_window(self) -> None:
        """Return at once inside the window; outside it wait until it opens (or raise PaceStop with `outside: stop`).
        Workers that arrive together wait together; the pause is journaled and said once."""
        if is_open(self.window, self._at()):
            return
        with self._lock:
            at = self._at()
            if is_open(self.window, at):
                return
            message = f"outside the off-peak window {describe(self.window)}: no slot is open; "
            if self.window.outside == "stop":
                self.journal.record("window_stop", window=describe(self.window),
                                    opens_utc=next_open(self.window, at).isoformat())
                raise PaceStop(message + f"stopped, as migration.window.outside says; the window opens "
                                         f"{until(self.window, at)}; `runbook resume` continues then")
            with self.inner.idle():
                self._wait(at, message)

    def _wait(self, at: dt.datetime, message: str) -> None:
        """The wait itself, journaled and said at its start and end."""
        if not self._waiting:
            self._waiting = True
            self.journal.record("window_wait", window=describe(self.window),
                                opens_utc=next_open(self.window, at).isoformat())
            self.say(message + f"waiting; the run continues {until(self.window, at)}")
        started = self._now()
        while not is_open(self.window, self._at()):
            left = (next_open(self.window, self._at()) - self._at()).total_seconds()
            self._sleep(max(0.05, min(self.check_every_s, left)))
        waited = self._now() - started
        self.waited_s += waited
        if self._waiting:
            self._waiting = False
            self.journal.record("window_open", window=describe(self.window), waited_s=round(waited, 1))
            self.say(f"the off-peak window {describe(self.window)} is open: moving slots again")

    def before_batch(self, number: int) -> Migration:
        self.wait_for_window()
        return self.inner.before_batch(number)

    def before_group(self) -> Migration:
        self.wait_for_window()
        return self.inner.before_group()

    def idle(self) -> AbstractContextManager[None]:
        return self.inner.idle()

    def end(self) -> None:
        self.inner.end()


def windowed(inner: Pace, window: Window | None, journal: Journal, say: Callable[[str], None] = print) -> Pace:
    """`inner` kept to the window, or `inner` itself when params set none."""
    return inner if window is None else Windowed(inner, window, journal, say=say)
