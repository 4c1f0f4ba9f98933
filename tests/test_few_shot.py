"""The few-shot arm's default follows the guide: 5 to 10 examples, every label equally often, within the budget."""

from __future__ import annotations

from collections import Counter

import pytest

from tunewise.data.formats import completion
from tunewise.evaluate.arms import build_prompters, few_shot_k
from tunewise.spec import parse_spec


def spec(labels: list[str] | None, k: str | int = "auto", budget: int = 1024):
    contract = f"contract: {{type: label, labels: [{', '.join(labels)}]}}\n" if labels else ""
    return parse_spec(
        "task: {name: t, target: Classify a support ticket by its intent.}\n"
        + contract
        + f"data: {{train: x}}\nevaluation: {{few_shot_k: {k}, few_shot_token_budget: {budget}}}\n"
    )


def train(labels: list[str], per_label: int = 12) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"ticket {i} about {lab}"},
                {"role": "assistant", "content": lab},
            ]
        }
        for lab in labels
        for i in range(per_label)
    ]


def shot_labels(prompter) -> list[str]:
    return [m["content"] for m in prompter.shots if m["role"] == "assistant"]


@pytest.mark.parametrize(
    "n_labels, k, per_label",
    [(2, 6, 3), (3, 6, 2), (4, 8, 2), (5, 5, 1), (9, 9, 1), (10, 10, 1), (12, 12, 1)],
)
def test_auto_holds_5_to_10_examples_balanced_across_labels(n_labels, k, per_label):
    labels = [f"l{i}" for i in range(n_labels)]
    few = build_prompters(spec(labels), train(labels))["few-shot"]
    counts = Counter(shot_labels(few))
    assert sum(counts.values()) == k
    assert set(counts) == set(labels) and set(counts.values()) == {per_label}  # every label, equally often


def test_auto_without_labels_holds_5_and_retrieval_the_same():
    s = spec(None)
    prompters = build_prompters(s, train(["a", "b"], per_label=10))
    assert len(shot_labels(prompters["few-shot"])) == 5
    assert prompters["retrieved"].retriever.k == 5
    # with labels, retrieval takes as many nearest examples as the few-shot prompt holds, at most 10
    labels = [f"l{i}" for i in range(12)]
    assert build_prompters(spec(labels), train(labels))["retrieved"].retriever.k == 10


def test_the_token_budget_still_cuts_the_default():
    labels = ["a", "b"]

    def count(messages: list[dict]) -> int:  # 10 tokens a message
        return 10 * len(messages)

    # each example is two messages (20 tokens): a 64-token budget holds 3 of the 6
    few = build_prompters(spec(labels, budget=64), train(labels), count_tokens=count)["few-shot"]
    assert shot_labels(few) == ["a", "b", "a"]


def test_a_number_is_taken_as_given_but_never_below_one_per_label():
    assert few_shot_k(3, None) == 3 and few_shot_k(3, 4) == 4
    labels = ["a", "b", "c", "d"]
    few = build_prompters(spec(labels, k=2), train(labels))["few-shot"]
    assert sorted(shot_labels(few)) == labels


def test_spec_default_is_auto_and_bounds_hold():
    assert spec(["a", "b"]).evaluation.few_shot_k == "auto"
    assert spec(["a", "b"], k=7).evaluation.few_shot_k == 7
    for bad in (0, 65, "many"):
        with pytest.raises(Exception, match="few_shot_k"):
            spec(["a", "b"], k=bad)


def test_shots_are_the_training_examples_own_answers():
    labels = ["x", "y"]
    data = train(labels, per_label=3)
    few = build_prompters(spec(labels), data)["few-shot"]
    pairs = list(zip(few.shots[::2], few.shots[1::2], strict=True))
    known = {(ex["messages"][0]["content"], completion(ex["messages"])) for ex in data}
    assert {(u["content"], a["content"]) for u, a in pairs} <= known
