"""Confidence intervals, the paired test, and held-out size planning. numpy and the standard library only.

Why these choices:
- **Wilson** for a proportion (accuracy, format compliance, consistency, unsupported rate): unlike the normal
  (Wald) interval it stays inside [0, 1] and keeps its coverage near 0% and 100%, where a fine-tuned model's
  format compliance often sits, and with the 100-example held-out sets this tool runs on a CPU.
- **Percentile bootstrap** for means that are not proportions (field F1) and for the paired difference of two
  arms: it resamples *examples*, so the correlation between two arms answering the same prompt is kept.
- **Exact McNemar** for "is arm A more accurate than arm B on the same examples": only discordant pairs carry
  information; under the null each one is a fair coin, so the p-value is a binomial tail. Exact, because the
  chi-square approximation is poor with the few discordant pairs of a small held-out set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "Interval",
    "bootstrap_mean",
    "bootstrap_paired_difference",
    "held_out_size",
    "mcnemar_exact",
    "wilson",
    "wilson_half_width",
]


def _z(confidence: float) -> float:
    """Two-sided normal quantile: 1.959964 for 95%."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def wilson(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion (no continuity correction).

    Checked against Newcombe (1998), Stat. Med. 17:857, table I: 81/263 -> 0.2553 to 0.3662.

    >>> iv = wilson(81, 263)
    >>> round(iv.value, 4), round(iv.low, 4), round(iv.high, 4)
    (0.308, 0.2553, 0.3662)
    >>> wilson(0, 20).low
    0.0
    """
    if n <= 0:
        raise ValueError("a proportion needs at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1 in exact arithmetic; do not let rounding say 1e-17.
    low = 0.0 if successes == 0 else min(p, centre - half)
    high = 1.0 if successes == n else max(p, centre + half)
    return Interval(p, low, high)


def wilson_half_width(p: float, n: int, confidence: float = 0.95) -> float:
    """Half the width of the Wilson interval that n examples give at an observed proportion p.

    How precise is a held-out set? 100 examples at 80% accuracy: about +/- 7.8 points.

    >>> round(wilson_half_width(0.8, 100), 4)
    0.0777
    >>> round(wilson_half_width(0.5, 1000), 4)
    0.0309
    """
    if n <= 0:
        raise ValueError("n must be positive")
    z = _z(confidence)
    return z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))


def _percentile_interval(stats: np.ndarray, value: float, confidence: float) -> Interval:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return Interval(float(value), float(low), float(high))


def bootstrap_mean(
    values: Sequence[float], n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Percentile bootstrap interval for a mean: resample the values with replacement, seeded.

    >>> iv = bootstrap_mean([1.0] * 5)
    >>> iv.value, iv.low, iv.high
    (1.0, 1.0, 1.0)
    >>> bootstrap_mean([0, 1, 1, 0, 1], seed=3) == bootstrap_mean([0, 1, 1, 0, 1], seed=3)
    True
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("a mean needs at least one value")
    rng = np.random.default_rng(seed)
    # (n_resamples, n) index matrix; for held-out sets of a few thousand examples this is a few hundred MB at
    # most, so draw in chunks to keep memory flat.
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        idx = rng.integers(0, x.size, size=(stop - start, x.size))
        means[start:stop] = x[idx].mean(axis=1)
    return _percentile_interval(means, x.mean(), confidence)


def bootstrap_paired_difference(
    a: Sequence[float], b: Sequence[float], n_resamples: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Bootstrap interval for mean(a) - mean(b) where a[i] and b[i] score the same example.

    Resampling examples (not arms independently) keeps the pairing, which makes the interval narrower when
    the two arms tend to get the same examples right.

    >>> iv = bootstrap_paired_difference([1, 1, 1, 0], [0, 1, 1, 0])
    >>> iv.value
    0.25
    >>> bootstrap_paired_difference([1, 0], [1, 0]).as_dict()
    {'value': 0.0, 'low': 0.0, 'high': 0.0}
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    return bootstrap_mean(x - y, n_resamples=n_resamples, seed=seed, confidence=confidence)


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value for two arms scored on the same examples.

    With b = #(A right, B wrong) and c = #(A wrong, B right), under the null each discordant pair is a fair
    coin: p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]). Computed with exact integers.

    >>> mcnemar_exact([1, 0, 0, 0, 0, 0, 0, 1], [0, 1, 1, 1, 1, 1, 1, 1])  # b=1, c=6: 2 * 8/128
    0.125
    >>> mcnemar_exact([1, 0], [1, 0])  # no discordant pair: no evidence either way
    1.0
    """
    if len(a_correct) != len(b_correct):
        raise ValueError("paired samples differ in length")
    b = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if x and not y)
    c = sum(1 for x, y in zip(a_correct, b_correct, strict=True) if y and not x)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    # Integer arithmetic to the last step: 2 * tail / 2**n, exact for any n.
    return min(1.0, 2 * tail / 2**n)


def held_out_size(
    accuracy: float,
    difference: float,
    alpha: float = 0.05,
    power: float = 0.8,
    discordant: float | None = None,
) -> int:
    """Held-out examples needed to detect an accuracy `difference` over a baseline `accuracy`.

    Without `discordant`: the two-proportion formula (two-sided, no continuity correction), as if the arms
    were scored on independent sets:

        n = (z_a * sqrt(2 * pbar * (1 - pbar)) + z_b * sqrt(p1 (1 - p1) + p2 (1 - p2)))^2 / d^2

    With `discordant` (the expected share of examples where exactly one arm is right, >= |d|): the paired
    McNemar formula (Connor 1987), usually far smaller because the arms are scored on the *same* examples:

        n = (z_a * sqrt(pd) + z_b * sqrt(pd - d^2))^2 / d^2

    >>> held_out_size(0.5, 0.1)  # 50% vs 60%: the textbook 388
    388
    >>> held_out_size(0.5, 0.1, discordant=0.2)
    155
    """
    if not 0 < abs(difference) < 1:
        raise ValueError("difference must be a non-zero accuracy gap, between -1 and 1")
    p1, p2 = accuracy, accuracy + difference
    if not (0 <= p1 <= 1 and 0 <= p2 <= 1):
        raise ValueError(f"accuracy {p1} + difference {difference} leaves [0, 1]")
    z_a, z_b = _z(1 - alpha), NormalDist().inv_cdf(power)
    d = abs(difference)
    if discordant is None:
        pbar = (p1 + p2) / 2
        root = z_a * math.sqrt(2 * pbar * (1 - pbar)) + z_b * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    else:
        if not d <= discordant <= 1:
            raise ValueError(f"discordant share must be in [{d}, 1]: at least the difference itself")
        root = z_a * math.sqrt(discordant) + z_b * math.sqrt(discordant - d * d)
    return math.ceil(root * root / (d * d))
