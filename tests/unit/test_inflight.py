"""The probe's board of requests in flight, and the late pseudo-samples of the requests a stalled worker owes."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runbook_lib.watch.inflight import InFlight, in_flight, late_samples


def test_a_worker_stuck_for_a_second_owes_every_send_of_its_schedule_each_as_late_as_it_is():
    ts, latency = late_samples(np.array([100.0, 0.0]), 0.1, now=101.0)
    assert np.allclose(ts, 100.0 + np.arange(11) * 0.1), "the request in flight and the ten sends due since"
    assert np.allclose(latency, 1000.0 - np.arange(11) * 100.0)


def test_only_the_sends_from_since_count_and_an_idle_worker_owes_nothing():
    ts, latency = late_samples(np.array([100.0, 100.05]), 0.1, now=100.5, since=100.2)
    assert np.allclose(np.sort(ts), [100.2, 100.25, 100.3, 100.35, 100.4, 100.45, 100.5])
    assert latency.max() == pytest.approx(300.0)
    assert len(late_samples(np.zeros(3), 0.1, now=100.0)[0]) == 0
    assert len(late_samples(np.array([200.0]), 0.1, now=100.0)[0]) == 0, "a clock ahead of now owes nothing yet"


@settings(max_examples=200, deadline=None)
@given(stuck_s=st.floats(0.0, 30.0), interval=st.floats(0.001, 1.0), since_s=st.floats(-10.0, 40.0))
def test_late_samples_are_the_schedule_between_the_stall_and_now(stuck_s, interval, since_s):
    now, t0 = 1_700_000_000.0, 1_700_000_000.0 - stuck_s
    since = t0 + since_s
    ts, latency = late_samples(np.array([t0]), interval, now, since)
    assert np.all(ts >= since - 1e-6) and np.all(ts <= now + 1e-6)
    assert np.allclose(latency, (now - ts) * 1000)
    assert np.allclose(np.diff(ts), interval, atol=1e-6)
    due = math.floor(stuck_s / interval + 1e-9) + 1 - (max(0, math.ceil((since - t0) / interval - 1e-9)))
    assert abs(len(ts) - max(0, due)) <= 1


def test_the_board_is_shared_through_its_file(tmp_path):
    path = tmp_path / "inflight.bin"
    assert len(in_flight(path, 2)) == 0, "no board yet: nothing outstanding"
    first, second = InFlight(path, 0, 2), InFlight(path, 1, 2)
    first.sending(123.5)
    assert in_flight(path, 2).tolist() == [123.5, 0.0]
    second.sending(124.0)
    first.done()
    assert in_flight(path, 2).tolist() == [0.0, 124.0]
    second.close()
    assert in_flight(path, 2).tolist() == [0.0, 0.0]
    first.close()


def test_publishing_costs_next_to_nothing_beside_a_request(tmp_path):
    """Two stores per request: well under a microsecond each, against a request of 100 us or more."""
    board = InFlight(tmp_path / "inflight.bin", 0, 1)
    n = 100_000
    started = time.perf_counter()
    for i in range(n):
        board.sending(float(i))
        board.done()
    per_request = (time.perf_counter() - started) / n
    board.close()
    assert per_request < 10e-6
