"""Pure statistics for the latency verdict (docs/design.md, Proof of zero downtime): the article's limit, p99 during
the migration within +10 % of the baseline p99, decided on a confidence interval rather than on two point estimates.

Sub-millisecond p99s on shared cores jitter by more than 10 % between quiet windows, so a single ratio of two p99s
says little; a bootstrap interval of that ratio says how sure we are. `latency_verdict` answers "pass" when the whole
interval is within the budget, "fail" when the whole interval is beyond it, and "inconclusive" otherwise: the answer
to an inconclusive verdict is more samples (a longer baseline, a longer window), not a floor.

Latencies fed here should be the probe's `latency_ms` (scheduled send time to reply, so a stall counts once per
request it delayed, not once), failed requests included. That makes the slow samples come in runs: one stall is many
consecutive slow samples, not many independent ones. The interval therefore resamples whole seconds of samples
(`BLOCK_S`, by their timestamps), not single requests, and widens each side by Student's t over the normal quantile
for the number of seconds it rests on (as the method of batch means does), so a window of a few seconds gets the
wide interval a few observations deserve; under two seconds' worth of blocks there is no interval at all.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from runbook_lib.checks import Check

RatioInterval = tuple[float, float, float]
"""(point estimate, low, high) of p99(during) / p99(baseline)."""

TAIL_QUANTILES = (("p50_ms", 50.0), ("p99_ms", 99.0), ("p999_ms", 99.9))

BLOCK_S = 1.0
"""Seconds of samples resampled together: longer than the probe's stalls (tens to a few hundred ms), short enough
that a window of a few seconds has several. Calibrated on recorded probe traffic and on generated stalls of 30 and
150 ms (tests/unit/test_verdict.py): 0.1 s blocks split a 150 ms stall and fail an A/A comparison 8-15 % of the time."""
MIN_BLOCKS = 2.0
"""Fewer effective blocks than this on either side (e.g. a window under two seconds) gives no interval."""
ROW_CHUNK = 4_000_000
"""Cells of the replicate-by-sample weight matrix built at once by `block_bootstrap_quantile` (memory bound)."""


def tail_latency(values) -> dict:
    """n, p50, p99, p99.9 and max (ms) of one set of samples (NaN where there is none)."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    out: dict = {"n": int(len(x))}
    for name, q in TAIL_QUANTILES:
        out[name] = float(np.percentile(x, q)) if len(x) else float("nan")
    out["max_ms"] = float(x.max()) if len(x) else float("nan")
    return out


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


def time_blocks(ts, block_s: float = BLOCK_S) -> np.ndarray:
    """Each timestamp's block: the whole `block_s` of epoch time it falls in, so every set cut from the same records
    shares block edges, and disjoint windows never share a block."""
    return np.floor(np.asarray(ts, dtype=float) / block_s)


def effective_blocks(blocks) -> float:
    """How many equal blocks the samples' blocks are worth (Kish: n^2 / sum of block sizes^2), so partial seconds at
    a window's edges count as part of a block."""
    _, sizes = np.unique(np.asarray(blocks), return_counts=True)
    return float(sizes.sum() ** 2 / np.square(sizes.astype(float)).sum()) if len(sizes) else 0.0


def _weighted_ranks(xs: np.ndarray, labels: np.ndarray, counts: np.ndarray, positions: np.ndarray) -> tuple:
    """Per replicate row, the index in `xs` (descending) of the values at two descending positions of the resample
    in which each value appears as often as its block was drawn (`counts[row, label]`)."""
    weights = np.cumsum(counts[:, labels], axis=1)
    return (weights <= positions[:, :1]).sum(axis=1), (weights <= positions[:, 1:]).sum(axis=1)


def _block_replicates(xs: np.ndarray, labels: np.ndarray, sizes: np.ndarray, q: float, n_boot: int,
                      rng: np.random.Generator) -> np.ndarray:
    """`n_boot` block-resample q-quantiles of `xs` (descending, with each value's block label and the block sizes)."""
    k, n = len(sizes), len(xs)
    draws = rng.integers(0, k, size=(n_boot, k)) + k * np.arange(n_boot)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_boot * k).reshape(n_boot, k)
    total = counts @ sizes
    h = (total - 1) * q
    lo = np.floor(h).astype(np.int64)
    below = total - 1 - lo
    positions = np.stack([below, np.where(lo + 1 <= total - 1, below - 1, below)], axis=1)
    i_lo, i_hi = np.empty(n_boot, np.int64), np.empty(n_boot, np.int64)
    width = int(min(n, max(256, 4 * (positions[:, 0].max() + 1))))
    step = max(1, ROW_CHUNK // width)
    for a in range(0, n_boot, step):
        rows = slice(a, a + step)
        i_lo[rows], i_hi[rows] = _weighted_ranks(xs[:width], labels[:width], counts[rows], positions[rows])
    short = np.flatnonzero(i_lo >= width)
    step = max(1, ROW_CHUNK // n)
    for a in range(0, len(short), step):
        rows = short[a:a + step]
        i_lo[rows], i_hi[rows] = _weighted_ranks(xs, labels, counts[rows], positions[rows])
    return xs[i_lo] + (h - lo) * (xs[i_hi] - xs[i_lo])


def block_bootstrap_quantile(values, blocks, q: float, n_boot: int = 2000,
                             seed: int | np.random.Generator = 0) -> np.ndarray:
    """`n_boot` replicates of the q-quantile (0..1, np.percentile's linear definition) of `values` resampled by block:
    as many blocks as there are, drawn with replacement, each bringing all its samples (a stall stays whole).

    `blocks` labels each value's block (e.g. `time_blocks(ts)`); all-distinct labels give the ordinary bootstrap
    (`bootstrap_quantile`). Exact and cheap: the values are sorted once, and a replicate's quantile is found by
    walking down its top values weighted by how often their blocks were drawn. NaN values are dropped.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    labels = np.asarray(blocks)
    if labels.shape != x.shape:
        raise ValueError(f"one block label per value: {labels.shape} labels for {x.shape} values")
    keep = ~np.isnan(x)
    x, labels = x[keep], labels[keep]
    if len(x) == 0:
        return np.full(n_boot, np.nan)
    ids = np.unique(labels, return_inverse=True)[1].ravel()
    sizes = np.bincount(ids)
    if len(sizes) == len(x):
        return bootstrap_quantile(x, q, n_boot, rng)
    order = np.argsort(-x, kind="stable")
    step = max(1, ROW_CHUNK // len(sizes))
    return np.concatenate([_block_replicates(x[order], ids[order], sizes, q, min(step, n_boot - a), rng)
                           for a in range(0, n_boot, step)])


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (Cornish-Fisher expansion from the normal one, Abramowitz & Stegun 26.7.5): within 1 %
    from 2 degrees of freedom on, 11 % low at 1; numpy has no t distribution and this is all the interval needs."""
    z = NormalDist().inv_cdf(p)
    terms = ((z ** 3 + z) / 4, (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96,
             (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384,
             (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160)
    return z + sum(t / df ** (i + 1) for i, t in enumerate(terms))


def _widen(replicates: np.ndarray, estimate: float, n_blocks: float, confidence: float) -> np.ndarray:
    """Replicates spread `t/z` times further from the estimate (log scale), t with n_blocks - 1 degrees of freedom:
    a spread judged from few blocks is itself uncertain, and the bootstrap alone would ignore that."""
    p = 1 - (1 - confidence) / 2
    factor = t_quantile(p, n_blocks - 1) / NormalDist().inv_cdf(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.exp(np.log(estimate) + factor * (np.log(replicates) - np.log(estimate)))


def _samples(values, ts, block_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The non-NaN samples of one set and their blocks: by timestamp, or each sample its own without timestamps."""
    x = np.asarray(values, dtype=float)
    if ts is None:
        labels = np.arange(len(x), dtype=float)
    else:
        labels = time_blocks(ts, block_s)
        if labels.shape != x.shape:
            raise ValueError(f"one timestamp per sample: {labels.shape} timestamps for {x.shape} samples")
    keep = ~np.isnan(x)
    return x[keep], labels[keep]


def p99_ratio_interval(baseline_ms, during_ms, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0, *,
                       baseline_ts=None, during_ts=None, block_s: float = BLOCK_S) -> RatioInterval:
    """(ratio, low, high): p99(during) / p99(baseline) and its block-bootstrap percentile confidence interval.

    With timestamps (epoch seconds, one per sample), each set is resampled by whole `block_s` of time, since the
    probe's slow samples come in runs; without, each sample is its own block (the ordinary bootstrap, right only for
    independent samples). The two sets are resampled independently (`n_boot` replicates each, seeded, so the answer
    is reproducible), and each side's replicates are widened by t/z for its number of effective blocks. NaN samples
    are dropped; with either set empty, or a zero baseline p99, all three are NaN; with fewer than `MIN_BLOCKS`
    effective blocks on either side, low and high are NaN (too few seconds to tell).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    base, base_blocks = _samples(baseline_ms, baseline_ts, block_s)
    during, during_blocks = _samples(during_ms, during_ts, block_s)
    if len(base) == 0 or len(during) == 0:
        return float("nan"), float("nan"), float("nan")
    base_p99 = _linear_quantile_from_sorted(np.sort(base), 0.99)
    if base_p99 <= 0:
        return float("nan"), float("nan"), float("nan")
    during_p99 = _linear_quantile_from_sorted(np.sort(during), 0.99)
    ratio = during_p99 / base_p99
    base_k, during_k = effective_blocks(base_blocks), effective_blocks(during_blocks)
    if min(base_k, during_k) < MIN_BLOCKS:
        return float(ratio), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    boot_base = _widen(block_bootstrap_quantile(base, base_blocks, 0.99, n_boot, rng), base_p99, base_k, confidence)
    boot_during = _widen(block_bootstrap_quantile(during, during_blocks, 0.99, n_boot, rng), during_p99, during_k,
                         confidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = boot_during / boot_base
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(ratio), float(low), float(high)


def ratio_pct(ratio: float | None) -> str:
    """A p99 ratio as the change it means, e.g. 1.123 -> "+12.3 %" ("n/a" without one)."""
    return "n/a" if ratio is None else f"{(ratio - 1) * 100:+.1f} %"


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


def to_settle(interval: RatioInterval, budget_pct: float) -> str:
    """What would settle an inconclusive verdict: an interval's half-width shrinks about as one over the square root
    of the seconds of samples, so the interval clears the limit after about (half-width / distance to the limit)^2
    times as many on each side (log scale); "" when the verdict is already settled or nothing was measured (pure)."""
    ratio, low, high = interval
    limit = 1 + budget_pct / 100
    if latency_verdict(interval, budget_pct) != "inconclusive" or not ratio == ratio or ratio <= 0:
        return ""
    if not (low == low and high == high):
        return "an interval needs at least two seconds of samples on each side"
    distance = abs(np.log(ratio) - np.log(limit))
    half = (np.log(high) - np.log(low)) / 2
    if distance < half / 10:
        return (f"the p99 ratio x{ratio:.2f} sits on the limit x{limit:.2f}: more samples would not settle it "
                "soon")
    return f"about {max(1.0, (half / distance) ** 2):.0f} times the seconds of samples on each side would settle it"


def latency_check(baseline_ms, during_ms, budget_pct: float = 10.0, confidence: float = 0.95, n_boot: int = 2000,
                  name: str = "latency variation", interval: RatioInterval | None = None, *, baseline_ts=None,
                  during_ts=None, reference: str = "baseline") -> Check:
    """The verdict as a report Check: pass, fail, or warn when inconclusive, with both sides' tails in the detail.
    `interval` is the p99 ratio's interval when the caller has computed it already (same arguments); otherwise it is
    computed here, by blocks of time when the timestamps are given (see `p99_ratio_interval`). `reference` names
    what the during samples are compared with (the baseline, or the control of quiet spells)."""
    if interval is None:
        interval = p99_ratio_interval(baseline_ms, during_ms, n_boot=n_boot, confidence=confidence,
                                      baseline_ts=baseline_ts, during_ts=during_ts)
    verdict = latency_verdict(interval, budget_pct)
    base, during = tail_latency(baseline_ms), tail_latency(during_ms)
    if base["n"] == 0 or during["n"] == 0:
        return Check(name, "warn", f"nothing to compare: {base['n']} {reference} and {during['n']} samples during")
    ratio, low, high = interval
    bounds = (f"{confidence:.0%} interval {(low - 1) * 100:+.1f} % to {(high - 1) * 100:+.1f} %" if low == low
              else "no interval: under two seconds of samples on one side")
    detail = (f"p99 {during['p99_ms']:.2f} ms during ({during['n']} requests) vs {base['p99_ms']:.2f} ms {reference} "
              f"({base['n']}): {(ratio - 1) * 100:+.1f} %, {bounds} (limit +{budget_pct:g} %); p99.9 "
              f"{during['p999_ms']:.2f} vs {base['p999_ms']:.2f} ms, max {during['max_ms']:.1f} vs "
              f"{base['max_ms']:.1f} ms")
    if verdict == "inconclusive":
        detail += f"; inconclusive: {to_settle(interval, budget_pct)}"
    return Check(name, {"pass": "pass", "fail": "fail"}.get(verdict, "warn"), detail)
