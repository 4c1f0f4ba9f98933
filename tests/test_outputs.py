"""Typed stage outputs: one rule for the best prompted arm and one set of bars, read by the report from the
verdict; a recorded stage output that no longer validates makes that stage run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.decide.verdict import BARS, Economics, decide
from tunewise.economics.pricing import load_builtin
from tunewise.outputs import (
    BaselineOutput,
    DataOutput,
    DatasetPart,
    EconomicsOutput,
    EvalSummary,
    EvaluateOutput,
    ReportOutput,
    SplitOutput,
    TrainOutput,
    VerdictOutput,
)
from tunewise.pipeline.run import STAGES, Pipeline
from tunewise.report.build import reference_arm, view
from tunewise.scaffold import scaffold
from tunewise.spec import load_spec


def _tie_summary() -> dict:
    """Two prompted arms at the same accuracy: `consistent` is more consistent, `lenient` has the higher lenient
    accuracy and macro-F1. The report's old rule (accuracy, then consistency) chose `consistent`; the verdict's
    (accuracy, lenient accuracy, F1, format, consistency) chooses `lenient`."""
    return {
        "task": "t",
        "n_examples": 200,
        "contract": "label",
        "arms": [
            {
                "name": "consistent", "kind": "prompted",
                "accuracy": {"value": 0.6, "low": 0.53, "high": 0.67},
                "accuracy_lenient": {"value": 0.62, "low": 0.55, "high": 0.69},
                "macro_f1": 0.55,
                "consistency": {"value": 0.99, "low": 0.96, "high": 1.0},
                "prompt_tokens": 100.0, "completion_tokens": 2.0,
            },
            {
                "name": "lenient", "kind": "prompted",
                "accuracy": {"value": 0.6, "low": 0.53, "high": 0.67},
                "accuracy_lenient": {"value": 0.8, "low": 0.74, "high": 0.85},
                "macro_f1": 0.7,
                "consistency": {"value": 0.7, "low": 0.63, "high": 0.76},
                "prompt_tokens": 100.0, "completion_tokens": 2.0,
            },
            {
                "name": "fine-tuned", "kind": "fine-tuned",
                "accuracy": {"value": 0.9, "low": 0.85, "high": 0.94},
                "consistency": {"value": 0.97, "low": 0.94, "high": 0.99},
                "prompt_tokens": 20.0, "completion_tokens": 2.0,
            },
        ],
        "paired": [
            {"a": "fine-tuned", "b": "lenient", "metric": "accuracy", "diff": 0.3, "low": 0.22, "high": 0.38},
            {"a": "fine-tuned", "b": "consistent", "metric": "accuracy", "diff": 0.3, "low": 0.22, "high": 0.38},
        ],
    }  # fmt: skip


ECON = Economics(queries_per_day=500, prompted_cost=0.08, tuned_cost=0.02, platforms=["together"])


def test_report_and_verdict_name_the_same_best_prompted_arm_where_the_old_rules_differed():
    raw = _tie_summary()
    verdict = decide(EvalSummary.model_validate(raw), ECON, load_builtin())
    assert verdict.best_prompted_arm == "lenient"
    with_verdict = view({"evaluation": raw, "verdict": verdict.to_dict()})
    assert with_verdict["evaluation"]["reference"] == "lenient"
    # Before the verdict exists the report applies the verdict's own rule, not one of its own.
    without = view({"evaluation": raw})
    assert without["evaluation"]["reference"] == "lenient"
    assert reference_arm(raw["arms"])["name"] == "lenient"


def test_the_verdict_records_its_bars_and_the_report_judges_by_them():
    verdict = decide(EvalSummary.model_validate(_tie_summary()), ECON, load_builtin()).to_dict()
    assert verdict["bars"] == {"accuracy": 0.85, "consistency": 0.95, "format": 0.95} == BARS.model_dump()
    assert verdict["headline"].startswith("Fine-tune: ")
    # A verdict with a stricter accuracy bar: the fine-tuned arm's 90% now fails it on the page.
    verdict["bars"]["accuracy"] = 0.95
    ctx = view({"evaluation": _tie_summary(), "verdict": verdict})
    assert ctx["bars"]["accuracy"] == "95%"
    tuned = next(r for r in ctx["evaluation"]["rows"] if r["name"] == "fine-tuned")
    assert tuned["cells"]["accuracy"]["mark"] == "fail"
    assert tuned["cells"]["accuracy"]["title"] == "90.0% < 95.0%"


# --- a recorded output that no longer validates ----------------------------------------------------------


def _fake_stages(monkeypatch, tmp_path: Path) -> dict[str, int]:
    """Replace every stage with one that returns a valid output at once; count the runs."""
    calls = dict.fromkeys(STAGES, 0)
    made = tmp_path / "made.json"
    made.write_text("{}")
    verdict_file = tmp_path / "verdict.json"
    verdict_json = decide(EvalSummary.model_validate(_tie_summary()), ECON, load_builtin()).to_dict()
    part = DatasetPart(version="v1", examples=1)
    outputs = {
        "data": DataOutput(report_path=made, errors=0, warnings=0),
        "split": SplitOutput(how="fake", train=part, eval=part, train_path=made, eval_path=made),
        "baseline": BaselineOutput(skipped="fake"),
        "train": TrainOutput(skipped="fake"),
        "evaluate": EvaluateOutput(skipped="fake"),
        "economics": EconomicsOutput(skipped="fake"),
        "verdict": VerdictOutput(verdict_path=verdict_file, recommendation="fine-tune"),
        "report": ReportOutput(html_path=made, json_path=made),
    }
    for stage in STAGES:

        def fake(self, stage=stage):
            calls[stage] += 1
            if stage == "verdict":
                verdict_file.write_text(json.dumps(verdict_json))
            return outputs[stage]

        monkeypatch.setattr(Pipeline, f"_run_{stage}", fake)
    return calls


def _tamper(project, stage: str, change) -> None:
    registry = project.registry()
    with registry.transaction() as conn:
        (raw,) = conn.execute(
            "SELECT output FROM pipeline_stages WHERE stage=? AND status='succeeded'", (stage,)
        ).fetchone()
        conn.execute(
            "UPDATE pipeline_stages SET output=? WHERE stage=?", (json.dumps(change(json.loads(raw))), stage)
        )
    registry.close()


def test_a_recorded_output_that_fails_validation_makes_its_stage_run_again(tmp_path, monkeypatch):
    project = scaffold(tmp_path / "p")
    calls = _fake_stages(monkeypatch, tmp_path)
    spec = load_spec(project.spec_path)
    first = Pipeline(project, spec).run()
    assert {o.stage: o.status for o in first.outcomes} == {
        **{s: "ran" for s in STAGES},
        **{s: "not needed" for s in ("baseline", "train", "evaluate", "economics")},
    }
    assert isinstance(first.output("verdict"), VerdictOutput)

    # An economics record in an older shape (a key this version does not know): not reused, run again.
    _tamper(project, "economics", lambda out: {**out, "cost_json": "economics.json"})
    said: list[str] = []
    second = Pipeline(project, spec, narrate=said.append).run()
    statuses = {o.stage: o.status for o in second.outcomes}
    assert statuses["economics"] == "not needed" and calls["economics"] == 2
    assert any("economics: its recorded output is from another version" in line for line in said)
    # Its new output equals the old one, so what reads it is still up to date.
    assert statuses["verdict"] == statuses["report"] == "skipped" and calls["verdict"] == 1

    # A verdict file written before verdicts carried their bars fails validation: the verdict runs again.
    verdict_file = tmp_path / "verdict.json"
    old = json.loads(verdict_file.read_text())
    del old["bars"], old["headline"]
    verdict_file.write_text(json.dumps(old))
    third = Pipeline(project, spec).run()
    assert {o.stage: o.status for o in third.outcomes}["verdict"] == "ran" and calls["verdict"] == 2
    assert "bars" in json.loads(verdict_file.read_text())

    # A stage output missing a field it needs is not reused either.
    _tamper(project, "data", lambda out: {k: v for k, v in out.items() if k != "errors"})
    fourth = Pipeline(project, spec).run()
    assert {o.stage: o.status for o in fourth.outcomes}["data"] == "ran" and calls["data"] == 2


def test_only_a_stage_whose_input_record_is_stale_is_a_clear_error(tmp_path, monkeypatch):
    from tunewise.errors import TunewiseError

    project = scaffold(tmp_path / "p")
    _fake_stages(monkeypatch, tmp_path)
    spec = load_spec(project.spec_path)
    Pipeline(project, spec).run()
    _tamper(project, "split", lambda out: {**out, "how": None})
    with pytest.raises(TunewiseError, match="--only report needs the output of stage 'split'"):
        Pipeline(project, spec).run(only="report")
