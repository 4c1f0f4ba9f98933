"""Drift: the input statistic's false-alarm rate and power, the output, format, refusal and far-input signals,
the accuracy gap, and the verdict line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from tunewise.lifecycle.drift import (
    accuracy_gap,
    compare,
    featurize,
    mean_difference_test,
    total_variation,
)

TOPICS = {
    "billing": ["invoice", "charge", "bill", "payment", "amount", "statement", "fee"],
    "delivery": ["parcel", "courier", "arrive", "package", "tracking", "shipping", "late"],
    "refund": ["refund", "return", "money", "back", "reimburse", "cancel", "credit"],
    "crypto": ["bitcoin", "wallet", "crypto", "exchange", "token", "blockchain", "coin"],
}
FILLER = ["my", "the", "please", "help", "with", "is", "about", "i", "need", "a"]
CONTRACT = {"type": "label", "labels": ["billing", "delivery", "refund", "crypto"]}


def tickets(n: int, topics: list[str], rng: random.Random) -> tuple[list[str], list[str]]:
    inputs, labels = [], []
    for _ in range(n):
        topic = rng.choice(topics)
        words = rng.sample(TOPICS[topic], 3) + rng.sample(FILLER, 3)
        rng.shuffle(words)
        inputs.append(" ".join(words))
        labels.append(topic)
    return inputs, labels


OLD = ["billing", "delivery", "refund"]


def test_statistic_is_the_squared_distance_of_the_means():
    a = np.array([[1.0, 0.0], [1.0, 0.0]])
    b = np.array([[0.0, 1.0], [1.0, 0.0]])
    # means (1, 0) and (0.5, 0.5): 0.5^2 + 0.5^2
    assert mean_difference_test(a, b, permutations=50).statistic == pytest.approx(0.5)


def test_features_are_unit_length_and_idf_weighs_down_shared_words():
    x, y = featurize(["card lost", "card stolen"], ["card fee"])
    assert np.allclose(np.linalg.norm(np.concatenate([x, y]), axis=1), 1.0)
    from tunewise.lifecycle.drift import _bucket

    # "card" is in every text: its IDF is log(4/4) = 0, so it carries no weight.
    assert x[0, _bucket("card")] == 0.0 and x[0, _bucket("lost")] > 0


def test_false_alarm_rate_is_at_most_alpha_over_repeated_seeds():
    """Two samples of the same distribution, 40 seeds: the permutation test flags at most alpha of them."""
    alpha, seeds = 0.05, 40
    alarms = 0
    for seed in range(seeds):
        rng = random.Random(seed)
        a, _ = tickets(150, OLD, rng)
        b, _ = tickets(150, OLD, rng)
        test = mean_difference_test(*featurize(a, b), alpha=alpha, permutations=200, seed=seed)
        alarms += test.moved
    assert alarms / seeds <= alpha


def test_false_alarm_rate_on_banking77(shared_datasets):
    rows = [json.loads(x) for x in (shared_datasets / "banking77" / "train.jsonl").read_text().splitlines()]
    texts = [r["messages"][0]["content"] for r in rows]
    alpha, seeds = 0.05, 20
    alarms = 0
    for seed in range(seeds):
        idx = random.Random(seed).sample(range(len(texts)), 400)
        a, b = [texts[i] for i in idx[:200]], [texts[i] for i in idx[200:]]
        alarms += mean_difference_test(*featurize(a, b), alpha=alpha, permutations=200, seed=seed).moved
    assert alarms / seeds <= alpha


def test_a_shifted_sample_is_detected_with_what_moved():
    rng = random.Random(1)
    train_x, train_y = tickets(300, OLD, rng)
    live_x, live_y = tickets(200, OLD + ["crypto", "crypto", "crypto"], rng)  # half the traffic is new
    report = compare(train_x, train_y, live_x, live_y, CONTRACT, seed=0)
    assert report.inputs.moved and report.inputs.statistic > report.inputs.threshold
    assert report.far_moved and report.far_share > 0.3
    assert report.outputs is not None and report.outputs.moved
    assert report.moved_categories[0][0] == "crypto" and report.moved_categories[0][1] == 0.0
    assert {w for w, _ in report.moved_tokens} & set(TOPICS["crypto"])
    assert report.verdict.startswith("drifting (inputs, outputs")


def test_a_resample_of_the_training_data_is_stable():
    rng = random.Random(2)
    train_x, train_y = tickets(300, OLD, rng)
    pick = np.random.default_rng(2).integers(0, 300, size=200)  # seeded resample with replacement
    report = compare(
        train_x, train_y, [train_x[i] for i in pick], [train_y[i] for i in pick], CONTRACT, seed=0
    )
    assert report.moved == [] and report.verdict == "stable"
    assert report.far_share == 0.0  # every live input is a training input


def test_format_compliance_and_refusals_move_beyond_the_tolerance():
    rng = random.Random(3)
    train_x, train_y = tickets(300, OLD, rng)
    live_x, labels = tickets(200, OLD, rng)
    sorry = "I'm sorry, I can't help with that"
    live_y = [sorry] * 60 + labels[60:]  # 30% refusals, none in training
    report = compare(train_x, train_y, live_x, live_y, CONTRACT, seed=0)
    assert report.refusals.moved and report.refusals.live == pytest.approx(0.3)
    assert report.format is not None and report.format.moved and report.format.live == pytest.approx(0.7)
    assert report.format.train == 1.0
    # 2 refusals in 200 (1%) stay within the 2-point tolerance.
    calm = compare(train_x, train_y, live_x, [sorry] * 2 + labels[2:], CONTRACT, seed=0)
    assert not calm.refusals.moved


def test_accuracy_gap_and_retrain_verdict():
    gap = accuracy_gap([True] * 6 + [False] * 14, [True] * 16 + [False] * 4)
    assert gap["live"] == 0.3 and gap["held_out"] == 0.8
    assert gap["difference"] == pytest.approx(-0.5)
    assert gap["high"] < 0 and gap["moved"]
    same = accuracy_gap([True] * 16 + [False] * 4, [True] * 16 + [False] * 4)
    assert same["low"] < 0 < same["high"] and not same["moved"]

    rng = random.Random(4)
    train_x, train_y = tickets(200, OLD, rng)
    live_x, live_y = tickets(100, OLD, rng)
    report = compare(
        train_x,
        train_y,
        live_x,
        live_y,
        CONTRACT,
        labelled_correct=[True] * 6 + [False] * 14,
        held_out_correct=[True] * 16 + [False] * 4,
    )
    assert report.verdict.startswith(
        "retrain recommended (accuracy 30.0% on labelled traffic vs 80.0% held out"
    )


def test_total_variation_by_hand():
    from collections import Counter

    # shares a: 0.5/0.5/0, b: 0.25/0.25/0.5 -> (0.25 + 0.25 + 0.5) / 2
    assert total_variation(Counter(x=2, y=2), Counter(x=1, y=1, z=2)) == pytest.approx(0.5)
