"""The duty-cycle arithmetic of MIGRATE rounds (pure): how long a source may be blocked, and the rest that keeps it so."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runbook_lib.cluster.rounds import duty_for, rest_after

blocks = st.floats(min_value=1e-5, max_value=5.0)
headrooms = st.floats(min_value=0.0, max_value=1.0)
duties = st.floats(min_value=0.01, max_value=50.0)


def test_a_round_within_the_headroom_needs_no_rest_and_no_headroom_means_the_plain_duty():
    assert duty_for(0.002, 0.004, 1.0) == 1.0 and rest_after(0.002, 1.0) == 0.0
    assert duty_for(0.002, 0.0, 1.0) == pytest.approx(0.01)
    assert rest_after(0.002, 0.01) == pytest.approx(0.198)
    assert duty_for(0.002, 0.001, 1.0) == pytest.approx(0.02), "half the block over the headroom: twice the share"
    assert duty_for(0.5, 0.0, 0.0) == 1.0, "0 turns the spacing off"


@given(blocks, headrooms)
def test_the_p99_wait_of_requests_meeting_rounds_stays_within_the_headroom(block, headroom):
    d = duty_for(block, headroom, 1.0)
    assert 0 < d <= 1
    if d < 1:
        # a share d of requests meets a round, waiting uniformly up to the block: the 99th percentile of the wait
        assert block * (1 - 0.01 / d) <= headroom + 1e-9


@given(blocks, headrooms, duties)
def test_the_rest_keeps_the_blocked_share_at_the_duty(block, headroom, max_duty):
    d = duty_for(block, headroom, max_duty)
    rest = rest_after(block, d)
    assert rest >= 0
    assert block / (block + rest) == pytest.approx(d, rel=1e-6)
    assert d >= min(1.0, max_duty / 100) - 1e-12, "never stricter than the duty asked for"
