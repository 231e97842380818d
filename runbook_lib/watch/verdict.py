"""Pure statistics for the latency verdict (DESIGN section 6): the article's limit, p99 during the migration within
+10 % of the baseline p99, decided on a confidence interval rather than on two point estimates.

Sub-millisecond p99s on shared cores jitter by more than 10 % between quiet windows, so a single ratio of two p99s
says little; a bootstrap interval of that ratio says how sure we are. `latency_verdict` answers "pass" when the whole
interval is within the budget, "fail" when the whole interval is beyond it, and "inconclusive" otherwise: the answer
to an inconclusive verdict is more samples (a longer baseline, a higher probe rate), not a floor.

Latencies fed here should be the probe's `latency_ms` (scheduled send time to reply, so a stall counts once per
request it delayed, not once), failed requests included.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from runbook_lib.checks import Check

RatioInterval = tuple[float, float, float]
"""(point estimate, low, high) of p99(during) / p99(baseline)."""

TAIL_QUANTILES = (("p50_ms", 50.0), ("p99_ms", 99.0), ("p999_ms", 99.9))


def tail_latency(values) -> dict:
    """n, p50, p99, p99.9 and max (ms) of one set of samples (NaN where there is none)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    out: dict = {"n": int(len(x))}
    for name, q in TAIL_QUANTILES:
        out[name] = float(np.percentile(x, q)) if len(x) else float("nan")
    out["max_ms"] = float(x.max()) if len(x) else float("nan")
    return out


def tail_latency_table(samples: Mapping[str, object]) -> pd.DataFrame:
    """p50, p99, p99.9 and max side by side, one row per named set of samples (e.g. baseline, during, after)."""
    rows = [{"samples": name, **tail_latency(values)} for name, values in samples.items()]
    return pd.DataFrame(rows, columns=["samples", "n", *[n for n, _ in TAIL_QUANTILES], "max_ms"]).set_index("samples")


def _linear_quantile_from_sorted(x: np.ndarray, q: float) -> float:
    """np.percentile's default (linear) quantile of an ascending array."""
    h = (len(x) - 1) * q
    lo = int(np.floor(h))
    hi = min(lo + 1, len(x) - 1)
    return float(x[lo] + (h - lo) * (x[hi] - x[lo]))


def bootstrap_quantile(values, q: float, n_boot: int = 2000, seed: int | np.random.Generator = 0) -> np.ndarray:
    """`n_boot` bootstrap replicates of the q-quantile (0..1, np.percentile's linear definition) of `values`.

    Exact in distribution but cheap for tail quantiles: a resample's quantile depends only on its largest values, so
    for each replicate the number of draws that land in the sample's top M values is drawn (binomial), and only those
    draws are made (uniform over the top M); a replicate where too few land there is drawn in full. For p99 of 100 000
    samples that is about 3 000 draws per replicate instead of 100 000.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return np.full(n_boot, np.nan)
    h = (n - 1) * q
    lo = int(np.floor(h))
    frac = h - lo
    need = n - lo  # resample values of rank >= lo (0-based, ascending): the two the quantile interpolates between
    margin = int(np.ceil(4 * np.sqrt(need))) + 32
    m = min(n, 3 * need + margin)
    out = np.empty(n_boot)
    counts = rng.binomial(n, m / n, size=n_boot) if m < n else np.full(n_boot, n)
    for i, b in enumerate(counts):
        if m < n and b >= need:
            draws = x[n - m + rng.integers(0, m, size=b)]
            top = np.partition(draws, (b - need, min(b - need + 1, b - 1)))
            a, c = top[b - need], top[min(b - need + 1, b - 1)]
        else:
            full = np.sort(x[rng.integers(0, n, size=n)])
            a, c = full[lo], full[min(lo + 1, n - 1)]
        out[i] = a + frac * (c - a)
    return out


def p99_ratio_interval(baseline_ms, during_ms, n_boot: int = 2000, confidence: float = 0.95,
                       seed: int = 0) -> RatioInterval:
    """(ratio, low, high): p99(during) / p99(baseline) and its bootstrap percentile confidence interval.

    The two sets are resampled independently (`n_boot` replicates each, seeded, so the answer is reproducible). NaN
    samples are dropped; with either set empty, or a zero baseline p99, all three are NaN.
    """
    base = np.asarray(baseline_ms, dtype=float)
    during = np.asarray(during_ms, dtype=float)
    base, during = base[~np.isnan(base)], during[~np.isnan(during)]
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    if len(base) == 0 or len(during) == 0:
        return float("nan"), float("nan"), float("nan")
    base_p99 = _linear_quantile_from_sorted(np.sort(base), 0.99)
    if base_p99 <= 0:
        return float("nan"), float("nan"), float("nan")
    ratio = _linear_quantile_from_sorted(np.sort(during), 0.99) / base_p99
    rng = np.random.default_rng(seed)
    boot_base = bootstrap_quantile(base, 0.99, n_boot, rng)
    boot_during = bootstrap_quantile(during, 0.99, n_boot, rng)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_during / boot_base
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(ratio), float(low), float(high)


def latency_verdict(ratio_interval: RatioInterval, budget_pct: float = 10.0) -> str:
    """"pass" when the interval's high end is within 1 + budget, "fail" when its low end is beyond it, else
    "inconclusive" (also when nothing was measured)."""
    _, low, high = ratio_interval
    limit = 1 + budget_pct / 100
    if high == high and high <= limit:
        return "pass"
    if low == low and low > limit:
        return "fail"
    return "inconclusive"


def latency_check(baseline_ms, during_ms, budget_pct: float = 10.0, confidence: float = 0.95, n_boot: int = 2000,
                  name: str = "latency variation", interval: RatioInterval | None = None) -> Check:
    """The verdict as a report Check: pass, fail, or warn when inconclusive, with both sides' tails in the detail.
    `interval` is the p99 ratio's interval when the caller has computed it already (same arguments)."""
    if interval is None:
        interval = p99_ratio_interval(baseline_ms, during_ms, n_boot=n_boot, confidence=confidence)
    verdict = latency_verdict(interval, budget_pct)
    base, during = tail_latency(baseline_ms), tail_latency(during_ms)
    if base["n"] == 0 or during["n"] == 0:
        return Check(name, "warn", f"nothing to compare: {base['n']} baseline and {during['n']} samples during")
    ratio, low, high = interval
    detail = (f"p99 {during['p99_ms']:.2f} ms during ({during['n']} requests) vs {base['p99_ms']:.2f} ms baseline "
              f"({base['n']}): {(ratio - 1) * 100:+.1f} %, {confidence:.0%} interval {(low - 1) * 100:+.1f} % to "
              f"{(high - 1) * 100:+.1f} % (limit +{budget_pct:g} %); p99.9 {during['p999_ms']:.2f} vs "
              f"{base['p999_ms']:.2f} ms, max {during['max_ms']:.1f} vs {base['max_ms']:.1f} ms")
    if verdict == "inconclusive":
        detail += "; inconclusive: more samples needed (a longer baseline or a higher probe rate)"
    return Check(name, {"pass": "pass", "fail": "fail"}.get(verdict, "warn"), detail)
