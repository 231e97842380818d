"""The zero-downtime verdict's downtime is judged within each probe session, not across the pause between them."""

import math

import pandas as pd
import pytest

from runbook_lib.watch.acceptance import session_gap

PREFIX = "runbook:probe:"


def session(token: str, start: float, end: float, step: float = 0.1, outcome: str = "ok") -> list[dict]:
    n = int(round((end - start) / step))
    return [{"ts": start + i * step, "key": f"{PREFIX}{token}:0:{i}", "latency_ms": 1.0, "outcome": outcome,
             "op": "set"} for i in range(n)]


def test_the_pause_between_a_killed_runs_probe_and_the_resumed_one_is_no_downtime():
    records = pd.DataFrame(session("aaaaaa", 0.0, 10.0) + session("bbbbbb", 40.0, 50.0))
    assert session_gap(PREFIX, records) == pytest.approx(0.1)


def test_a_gap_inside_one_session_still_counts():
    records = pd.DataFrame(session("aaaaaa", 0.0, 5.0) + session("aaaaaa", 7.0, 9.0) + session("bbbbbb", 40.0, 50.0))
    assert session_gap(PREFIX, records) == pytest.approx(7.0 - 4.9, abs=0.01)


def test_failed_requests_do_not_close_a_gap():
    records = pd.DataFrame(session("aaaaaa", 0.0, 1.0) + session("aaaaaa", 1.0, 3.0, outcome="clusterdown")
                           + session("aaaaaa", 3.0, 4.0))
    assert session_gap(PREFIX, records) == pytest.approx(3.0 - 0.9, abs=0.01)


def test_no_records_no_gap():
    assert math.isnan(session_gap(PREFIX, pd.DataFrame(columns=["ts", "key", "latency_ms", "outcome", "op"])))
