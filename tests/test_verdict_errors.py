"""'Not yet' from measurements: the closest arm's wrong answers split into format and content errors, which one
to fix first, and a larger base model's estimated cost where the catalog has one."""

from __future__ import annotations

from tunewise.decide.verdict import Economics, decide, error_split
from tunewise.economics.pricing import Catalog, load_builtin
from tunewise.evaluate.summary import build_summary
from tunewise.outputs import EvalSummary

LABELS = {"type": "label", "labels": ["yes", "no"]}


def records(arm: str, outputs: list[str], references: list[str]) -> list[dict]:
    return [
        {"id": i, "input": f"q{i}", "reference": ref, "arm": arm, "output": out}
        for i, (out, ref) in enumerate(zip(outputs, references, strict=True))
    ]


def test_the_summary_counts_format_and_content_errors_per_example():
    refs = ["yes", "yes", "no", "no"]
    # right; right answer in the wrong form; neither a label nor right; a well-formed wrong label
    s = build_summary(records("few-shot", ["yes", "Yes.", "maybe", "yes"], refs), LABELS, task="t")
    arm = s.arms[0]
    assert arm.model_extra["errors"] == {"wrong": 3, "format": 2, "format_right_answer": 1, "content": 1}
    assert error_split(arm, s.n_examples) == {"wrong": 3, "format": 2, "format_right_answer": 1, "content": 1}
    # an older summary without the counts: the same split from the rates (accuracy 25%, format 50%, lenient 50%)
    raw = s.model_dump()
    del raw["arms"][0]["errors"]
    assert error_split(EvalSummary.model_validate(raw).arms[0], 4) == arm.model_extra["errors"]


def arm(name, kind, acc, cons, fmt=None, lenient=None):
    out = {
        "name": name, "kind": kind, "accuracy": {"value": acc, "low": acc - 0.05, "high": acc + 0.05},
        "consistency": {"value": cons, "low": cons - 0.05, "high": min(cons + 0.05, 1.0)},
        "prompt_tokens": 100.0, "completion_tokens": 20.0,
    }  # fmt: skip
    if fmt is not None:
        out["format_compliance"] = {"value": fmt, "low": fmt - 0.05, "high": min(fmt + 0.05, 1.0)}
    if lenient is not None:
        out["accuracy_lenient"] = {"value": lenient}
    return out


def not_yet(tuned: dict) -> EvalSummary:
    """No arm meets the bars; the fine-tuned arm is the closest (few-shot scores 10%)."""
    return EvalSummary.model_validate(
        {
            "task": "t", "n_examples": 100, "contract": "label",
            "arms": [arm("few-shot", "prompted", 0.10, 0.5, fmt=0.3), tuned],
            "paired": [{"a": "fine-tuned", "b": "few-shot", "metric": "accuracy", "diff": 0.6, "low": 0.5,
                        "high": 0.7, "mcnemar_p": 1e-9}],
        }
    )  # fmt: skip


ECON = Economics(queries_per_day=500, prompted_cost=0.01, tuned_cost=0.01, platforms=["together"])


def test_mostly_format_errors_say_fix_the_format_first():
    # 70% accurate, 78% well-formed, 86% leniently right: of 30 wrong, 22 malformed (16 right inside), 8 content
    v = decide(
        not_yet(arm("fine-tuned", "fine-tuned", 0.70, 0.97, fmt=0.78, lenient=0.86)), ECON, load_builtin()
    )
    assert v.recommendation == "not yet"
    assert v.reason.endswith(
        "fix the format first (78.0% format compliance, under 95%; of 30 wrong answers, 22 break the format (16 of "
        "them with the right answer inside) and 8 are well-formed but wrong): more training examples in the exact "
        "format, or constrained decoding, and retrain"
    )


def test_mostly_content_errors_say_fix_the_content_first_even_under_the_format_bar():
    # 70% accurate, 90% well-formed: of 30 wrong, 10 malformed, 20 well-formed but wrong
    v = decide(not_yet(arm("fine-tuned", "fine-tuned", 0.70, 0.97, fmt=0.90)), ECON, load_builtin())
    assert v.reason.endswith(
        "fix the content first (of 30 wrong answers, 10 break the format and 20 are well-formed but wrong): "
        "improve the training data or the task definition and retrain, then the format (more training examples "
        "in the exact format, or constrained decoding, and retrain)"
    )


def catalog_with_a_larger_model() -> Catalog:
    def fig(v):
        return {"value": v, "source": "test", "date": "2026-05"}

    return Catalog.model_validate(
        {
            "entries": [
                {"id": "p/small", "platform": "p", "model_class": "small", "default": True,
                 "training_per_million_tokens": fig(25.0)},
                {"id": "p/large", "platform": "p", "model_class": "large",
                 "training_per_million_tokens": fig(80.0), "inference_input_per_million_tokens": fig(1.0),
                 "inference_output_per_million_tokens": fig(2.0), "hosting_per_hour": fig(1.0)},
                {"id": "p/cheaper", "platform": "p", "model_class": "tiny", "training_per_million_tokens": fig(5.0)},
            ]
        }
    )  # fmt: skip


def test_content_errors_name_a_larger_base_models_estimated_cost():
    summary = not_yet(arm("fine-tuned", "fine-tuned", 0.70, 0.97, fmt=1.0))
    v = decide(summary, Economics(queries_per_day=500, platforms=["p"]), catalog_with_a_larger_model())
    # p/large: 100 input tokens x $1/1M + 20 output x $2/1M = $0.00014/query x 500 x 30 = $2.10; hosting
    # $1/hour x 24 x 30 = $720: $722.10/month. The cheaper entry is not a larger model.
    assert v.reason.endswith(
        "; the wrong answers are mostly content, which a larger base model may fix: p/large trains at $80.00 vs "
        "$25.00 per 1M tokens (x3.2), about $722.10/month at 500 queries/day"
    )
    assert "p/cheaper" not in v.reason


def test_a_larger_model_without_prices_says_what_is_unknown_and_format_errors_name_none():
    summary = not_yet(arm("fine-tuned", "fine-tuned", 0.70, 0.97, fmt=1.0))
    v = decide(summary, Economics(queries_per_day=500, platforms=["azure-openai"]), load_builtin())
    assert (
        "azure-openai/gpt-4o trains at $80.00 vs $25.00 per 1M tokens (x3.2); its monthly cost is unknown"
        in (v.reason)
    )
    mostly_format = not_yet(arm("fine-tuned", "fine-tuned", 0.70, 0.97, fmt=0.75))
    v = decide(mostly_format, Economics(queries_per_day=500, platforms=["p"]), catalog_with_a_larger_model())
    assert "larger base model" not in v.reason
