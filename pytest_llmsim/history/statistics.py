"""The statistics behind a comparison of two runs, in pure Python (no scipy at run time; the tests check every
function against scipy on fixed data).

* ``wilson_interval``: a confidence interval for one pass rate (never outside [0, 1], good at small k);
* ``newcombe_interval``: for the difference of two independent pass rates (Newcombe's hybrid score interval, built
  from the two Wilson intervals);
* ``fisher_exact``: Fisher's exact test on a 2x2 table (two-sided, as ``scipy.stats.fisher_exact``);
* ``sign_flip_test``: the paired permutation test on per-scenario differences: under "no change" each
  difference is as likely positive as negative. Exact (every sign pattern counted, by convolution) while that is
  cheap, else the normal approximation of the same distribution. With 0/1 outcomes this is McNemar's exact test;
* ``bootstrap_interval``: a paired bootstrap percentile interval of the mean difference (seeded: reproducible);
* ``benjamini_hochberg`` and ``holm``: p-values adjusted for testing many scenarios (or figures) at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from statistics import NormalDist

EXACT_LIMIT = 4_000_000  # sign-flip: cells x differences of the exact convolution before the normal approximation
MAX_DENOMINATOR = 10_000  # sign-flip: differences scaled to whole numbers by at most this (else approximation)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_MAX_PAIRS = 10_000  # above: the normal interval (the bootstrap costs resamples x pairs: 10^6 took hours)


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(passed: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of ``passed / trials`` ((0, 1) without trials)."""
    if trials <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = passed / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if passed <= 0 else max(0.0, min(p, centre - half))
    high = 1.0 if passed >= trials else min(1.0, max(p, centre + half))
    return low, high


def newcombe_interval(passed_a: int, trials_a: int, passed_b: int, trials_b: int,
                      confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of ``passed_b / trials_b - passed_a / trials_a`` (B minus A)."""
    pa, pb = passed_a / trials_a, passed_b / trials_b
    la, ua = wilson_interval(passed_a, trials_a, confidence)
    lb, ub = wilson_interval(passed_b, trials_b, confidence)
    difference = pb - pa
    return (difference - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2),
            difference + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2))


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on the table ``[[a, b], [c, d]]``: the probability, with the
    margins fixed, of a table at most as likely as the one seen (scipy's definition, with its 1e-7 tolerance)."""
    row, column, total = a + b, a + c, a + b + c + d
    if total == 0 or row in (0, total) or column in (0, total):
        return 1.0
    low, high = max(0, row + column - total), min(row, column)
    denominator = math.comb(total, column)
    weights = {x: math.comb(row, x) * math.comb(total - row, column - x) for x in range(low, high + 1)}
    observed = weights[a]
    tail = sum(w for w in weights.values() if w <= observed * (1 + 1e-7))
    return min(1.0, tail / denominator)


@dataclass(frozen=True)
class TestResult:
    """A p-value and the method's name as reports print it."""

    p_value: float
    method: str


def sign_flip_test(differences: Sequence[float | Fraction]) -> TestResult:
    """Two-sided paired sign-flip permutation test of "the mean difference is 0" on per-pair differences.

    Every pattern of signs of the non-zero differences is equally likely under the null hypothesis; the p-value is
    the share of patterns whose |sum| is at least the observed |sum|. Exact (by convolution over whole-number
    differences) when that is cheap; else the normal approximation with the same variance (sum of squares)."""
    nonzero = [Fraction(d).limit_denominator(MAX_DENOMINATOR) for d in differences if d != 0]
    if not nonzero:
        return TestResult(1.0, "sign-flip permutation test (no pair differs)")
    scale = 1
    for value in nonzero:
        scale = math.lcm(scale, value.denominator)
    values = [abs(int(value * scale)) for value in nonzero] if scale <= MAX_DENOMINATOR else []
    if values and len(values) * 2 * sum(values) <= EXACT_LIMIT:
        observed = abs(sum(int(value * scale) for value in nonzero))
        return TestResult(_exact_sign_flip(values, observed), "exact sign-flip permutation test")
    observed_sum = abs(float(sum(nonzero)))
    sd = math.sqrt(float(sum(v * v for v in nonzero)))
    p = 2 * (1 - NormalDist().cdf(observed_sum / sd)) if sd > 0 else 1.0
    return TestResult(min(1.0, p), "sign-flip permutation test (normal approximation)")


def _exact_sign_flip(values: Sequence[int], observed: int) -> float:
    """P(|sum of +-values| >= observed) with independent fair signs, by convolving the distribution."""
    dist = [1.0]  # dist[i]: probability of the sum i - total so far
    total = 0
    for value in sorted(values):
        pad = [0.0] * (2 * value)
        dist = [0.5 * (x + y) for x, y in zip(dist + pad, pad + dist, strict=True)]
        total += value
    return min(1.0, sum(p for i, p in enumerate(dist) if abs(i - total) >= observed))


def bootstrap_interval(differences: Sequence[float], confidence: float = 0.95, *,
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap percentile interval of the mean of ``differences`` (None with fewer than 2); over
    BOOTSTRAP_MAX_PAIRS differences, the normal interval the bootstrap converges to, in time linear in them."""
    n = len(differences)
    if n < 2:
        return None
    if n > BOOTSTRAP_MAX_PAIRS:
        # The bootstrap's means are normal this far out (central limit): its interval is the mean +- z standard
        # errors, the standard error that of the resampled mean (the population deviation over sqrt(n)).
        mean = math.fsum(differences) / n
        spread = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / n) / math.sqrt(n)
        z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        return mean - z * spread, mean + z * spread
    rng = random.Random(seed)
    values = list(differences)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(resamples))
    tail = (1 - confidence) / 2
    return _quantile(means, tail), _quantile(means, 1 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def benjamini_hochberg(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 1.0
    for rank in range(m, 0, -1):
        index = order[rank - 1]
        running = min(running, p_values[index] * m / rank)
        adjusted[index] = min(1.0, running)
    return adjusted


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
