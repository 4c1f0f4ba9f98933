"""The evaluation runner end to end on the tiny random model: every arm, the same examples, every call logged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.evaluate.arms import build_prompters, system_prompt
from tunewise.project import Project
from tunewise.scaffold import scaffold
from tunewise.spec import parse_spec

SPEC = """\
task:
  name: tiny-sentiment
  target: Given a short review, answer with its sentiment label.
contract: {type: label, labels: [positive, negative]}
system_prompt: Classify the review.
data: {train: data/train.jsonl}
model: {base: "tiny:random"}
evaluation: {consistency_samples: 2, max_new_tokens: 4, few_shot_k: 2}
"""


def example(text: str, label: str) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}]}


TRAIN = [example(f"great film number {i}", "positive") for i in range(6)] + [
    example(f"awful plot {i}", "negative") for i in range(6)
]
HELD = [
    example("a great movie", "positive"),
    example("an awful movie", "negative"),
    example("great acting", "positive"),
]


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return scaffold(tmp_path / "p")


def test_prompters_state_the_contract_and_balance_shots():
    spec = parse_spec(SPEC)
    assert (
        system_prompt(spec)
        == "Classify the review.\n\nAnswer with exactly one of these labels and nothing else: positive, negative."
    )
    prompters = build_prompters(spec, TRAIN, None, seed=0)
    few = prompters["few-shot"].messages(HELD[0])
    assert few[0]["role"] == "system" and few[-1] == {"role": "user", "content": "a great movie"}
    shot_labels = [m["content"] for m in few if m["role"] == "assistant"]
    assert sorted(shot_labels) == ["negative", "positive"]  # one per label (k = max(2, labels))
    retrieved = prompters["retrieved"].messages(HELD[1])
    users = [m["content"] for m in retrieved if m["role"] == "user"]
    assert users[-1] == "an awful movie" and all("awful" in u for u in users[:-1])  # BM25 neighbours
    assert prompters["fine-tuned"].messages(HELD[0]) == [{"role": "user", "content": "a great movie"}]


def test_run_evaluation_records_every_arm_and_call(project: Project):
    from tunewise.evaluate.run import run_evaluation

    spec = parse_spec(SPEC)
    result = run_evaluation(spec, project, TRAIN, HELD, ["zero-shot", "few-shot", "retrieved"])
    summary = result.summary
    # evaluation.constrained is auto: each prompted arm's label-scored variant runs beside it
    assert [a["name"] for a in summary["arms"]] == [
        "zero-shot",
        "zero-shot+scored",
        "few-shot",
        "few-shot+scored",
        "retrieved",
        "retrieved+scored",
    ]
    assert [a["variant"] for a in summary["arms"]] == ["free", "scored"] * 3
    assert [a["constrained"] for a in summary["arms"]] == [False, True] * 3
    assert summary["n_examples"] == 3
    assert all(a["kind"] == "prompted" and a["consistency"] is not None for a in summary["arms"])
    assert len(result.records) == 18 and all(len(r["samples"]) == 2 for r in result.records)
    scored = [r for r in result.records if r["arm"].endswith("+scored")]
    assert all(
        r["output"] in ("positive", "negative") and set(r["samples"]) <= {"positive", "negative"}
        for r in scored
    )
    assert all(r["output"] == max(r["label_scores"], key=r["label_scores"].get) for r in scored)
    assert all(a["format_compliance"]["value"] == 1.0 for a in summary["arms"] if a["variant"] == "scored")
    # few-shot prompts are longer than zero-shot ones: tokens are measured with each arm's real prompt
    tokens = {a["name"]: a["prompt_tokens"] for a in summary["arms"]}
    assert tokens["few-shot"] > tokens["zero-shot"]
    assert (result.run_dir / "summary.json").is_file() and (result.run_dir / "records.jsonl").is_file()
    assert json.loads((result.run_dir / "result.json").read_text())["status"] == "succeeded"
    registry = project.registry()
    try:
        calls = registry.conn.execute(
            "SELECT count(*), sum(prompt_tokens) FROM model_calls WHERE run_id=?", (result.run_id,)
        ).fetchone()
        status = registry.conn.execute(
            "SELECT status, kind FROM runs WHERE id=?", (result.run_id,)
        ).fetchone()
        figures = registry.conn.execute("SELECT figures FROM runs WHERE id=?", (result.run_id,)).fetchone()
    finally:
        registry.close()
    # free arms: 3 arms x 3 examples x (1 greedy + 2 samples); scored arms: one scoring call per example (their
    # samples are drawn from the scores, no model call)
    assert calls[0] == 3 * 3 * (1 + 2) + 3 * 3
    assert calls[1] > 0
    assert tuple(status) == ("succeeded", "eval")
    accuracy = {a["name"]: a["accuracy"]["value"] for a in summary["arms"]}
    assert json.loads(figures[0]) == {"examples": 3, "accuracy": accuracy}


def test_unknown_arm_and_missing_run_are_clear_errors(project: Project):
    from tunewise.errors import TunewiseError
    from tunewise.evaluate.run import run_evaluation

    spec = parse_spec(SPEC)
    with pytest.raises(TunewiseError, match="unknown arm"):
        run_evaluation(spec, project, TRAIN, HELD, ["two-shot"])
    with pytest.raises(TunewiseError, match="needs a training run"):
        run_evaluation(spec, project, TRAIN, HELD, ["fine-tuned"])


JSON_SPEC = """\
task:
  name: tiny-sentiment-json
  target: Given a short review, answer with JSON holding its sentiment label.
contract:
  type: json
  schema: {type: object, properties: {label: {enum: [positive, negative]}}, required: [label]}
system_prompt: Classify the review.
data: {train: data/train.jsonl}
model: {base: "tiny:random"}
evaluation: {consistency_samples: 2, few_shot_k: 2}
"""


def _as_json(examples: list[dict]) -> list[dict]:
    return [
        example(ex["messages"][0]["content"], json.dumps({"label": ex["messages"][1]["content"]}))
        for ex in examples
    ]


def test_constrained_variant_meets_the_schema_and_free_arm_does_not(project: Project):
    from tunewise.evaluate.run import run_evaluation

    spec = parse_spec(JSON_SPEC)
    result = run_evaluation(spec, project, _as_json(TRAIN), _as_json(HELD), ["zero-shot"])
    arms = {a["name"]: a for a in result.summary["arms"]}
    assert list(arms) == ["zero-shot", "zero-shot+constrained"]
    assert arms["zero-shot+constrained"]["format_compliance"]["value"] == 1.0
    assert arms["zero-shot"]["format_compliance"]["value"] == 0.0  # a random model alone
    # The JSON loop guard serves the free arm; the constrained one has its grammar instead.
    assert arms["zero-shot"]["json_guard"] and not arms["zero-shot+constrained"]["json_guard"]
    assert arms["zero-shot"]["guarded_answers"] == sum(
        1 for r in result.records if r.get("guard_rewinds") or r.get("guard_refusals")
    )
    constrained = [r for r in result.records if r["arm"] == "zero-shot+constrained"]
    assert all(
        json.loads(x)["label"] in ("positive", "negative")
        for r in constrained
        for x in [r["output"], *r["samples"]]
    )


def test_constrained_setting_and_explicit_variants(project: Project):
    from tunewise.errors import TunewiseError
    from tunewise.evaluate.run import plan_arms, run_evaluation

    spec = parse_spec(SPEC)
    spec.evaluation.constrained = False
    result = run_evaluation(spec, project, TRAIN, HELD, ["zero-shot", "few-shot+scored"])
    assert [a["name"] for a in result.summary["arms"]] == ["zero-shot", "few-shot+scored"]
    with pytest.raises(TunewiseError, match="do not fit a label contract"):
        run_evaluation(spec, project, TRAIN, HELD, ["few-shot+constrained"])
    label = {"type": "label", "labels": ["a", "b"]}
    assert plan_arms(["fine-tuned"], label, True) == ["fine-tuned", "fine-tuned+scored"]
    assert plan_arms(["fine-tuned"], label, "auto") == ["fine-tuned"]
    assert plan_arms(["ep", "zero-shot"], label, True, endpoints={"ep"}) == [
        "ep",
        "zero-shot",
        "zero-shot+scored",
    ]


def test_label_scoring_mean_or_sum(project: Project):
    """`label_scoring: sum` ranks by the reply's total log-probability: each label's score is its mean-score
    times its number of reply tokens (the same for every example)."""
    from tunewise.evaluate.run import run_evaluation

    spec = parse_spec(SPEC)
    spec.evaluation.constrained = False
    spec.evaluation.consistency_samples = 1
    mean = run_evaluation(spec, project, TRAIN, HELD, ["zero-shot+scored"]).records
    spec.evaluation.label_scoring = "sum"
    total = run_evaluation(spec, project, TRAIN, HELD, ["zero-shot+scored"]).records
    ratios = [
        {label: t["label_scores"][label] / m["label_scores"][label] for label in m["label_scores"]}
        for m, t in zip(mean, total)
    ]
    for ratio in ratios:
        for label, tokens in ratio.items():
            assert (
                tokens == pytest.approx(round(tokens), abs=1e-3) and round(tokens) >= 2
            )  # label + end of turn
            assert tokens == pytest.approx(ratios[0][label], abs=1e-3)
    assert all(t["output"] == max(t["label_scores"], key=t["label_scores"].get) for t in total)
