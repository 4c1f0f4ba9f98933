"""Pairwise preference statistics: win rate with a Wilson interval, agreement (Cohen's and Fleiss' kappa) and
position bias. The standard library only.

An *outcome* is a choice mapped back to the arms: "a" (the first arm of the pair is better), "b", "tie" or
"both_bad". The win rate is measured on the decisive items (a or b): ties and "both bad" say nothing about which
arm is preferred, so they are counted beside it, never as half a win.

With several reviewers an item's outcome is the one most of them chose (`majority`); a split between "a" and "b"
is a tie. Each item then counts once, so that three reviewers agreeing on an item do not triple the evidence.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from tunewise.evaluate.stats import wilson

OUTCOMES = ("a", "b", "tie", "both_bad")

__all__ = [
    "OUTCOMES",
    "cohen_kappa",
    "fleiss_kappa",
    "majority",
    "position_bias",
    "preference",
    "kappa_reading",
]


def majority(outcomes: Sequence[str]) -> str:
    """The outcome most reviewers chose for one item; a draw between the two arms, or any draw, is a tie.

    >>> majority(["a", "a", "b"]), majority(["a", "b"]), majority(["both_bad"]), majority(["a", "tie", "a"])
    ('a', 'tie', 'both_bad', 'a')
    """
    counts = Counter(outcomes).most_common()
    if not counts:
        raise ValueError("no outcomes")
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return "tie"
    return counts[0][0]


def preference(outcomes: Sequence[str], confidence: float = 0.95) -> dict[str, Any]:
    """How often arm a beat arm b on the decisive items, with its Wilson interval; ties and "both bad" counted.

    `could_not_tell` is True when the interval includes 50% (or no item was decisive): the reviewers could not
    tell the arms apart.

    >>> p = preference(["a"] * 6 + ["b"] * 2 + ["tie", "both_bad"])
    >>> p["wins"], p["losses"], p["ties"], p["both_bad"], p["decisive"], p["win_rate"]["value"]
    (6, 2, 1, 1, 8, 0.75)
    >>> p["could_not_tell"]
    True
    """
    counts = Counter(outcomes)
    unknown = set(counts) - set(OUTCOMES)
    if unknown:
        raise ValueError(f"unknown outcome(s): {sorted(unknown)}")
    wins, losses = counts["a"], counts["b"]
    decisive = wins + losses
    interval = wilson(wins, decisive, confidence).as_dict() if decisive else None
    return {
        "n": len(outcomes),
        "wins": wins,
        "losses": losses,
        "ties": counts["tie"],
        "both_bad": counts["both_bad"],
        "decisive": decisive,
        "win_rate": interval,
        "could_not_tell": interval is None or interval["low"] <= 0.5 <= interval["high"],
    }


def cohen_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e), with p_e from each rater's own
    category frequencies. None when chance agreement is already certain (both always chose one same category).

    The textbook case (50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15): p_o = 0.7, p_e = 0.5, kappa 0.4.

    >>> a = ["y"] * 25 + ["n"] * 25
    >>> b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    >>> round(cohen_kappa(a, b), 4)
    0.4
    """
    if len(first) != len(second):
        raise ValueError(f"raters rated different numbers of items: {len(first)} and {len(second)}")
    n = len(first)
    if n == 0:
        return None
    observed = sum(x == y for x, y in zip(first, second)) / n
    ca, cb = Counter(first), Counter(second)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def fleiss_kappa(table: Sequence[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa from one row per item: how many raters put it in each category (every row sums to the same
    number of raters, at least 2). None when there is no item, or chance agreement is certain.

    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P = mean P_i, p_j = sum_i n_ij / (N n), P_e = sum_j p_j^2,
    kappa = (P - P_e) / (1 - P_e).

    >>> round(fleiss_kappa([{"a": 2}, {"b": 2}, {"a": 1, "b": 1}]), 4)  # P = 2/3, P_e = 1/2
    0.3333
    """
    rows = [dict(r) for r in table if sum(r.values())]
    if not rows:
        return None
    raters = {sum(r.values()) for r in rows}
    if len(raters) != 1:
        raise ValueError(f"every item needs the same number of raters, got {sorted(raters)}")
    n = raters.pop()
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least 2 raters per item")
    big_n = len(rows)
    agreement = sum((sum(v * v for v in r.values()) - n) / (n * (n - 1)) for r in rows) / big_n
    totals: Counter[str] = Counter()
    for r in rows:
        totals.update(r)
    expected = sum((t / (big_n * n)) ** 2 for t in totals.values())
    if expected >= 1.0:
        return None
    return (agreement - expected) / (1.0 - expected)


def position_bias(choices: Sequence[str], confidence: float = 0.95) -> dict[str, Any] | None:
    """How often "left" won among the choices that picked a side, with its Wilson interval; `biased` when the
    interval excludes 50%. None without any such choice.

    >>> b = position_bias(["left"] * 7 + ["right"] * 3 + ["tie"])
    >>> b["left"], b["decisive"], b["rate"]["value"], b["biased"]
    (7, 10, 0.7, False)
    """
    left, right = choices.count("left"), choices.count("right")
    if left + right == 0:
        return None
    interval = wilson(left, left + right, confidence).as_dict()
    return {
        "left": left,
        "decisive": left + right,
        "rate": interval,
        "biased": not interval["low"] <= 0.5 <= interval["high"],
    }


def kappa_reading(kappa: float | None) -> str:
    """Landis and Koch's words for a kappa (1977), which is how agreement is usually read.

    >>> kappa_reading(0.1), kappa_reading(0.5), kappa_reading(0.85), kappa_reading(None)
    ('slight', 'moderate', 'almost perfect', 'not measurable')
    """
    if kappa is None:
        return "not measurable"
    for bound, word in (
        (0.0, "poor"),
        (0.2, "slight"),
        (0.4, "fair"),
        (0.6, "moderate"),
        (0.8, "substantial"),
    ):
        if kappa <= bound:
            return word
    return "almost perfect"
