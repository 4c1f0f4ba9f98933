"""Wilson, Cohen's and Fleiss' kappa, and position bias against values computed by hand."""

from __future__ import annotations

import pytest

from tunewise.review import stats


def test_cohen_kappa_matches_the_hand_computed_value():
    # 10 items, two reviewers: agree on 7 (a,a x4, b,b x2, tie,tie x1).
    first = ["a", "a", "a", "a", "b", "b", "tie", "a", "b", "tie"]
    second = ["a", "a", "a", "a", "b", "b", "tie", "b", "tie", "a"]
    # p_o = 7/10; first: a 5, b 3, tie 2; second: a 5, b 3, tie 2 -> p_e = (25 + 9 + 4) / 100 = 0.38
    assert stats.cohen_kappa(first, second) == pytest.approx((0.7 - 0.38) / (1 - 0.38))
    assert stats.cohen_kappa(["a"] * 4, ["a"] * 4) is None  # chance agreement certain: undefined
    assert stats.cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)


def test_fleiss_kappa_matches_the_textbook_example():
    # Fleiss (1971) as worked in Wikipedia's article: 10 subjects, 14 raters, 5 categories; kappa 0.210.
    rows = [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]  # fmt: skip
    table = [{str(j): n for j, n in enumerate(r) if n} for r in rows]
    assert stats.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError, match="same number of raters"):
        stats.fleiss_kappa([{"a": 2}, {"a": 3}])


def test_preference_uses_decisive_items_and_wilson():
    p = stats.preference(["a"] * 30 + ["b"] * 10 + ["tie"] * 5 + ["both_bad"] * 2)
    assert (p["wins"], p["losses"], p["ties"], p["both_bad"], p["decisive"]) == (30, 10, 5, 2, 40)
    # Wilson 30/40 by hand: centre (0.75 + 1.96^2/80) / (1 + 1.96^2/40), half width 1.96 sqrt(...) / (1 + ...).
    z = 1.959964
    denom = 1 + z * z / 40
    centre = (0.75 + z * z / 80) / denom
    half = z * ((0.75 * 0.25 / 40 + z * z / (4 * 40 * 40)) ** 0.5) / denom
    assert p["win_rate"]["low"] == pytest.approx(centre - half, abs=1e-6)
    assert p["win_rate"]["high"] == pytest.approx(centre + half, abs=1e-6)
    assert p["could_not_tell"] is False  # the interval (0.60, 0.86) excludes 50%
    assert stats.preference(["a"] * 6 + ["b"] * 4)["could_not_tell"] is True
    assert stats.preference(["tie", "both_bad"])["could_not_tell"] is True  # nothing decisive


def test_position_bias_counts_left_wins_among_side_choices():
    b = stats.position_bias(["left"] * 18 + ["right"] * 2 + ["tie"] * 5)
    assert (b["left"], b["decisive"]) == (18, 20)
    assert b["rate"]["value"] == pytest.approx(0.9)
    assert b["biased"] is True
    assert stats.position_bias(["tie", "both_bad"]) is None


def test_majority_splits_between_arms_are_ties():
    assert stats.majority(["a", "b"]) == "tie"
    assert stats.majority(["b", "b", "a"]) == "b"
