"""Intervals, the exact McNemar test and size planning against published or hand-computed values.

scipy is not a dependency (and not installed here); the reference values come from Newcombe (1998), the
binomial distribution worked by hand, and the textbook two-proportion sample sizes.
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunewise.evaluate import stats
from tunewise.evaluate.stats import (
    bootstrap_mean,
    bootstrap_paired_difference,
    held_out_size,
    mcnemar_exact,
    wilson,
    wilson_half_width,
)


def test_doctests():
    result = doctest.testmod(stats)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "k, n, low, high",
    # Newcombe (1998), Stat. Med. 17:857-872, table I, method 3 (Wilson score without continuity correction).
    [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)],
)
def test_wilson_matches_newcombe(k, n, low, high):
    iv = wilson(k, n)
    assert iv.value == pytest.approx(k / n)
    assert (round(iv.low, 4), round(iv.high, 4)) == (low, high)


def test_wilson_by_hand_and_edges():
    # 62/100 by hand: z^2 = 3.841459; centre = (0.62 + z^2/200) / (1 + z^2/100) = 0.615561;
    # half = z / (1 + z^2/100) * sqrt(0.62 * 0.38 / 100 + z^2 / 40000) = 0.093463.
    iv = wilson(62, 100)
    assert iv.low == pytest.approx(0.615561 - 0.093463, abs=2e-6)
    assert iv.high == pytest.approx(0.615561 + 0.093463, abs=2e-6)
    assert wilson(20, 20).high == 1.0 and wilson(20, 20).low == pytest.approx(0.8389, abs=1e-4)
    # A wider confidence gives a wider interval.
    assert wilson(62, 100, 0.99).low < iv.low
    with pytest.raises(ValueError):
        wilson(0, 0)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_wilson_half_width():
    assert wilson_half_width(0.5, 100) == pytest.approx(0.09617, abs=1e-5)
    # Equals half the width of the interval at an attainable count.
    iv = wilson(62, 100)
    assert wilson_half_width(0.62, 100) == pytest.approx((iv.high - iv.low) / 2)
    # Quadrupling n roughly halves it.
    assert wilson_half_width(0.8, 400) == pytest.approx(wilson_half_width(0.8, 100) / 2, rel=0.05)


def test_bootstrap_mean_tiny_sample_exact_distribution():
    # Resampled means of [0, 0, 1] are k/3 with k ~ Binomial(3, 1/3): P(k=0)=8/27, P(k=3)=1/27 = 3.7%.
    # So the 2.5% quantile is 0 and the 97.5% quantile is 1.
    iv = bootstrap_mean([0, 0, 1])
    assert iv.value == pytest.approx(1 / 3)
    assert (iv.low, iv.high) == (0.0, 1.0)


def test_bootstrap_mean_agrees_with_normal_approximation():
    x = [1.0] * 100 + [0.0] * 300  # p = 0.25, n = 400: SE = sqrt(0.25 * 0.75 / 400) = 0.021651
    iv = bootstrap_mean(x, seed=1)
    assert iv.value == 0.25
    assert iv.low == pytest.approx(0.25 - 1.96 * 0.021651, abs=0.006)
    assert iv.high == pytest.approx(0.25 + 1.96 * 0.021651, abs=0.006)
    assert bootstrap_mean(x, seed=1) == iv  # seeded: reproducible
    assert bootstrap_mean(x, seed=2) != iv


def test_bootstrap_paired_difference():
    # Arm A right on 40, B right on 25 of the same 100; they agree on 75 (both right on 20, both wrong on 55).
    a = np.array([1] * 20 + [1] * 20 + [0] * 5 + [0] * 55)
    b = np.array([1] * 20 + [0] * 20 + [1] * 5 + [0] * 55)
    iv = bootstrap_paired_difference(a, b, seed=0)
    assert iv.value == pytest.approx(0.15)
    # d = a - b takes 1 (20x), -1 (5x), 0 (75x): var = 0.25 - 0.15^2 = 0.2275, SE = sqrt(0.2275 / 100) = 0.0477.
    assert iv.low == pytest.approx(0.15 - 1.96 * 0.0477, abs=0.01)
    assert iv.high == pytest.approx(0.15 + 1.96 * 0.0477, abs=0.01)
    # Pairing matters: the unpaired SE would be sqrt(.4*.6/100 + .25*.75/100) = 0.0654.
    assert iv.high - iv.low < 2 * 1.96 * 0.0654
    with pytest.raises(ValueError):
        bootstrap_paired_difference([1, 0], [1])


@pytest.mark.parametrize(
    "b, c, p",
    [
        (1, 6, 2 * (1 + 7) / 2**7),  # 0.125
        (0, 5, 2 / 2**5),  # 0.0625
        (2, 10, 2 * (1 + 12 + 66) / 2**12),  # 0.038574
        (3, 3, 1.0),  # the doubled tail exceeds 1
        (0, 0, 1.0),
    ],
)
def test_mcnemar_exact_by_hand(b, c, p):
    both = 7  # concordant pairs never change the p-value
    a_correct = [1] * b + [0] * c + [1] * both + [0] * both
    b_correct = [0] * b + [1] * c + [1] * both + [0] * both
    assert mcnemar_exact(a_correct, b_correct) == pytest.approx(p)
    assert mcnemar_exact(b_correct, a_correct) == pytest.approx(p)  # two-sided: symmetric


def test_mcnemar_large_n_is_exact_and_finite():
    p = mcnemar_exact([1] * 600 + [0] * 400, [0] * 600 + [1] * 400)
    assert 0 < p < 1e-9 and math.isfinite(p)


def test_held_out_size():
    assert held_out_size(0.5, 0.1) == 388  # textbook: 50% vs 60%, alpha .05, power .8
    assert held_out_size(0.8, 0.1) == 199  # 80% vs 90%
    assert held_out_size(0.9, -0.1) == 199  # direction does not matter
    # Paired (McNemar), discordant share 0.2, d = 0.1: (1.959964*sqrt(.2) + 0.841621*sqrt(.19))^2 / .01
    assert held_out_size(0.5, 0.1, discordant=0.2) == math.ceil(
        (1.959964 * math.sqrt(0.2) + 0.841621 * math.sqrt(0.19)) ** 2 / 0.01
    )
    # Smaller differences need more examples.
    assert held_out_size(0.8, 0.05) > held_out_size(0.8, 0.1)
    with pytest.raises(ValueError):
        held_out_size(0.95, 0.1)
    with pytest.raises(ValueError):
        held_out_size(0.5, 0.1, discordant=0.05)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 500), data=st.data())
def test_wilson_contains_the_estimate(n, data):
    k = data.draw(st.integers(0, n))
    iv = wilson(k, n)
    assert 0.0 <= iv.low <= iv.value <= iv.high <= 1.0
