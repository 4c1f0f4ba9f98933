"""`tunewise run` on the tiny random model: every stage runs, a second run skips them all, a change redoes only
what depends on it, and an interrupted run continues where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_label_project

from tunewise.pipeline.progress import NullProgress
from tunewise.pipeline.run import STAGES, Pipeline
from tunewise.project import Project
from tunewise.spec import load_spec


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return tiny_label_project(tmp_path / "p", examples=60, samples=2)


def statuses(result) -> dict[str, str]:
    return {o.stage: o.status for o in result.outcomes}


class RecordingProgress(NullProgress):
    def __init__(self):
        self.events: list[tuple] = []

    def begin(self, index, stage):
        self.events.append(("begin", index, stage))

    def update(self, done, total, detail=""):
        self.events.append(("update", done, total, detail))

    def end(self):
        self.events.append(("end",))

    def log(self, message):
        self.events.append(("log", message))


def test_pipeline_runs_skips_and_redoes_only_what_changed(project: Project):
    progress = RecordingProgress()
    first = Pipeline(project, load_spec(project.spec_path), progress=progress).run()
    assert statuses(first) == {s: "ran" for s in STAGES}
    # One display across stages: each stage begins and ends once, in order; training reports every step.
    begins = [e[2] for e in progress.events if e[0] == "begin"]
    assert begins == list(STAGES)
    assert sum(e[0] == "end" for e in progress.events) == len(STAGES)
    steps = [e for e in progress.events if e[0] == "update" and e[3].startswith("step")]
    total = first.output("train").result.steps
    assert [e[1] for e in steps] == list(range(1, total + 1)) and all(e[2] == total for e in steps)
    narration = [e[1] for e in progress.events if e[0] == "log"]
    assert "[1/8] data ..." in narration  # narration goes through the display
    report = first.output("report").html_path
    assert report.is_file() and "zero-shot" in report.read_text()
    summary = json.loads(first.output("evaluate").summary_path.read_text())
    # evaluation.constrained is auto: the prompted arm's label-scored variant runs beside it
    assert [a["name"] for a in summary["arms"]] == ["zero-shot", "zero-shot+scored", "fine-tuned"]
    assert summary["n_examples"] == 12  # 20% of 60, stratified
    assert first.output("verdict").recommendation in ("fine-tune", "keep prompting", "not yet")

    second = Pipeline(project, load_spec(project.spec_path)).run()
    assert statuses(second) == {s: "skipped" for s in STAGES}

    # A training change redoes training and what follows, not the data stages or the baseline.
    project.spec_path.write_text(
        project.spec_path.read_text().replace("learning_rate: auto", "learning_rate: 0.001")
    )
    third = Pipeline(project, load_spec(project.spec_path)).run()
    assert statuses(third) == {
        "data": "skipped",
        "split": "skipped",
        "baseline": "skipped",
        "train": "ran",
        "evaluate": "ran",
        "economics": "ran",
        "verdict": "ran",
        "report": "ran",
    }

    forced = Pipeline(project, load_spec(project.spec_path)).run(from_stage="economics")
    assert [o.stage for o in forced.outcomes if o.status == "ran"] == ["economics", "verdict", "report"]
    only = Pipeline(project, load_spec(project.spec_path)).run(only="report")
    assert statuses(only) == {"report": "ran"}

    # The baseline run again alone makes new records: the next plain run merges them, and what follows.
    baseline = Pipeline(project, load_spec(project.spec_path)).run(only="baseline")
    assert statuses(baseline) == {"baseline": "ran"}
    after = Pipeline(project, load_spec(project.spec_path)).run()
    assert statuses(after) == {
        **{s: "skipped" for s in ("data", "split", "baseline", "train")},
        **{s: "ran" for s in ("evaluate", "economics", "verdict", "report")},
    }
    records = lambda path: [json.loads(x) for x in Path(path).read_text().splitlines()]  # noqa: E731
    merged = [r for r in records(after.output("evaluate").records_path) if r["kind"] == "prompted"]
    # Measured latencies tell the two baseline runs apart: the merged records are the new run's.
    assert merged == records(baseline.output("baseline").records_path)
    assert merged != records(third.output("baseline").records_path)


def test_training_chooses_on_a_validation_set_carved_from_training_never_on_the_eval_set(project: Project):
    from tunewise.data.load import load_examples

    project.spec_path.write_text(
        project.spec_path.read_text().replace("epochs: 1", "epochs: 1\n  validation_fraction: 0.25")
    )
    result = Pipeline(project, load_spec(project.spec_path)).run()
    split, train = result.output("split"), result.output("train")
    texts = lambda path: {json.dumps(e["messages"]) for e in load_examples(Path(path))}  # noqa: E731
    fit, validation = texts(train.fit.path), texts(train.validation.path)
    assert len(validation) == round(0.25 * 48) and len(fit) == 48 - len(validation)
    assert fit | validation == texts(split.train_path) and not fit & validation
    assert not (fit | validation) & texts(split.eval_path)
    config = json.loads((train.run_dir / "config.json").read_text())["config"]
    assert config["data"] == [str(train.fit.path)] and config["eval_data"] == [str(train.validation.path)]
    assert config["keep_best"] is True
    html = result.output("report").html_path.read_text()
    assert f"{len(fit)} trained on, {len(validation)} for validation" in html


def test_a_small_training_split_keeps_all_its_examples_for_training(project: Project):
    result = Pipeline(project, load_spec(project.spec_path)).run()
    train = result.output("train")  # 10% of 48 is under 10 examples: no validation set
    assert train.validation is None and train.fit.examples == 48
    config = json.loads((train.run_dir / "config.json").read_text())["config"]
    assert config["eval_data"] == []


def test_interrupted_run_continues_from_the_unfinished_stage(project: Project, monkeypatch):
    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "_run_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(project, load_spec(project.spec_path)).run()
    monkeypatch.undo()
    again = Pipeline(project, load_spec(project.spec_path)).run()
    assert statuses(again) == {
        "data": "skipped",
        "split": "skipped",
        "baseline": "skipped",
        "train": "skipped",
        "evaluate": "ran",
        "economics": "ran",
        "verdict": "ran",
        "report": "ran",
    }


def test_data_errors_stop_the_run_with_the_line(project: Project):
    from tunewise.errors import TunewiseError

    path = project.root / "data" / "train.jsonl"
    path.write_text(path.read_text() + '{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(TunewiseError, match=r"train.jsonl:61: no assistant message"):
        Pipeline(project, load_spec(project.spec_path)).run()


def test_unknown_stage_is_a_clear_error(project: Project):
    from tunewise.errors import TunewiseError

    with pytest.raises(TunewiseError, match="unknown stage 'trian'"):
        Pipeline(project, load_spec(project.spec_path)).run(from_stage="trian")


def test_an_interrupted_training_run_is_resumed_not_restarted(project: Project):
    first = Pipeline(project, load_spec(project.spec_path)).run()
    run_id = first.output("train").run_id
    run_dir = project.runs_dir / run_id
    assert any((run_dir / "checkpoints").glob("step-*")), "the run left no checkpoint to resume from"
    # Make it look like a run killed after its last checkpoint: no result, registry row still 'running'.
    (run_dir / "result.json").unlink()
    registry = project.registry()
    with registry.transaction() as conn:
        conn.execute("UPDATE runs SET status='running' WHERE id=?", (run_id,))
    registry.close()
    said: list[str] = []
    again = Pipeline(project, load_spec(project.spec_path), narrate=said.append).run(from_stage="train")
    assert again.output("train").run_id == run_id
    assert any(f"resuming the interrupted training run {run_id}" in line for line in said)
    # A changed hyperparameter is a new run, not a resume of the old one.
    project.spec_path.write_text(
        project.spec_path.read_text().replace("learning_rate: auto", "learning_rate: 0.001")
    )
    changed = Pipeline(project, load_spec(project.spec_path)).run()
    assert changed.output("train").run_id != run_id


def test_the_economics_line_names_the_cheapest_option_among_arms_that_meet_the_bars():
    from tunewise.economics.plan import CostRequest, cost_report
    from tunewise.economics.pricing import load_builtin
    from tunewise.outputs import EvalSummary
    from tunewise.pipeline.run import cheapest_meeting_bars

    def arm(name, kind, accuracy, consistency):
        return {
            "name": name,
            "kind": kind,
            "accuracy": {"value": accuracy},
            "consistency": {"value": consistency},
        }

    # prompted $0.0002/query = $3/month, fine-tuned $0.02/query + $150 hosting = $450/month on together
    report = cost_report(
        CostRequest(queries_per_day=500, prompted_cost=0.0002, tuned_cost=0.02, platforms=["together"]),
        load_builtin(),
    )
    assert report.cheapest.option == "prompted"  # the plain cost report, blind to quality
    demo = EvalSummary(
        n_examples=50,
        arms=[arm("zero-shot", "prompted", 0.0, 0.0), arm("fine-tuned", "fine-tuned", 0.7, 0.42)],
    )
    assert (
        cheapest_meeting_bars(report, demo)
        == "cheapest at 500 queries/day: none named, no option meets the quality bars"
    )
    ready = EvalSummary(
        n_examples=50,
        arms=[arm("zero-shot", "prompted", 0.0, 0.0), arm("fine-tuned", "fine-tuned", 0.9, 0.97)],
    )
    assert cheapest_meeting_bars(report, ready) == (
        "cheapest at 500 queries/day among the options that meet the quality bars: fine-tuned @ together"
    )
    # Only rag+fine-tuned (a fine-tuned kind) meets the bars: the closed-book fine-tuned arm, which misses them,
    # is not named for its kind's sake.
    knowledge = EvalSummary(
        n_examples=34,
        arms=[
            arm("zero-shot", "prompted", 0.0, 0.0),
            arm("fine-tuned", "fine-tuned", 0.0, 0.0),
            arm("rag+fine-tuned", "fine-tuned", 1.0, 1.0),
        ],
    )
    assert (
        cheapest_meeting_bars(report, knowledge)
        == "cheapest at 500 queries/day: none named, no option meets the quality bars"
    )
    # With the arms named otherwise, the given costs are priced for their kinds.
    named = EvalSummary(
        n_examples=50,
        arms=[arm("zero-shot", "prompted", 0.0, 0.0), arm("fine-tuned:run-1", "fine-tuned", 0.9, 0.97)],
    )
    assert cheapest_meeting_bars(report, named).endswith("the quality bars: fine-tuned @ together")


def test_run_prints_the_verdicts_sentence_then_its_rules(project: Project, run_cli, monkeypatch, tmp_path):
    """`tunewise run` ends with the verdict's sentence and reason, then the rules (the stages stubbed out)."""
    from tests.test_verdict import CHEAP_PROMPT, demo_summary
    from tunewise.decide.verdict import decide
    from tunewise.economics.pricing import load_builtin
    from tunewise.outputs import EvalSummary, VerdictOutput
    from tunewise.pipeline.run import PipelineResult

    verdict = decide(EvalSummary.model_validate(demo_summary()), CHEAP_PROMPT, load_builtin())
    path = tmp_path / "verdict.json"
    path.write_text(json.dumps(verdict.to_dict()))

    def stub(self, from_stage=None, only=None):
        self.outputs["verdict"] = VerdictOutput(verdict_path=path, recommendation=verdict.recommendation)
        return PipelineResult()

    monkeypatch.setattr(Pipeline, "run", stub)
    code, out, err = run_cli("run", str(project.spec_path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"verdict: not yet: {verdict.reason}"
    assert lines[0].startswith("verdict: not yet: no option meets the bars; fine-tuning is the way")
    assert lines[1].startswith("  [PASS] significant gain: fine-tuned - few-shot accuracy = +70.0 points")
    assert "  [FAIL] accuracy bar: fine-tuned accuracy 70.0% < 85.0%" in lines
    assert "  cheapest option meeting the bars: none named: no option meets the quality bars" in lines


def test_a_cheap_stage_is_keyed_on_its_own_source(tmp_path: Path):
    """A change to the verdict's rules must redo the verdict even under the same version string; a change to a
    file that is not source (or to another stage's package) must not."""
    from tunewise.pipeline.run import source_hash

    rules = tmp_path / "decide"
    rules.mkdir()
    (rules / "verdict.py").write_text("BAR = 0.85\n")
    (tmp_path / "outputs.py").write_text("class Verdict: ...\n")
    (tmp_path / "report").mkdir()
    hash_of = source_hash.__wrapped__  # uncached: the files change under the same arguments
    before = hash_of("decide", "outputs.py", root=tmp_path)
    (rules / "notes.txt").write_text("not source")
    (tmp_path / "report" / "build.py").write_text("x = 1\n")
    assert hash_of("decide", "outputs.py", root=tmp_path) == before
    (rules / "verdict.py").write_text("BAR = 0.90\n")
    assert hash_of("decide", "outputs.py", root=tmp_path) != before
    (rules / "verdict.py").write_text("BAR = 0.85\n")
    (tmp_path / "outputs.py").write_text("class Verdict: pass\n")
    assert hash_of("decide", "outputs.py", root=tmp_path) != before


def test_new_verdict_rules_redo_the_verdict_and_report_not_the_measured_stages(project: Project, monkeypatch):
    from tunewise.pipeline import run as pipeline_run

    Pipeline(project, load_spec(project.spec_path)).run()
    real = pipeline_run.source_hash
    monkeypatch.setattr(
        pipeline_run, "source_hash", lambda *parts: "new rules" if parts[0] == "decide" else real(*parts)
    )
    again = Pipeline(project, load_spec(project.spec_path)).run()
    assert statuses(again) == {
        **{s: "skipped" for s in ("data", "split", "baseline", "train", "evaluate", "economics")},
        **{s: "ran" for s in ("verdict", "report")},
    }
