"""The latency verdict's statistics on synthetic samples: a bootstrap interval of p99(during) / p99(baseline) decides
pass, fail or inconclusive against the +10 % budget; tails side by side."""

from __future__ import annotations

import math

import numpy as np
import pytest

from runbook_lib.watch.verdict import (
    bootstrap_quantile,
    latency_check,
    latency_verdict,
    p99_ratio_interval,
    tail_latency,
    tail_latency_table,
)


def latencies(n: int, scale: float = 1.0, sigma: float = 0.4, seed: int = 0) -> np.ndarray:
    """Sub-millisecond, right-skewed latencies (ms) like the probe's at rest."""
    return 0.5 * scale * np.random.default_rng(seed).lognormal(0.0, sigma, n)


def test_p99_up_15_percent_with_a_tight_interval_fails():
    ratio, low, high = interval = p99_ratio_interval(latencies(50_000, seed=1), latencies(50_000, 1.15, seed=2))
    assert ratio == pytest.approx(1.15, abs=0.03) and low < ratio < high and high - low < 0.08
    assert low > 1.10
    assert latency_verdict(interval, budget_pct=10.0) == "fail"


def test_p99_up_5_percent_with_a_tight_interval_passes():
    ratio, low, high = interval = p99_ratio_interval(latencies(50_000, seed=3), latencies(50_000, 1.05, seed=4))
    assert ratio == pytest.approx(1.05, abs=0.03) and high - low < 0.08
    assert high <= 1.10
    assert latency_verdict(interval) == "pass"


def test_a_small_noisy_sample_is_inconclusive():
    """200 requests each side, p99 really at the limit: the interval spans it widely, so no pass and no fail."""
    ratio, low, high = interval = p99_ratio_interval(latencies(200, sigma=0.8, seed=5),
                                                     latencies(200, 1.10, sigma=0.8, seed=6))
    assert low < 1.10 < high and high - low > 0.3
    assert latency_verdict(interval) == "inconclusive"


def test_the_interval_is_reproducible_and_narrows_with_confidence():
    base, during = latencies(5_000, seed=7), latencies(5_000, 1.2, seed=8)
    assert p99_ratio_interval(base, during) == p99_ratio_interval(base, during)
    _, low95, high95 = p99_ratio_interval(base, during, confidence=0.95)
    _, low80, high80 = p99_ratio_interval(base, during, confidence=0.80)
    assert low95 < low80 < high80 < high95
    with pytest.raises(ValueError, match="confidence"):
        p99_ratio_interval(base, during, confidence=95)


def test_latency_verdict_edges():
    assert latency_verdict((1.05, 1.0, 1.10)) == "pass", "the high end at the limit passes"
    assert latency_verdict((1.2, 1.1000001, 1.3)) == "fail"
    assert latency_verdict((1.1, 1.05, 1.15)) == "inconclusive"
    assert latency_verdict((1.4, 1.3, 1.45), budget_pct=50.0) == "pass"
    assert latency_verdict(p99_ratio_interval([], [1.0, 2.0])) == "inconclusive", "nothing measured decides nothing"
    assert all(math.isnan(v) for v in p99_ratio_interval([0.0, 0.0], [1.0]))


def test_the_tail_bootstrap_has_the_brute_force_distribution():
    """bootstrap_quantile draws only the resample's top values; its replicates must match full resamples."""
    x = latencies(4_000, sigma=0.6, seed=9)
    fast = bootstrap_quantile(x, 0.99, n_boot=3000, seed=1)
    rng = np.random.default_rng(2)
    slow = np.array([np.percentile(x[rng.integers(0, len(x), len(x))], 99) for _ in range(3000)])
    assert fast.mean() == pytest.approx(slow.mean(), rel=0.01)
    assert fast.std() == pytest.approx(slow.std(), rel=0.1)
    assert np.percentile(fast, [2.5, 97.5]) == pytest.approx(np.percentile(slow, [2.5, 97.5]), rel=0.03)
    tiny = bootstrap_quantile([1.0, 2.0, 3.0], 0.99, n_boot=50, seed=0)
    assert ((tiny >= 1.0) & (tiny <= 3.0)).all(), "small samples are resampled in full"
    assert bootstrap_quantile([], 0.99, n_boot=3).shape == (3,)


def test_tails_side_by_side():
    base, during = np.arange(1, 1001, dtype=float), np.arange(1, 1001, dtype=float) * 2
    one = tail_latency(base)
    assert one["n"] == 1000 and one["p50_ms"] == pytest.approx(500.5) and one["max_ms"] == 1000.0
    assert one["p99_ms"] == pytest.approx(np.percentile(base, 99)) and one["p999_ms"] == pytest.approx(999.001)
    table = tail_latency_table({"baseline": base, "during": during, "nothing": []})
    assert list(table.columns) == ["n", "p50_ms", "p99_ms", "p999_ms", "max_ms"]
    assert list(table.index) == ["baseline", "during", "nothing"]
    assert table.loc["during", "max_ms"] == 2000.0 and table.loc["nothing", "n"] == 0
    assert math.isnan(table.loc["nothing", "p99_ms"])


def test_latency_check_reports_the_interval():
    failed = latency_check(latencies(50_000, seed=1), latencies(50_000, 1.15, seed=2))
    assert failed.status == "fail" and "interval" in failed.detail and "limit +10 %" in failed.detail
    assert latency_check(latencies(50_000, seed=3), latencies(50_000, 1.05, seed=4)).status == "pass"
    unsure = latency_check(latencies(200, sigma=0.8, seed=5), latencies(200, 1.10, sigma=0.8, seed=6))
    assert unsure.status == "warn" and "more samples" in unsure.detail
    assert latency_check([], [1.0]).status == "warn"
