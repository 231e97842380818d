"""The watchers' latency baseline: how tight its p99 is, judged by the bootstrap spread."""

import numpy as np

from runbook_lib.watch.watchers import p99_spread


def test_the_baseline_spread_says_when_a_baseline_is_tight_enough_to_judge():
    rng = np.random.default_rng(3)
    assert p99_spread(rng.gamma(4, 0.1, 50)) == float("inf")
    assert p99_spread(rng.gamma(4, 0.1, 20_000)) < 0.10
    assert p99_spread(rng.gamma(4, 0.1, 300)) > p99_spread(rng.gamma(4, 0.1, 20_000))
