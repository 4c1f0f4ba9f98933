"""The run store and `tunewise runs`: atomic files, runs created, finished, listed and found, every kind of run
(training on the tiny model, evaluation, the pipeline, a fine-tuning job's run) recorded with its figures."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tunewise import fileio
from tunewise.errors import TunewiseError
from tunewise.project import Project
from tunewise.registry import runs as runs_module
from tunewise.registry.runs import ModelCall, RunStore

# --- atomic writes ---------------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_atomic_writes_leave_the_file_and_no_temporary_file(tmp_path):
    fileio.atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    fileio.atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    fileio.atomic_write_json(tmp_path / "c.json", {"path": Path("/x"), "ü": 1})
    fileio.atomic_write_jsonl(tmp_path / "d.jsonl", [{"a": 1}, {"b": 2}])
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "path": "/x",\n  "ü": 1\n}\n'
    assert (tmp_path / "d.jsonl").read_text() == '{"a": 1}\n{"b": 2}\n'
    assert leftovers(tmp_path) == [] and leftovers(tmp_path / "sub") == []
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode


def test_the_file_and_its_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fileio.atomic_write_text(tmp_path / "a.txt", "x")
    assert events == ["fsync file", "replace", "fsync dir"]


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    fileio.atomic_write_text(target, "old\n")
    # The writer dies after half the new contents.
    with pytest.raises(RuntimeError, match="killed"):
        with fileio.atomic_open(target) as fh:
            fh.write("new, half")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []

    # The disk fails when the data is synced: the same.
    def broken_fsync(fd):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="I/O error"):
        fileio.atomic_write_json(target, {"new": True})
    assert target.read_text() == "old\n" and leftovers(tmp_path) == []


def test_a_torn_last_line_of_an_append_log_is_left_out(tmp_path):
    log = tmp_path / "metrics.jsonl"
    fileio.append_jsonl(log, {"step": 1, "loss": 2.0})
    fileio.append_jsonl(log, {"step": 2, "loss": 1.5})
    assert fileio.read_jsonl(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    with open(log, "a") as fh:
        fh.write('{"step": 3, "lo')  # a crash in the middle of a line
    assert fileio.read_jsonl(log) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    assert fileio.read_jsonl(tmp_path / "absent.jsonl") == []


def test_publish_moves_a_finished_folder_into_place(tmp_path):
    final = tmp_path / "model"
    tmp = fileio.temp_path(final)
    tmp.mkdir()
    (tmp / "config.json").write_text("{}")
    fileio.publish(tmp, final)
    assert (final / "config.json").read_text() == "{}" and not tmp.exists()


# --- the store -------------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch) -> RunStore:
    # One second per call: start and finish times, and the order of runs, are known.
    ticks = iter(range(3600))

    def now() -> str:
        t = next(ticks)
        return f"2026-12-01T10:{t // 60:02d}:{t % 60:02d}+00:00"

    monkeypatch.setattr(runs_module, "utc_now", now)
    return RunStore(Project(tmp_path / "proj"))


def test_a_run_is_created_finished_and_listed(store):
    run = store.create("eval", {"arms": ["zero-shot"]}, name="sentiment", dataset_versions=["v1", None, "v1"])
    assert run.id.startswith("eval-") and run.status == "running" and run.finished_at is None
    assert run.path == store.project.runs_dir / run.id
    assert json.loads((run.path / "config.json").read_text()) == {"arms": ["zero-shot"]}
    assert run.dataset_versions == ["v1"]  # unknown versions dropped, each once
    store.write_jsonl(run, "records.jsonl", [{"id": "0"}])
    store.log_calls(
        run, [ModelCall("zero-shot", "0", 0, 10, 2, 4.0), ModelCall("zero-shot", "0", 1, 12, 3, 6.0)]
    )

    done = store.finish(run, "succeeded", {"summary": "s.json"}, figures={"accuracy": {"zero-shot": 0.5}})
    assert done.status == "succeeded" and done.figures == {"accuracy": {"zero-shot": 0.5}}
    result = json.loads((run.path / "result.json").read_text())
    assert result == {"summary": "s.json", "status": "succeeded", "finished_at": done.finished_at}
    assert done.result == result and done.seconds is not None and done.seconds > 0
    assert store.call_totals(run) == {
        "zero-shot": {"calls": 2, "prompt_tokens": 22, "completion_tokens": 5, "latency_ms": 5.0}
    }
    assert sorted(p.name for p in run.path.iterdir()) == ["config.json", "records.jsonl", "result.json"]


def test_runs_are_listed_newest_first_and_filtered(store):
    a = store.create("train", {}, run_id="train-a")
    b = store.create("eval", {}, run_id="eval-b")
    c = store.create("train", {}, run_id="train-c")
    store.finish(a, "failed", {"error": "disk on fire"})
    store.finish(c, "succeeded")
    assert [r.id for r in store.list()] == [c.id, b.id, a.id]
    assert [r.id for r in store.list(kind="train")] == [c.id, a.id]
    assert [r.id for r in store.list(status="running")] == [b.id]
    assert [r.id for r in store.list(kind="train", status="failed")] == [a.id]
    assert [r.id for r in store.list(limit=2)] == [c.id, b.id]
    assert store.get("train-a").error == "disk on fire"


def test_runs_are_found_by_id_prefix_or_folder(store):
    for rid in ("train-20261201-1", "train-20261201-2", "train-20261202-1", "eval-20261201-1"):
        store.create("train" if rid.startswith("train") else "eval", {}, run_id=rid)
    assert store.get("train-20261202").id == "train-20261202-1"
    assert store.get("eval").id == "eval-20261201-1"
    assert store.get(str(store.folder("train-20261201-2"))).id == "train-20261201-2"
    with pytest.raises(TunewiseError) as ambiguous:
        store.get("train-20261201")
    assert "'train-20261201' matches 2 runs: train-20261201-2, train-20261201-1" in str(ambiguous.value)
    with pytest.raises(TunewiseError) as unknown:
        store.get("nope")
    assert "no run 'nope'" in str(unknown.value) and "`tunewise runs`" in unknown.value.hint
    with pytest.raises(TunewiseError, match="no train run 'eval'"):
        store.get("eval", kinds=["train"])


def test_a_resumed_run_keeps_its_kind_and_start(store):
    """A fine-tuning job registers its run as a 'job'; training then registers the same id as 'train'."""
    from tunewise.train import records

    job = store.register("job", {"n_epochs": 3}, run_id="ftjob-abc", name="ft:tiny:abc")
    run_dir = store.folder("ftjob-abc")
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    records.record_start(store.project, "ftjob-abc", run_dir, {"config": {"epochs": 3}}, "v9")
    again = store.get("ftjob-abc")
    assert (again.kind, again.name, again.created_at) == ("job", "ft:tiny:abc", job.created_at)
    assert again.config == {"config": {"epochs": 3}} and again.dataset_versions == ["v9"]
    assert records.find_run_dir(store.project, "ftjob") == run_dir  # `tunewise train --resume` finds it
    store.finish(again, "cancelled", {"error": "interrupted"})
    records.record_start(store.project, "ftjob-abc", run_dir, {"config": {"epochs": 3}}, None)
    resumed = store.get("ftjob-abc")
    assert (resumed.status, resumed.finished_at, resumed.dataset_versions) == ("running", None, ["v9"])


def test_recording_finishes_a_run_by_how_its_body_ended(store):
    with pytest.raises(ValueError, match="bad input"):
        with store.recording("pipeline", {}, run_id="pipeline-1") as rec:
            rec.figures = {"verdict": None}
            raise ValueError("bad input")
    with pytest.raises(KeyboardInterrupt):
        with store.recording("pipeline", {}, run_id="pipeline-2"):
            raise KeyboardInterrupt
    with store.recording("pipeline", {}, run_id="pipeline-3") as rec:
        rec.result["stages"] = {"data": "ran"}
        rec.dataset_versions = ["v1", "v2"]
    failed, cancelled, ok = (store.get(f"pipeline-{i}") for i in (1, 2, 3))
    assert (failed.status, failed.error, failed.figures) == ("failed", "bad input", {"verdict": None})
    assert (cancelled.status, cancelled.error) == ("cancelled", "KeyboardInterrupt")
    assert (ok.status, ok.result["stages"], ok.dataset_versions) == (
        "succeeded",
        {"data": "ran"},
        ["v1", "v2"],
    )
    assert json.loads((ok.path / "result.json").read_text())["status"] == "succeeded"


def test_bad_kinds_and_statuses_are_bugs(store):
    with pytest.raises(ValueError, match="unknown run kind 'training'"):
        store.create("training", {})
    assert not store.project.runs_dir.exists()  # refused before anything was written
    run = store.create("train", {})
    with pytest.raises(ValueError, match="not 'running'"):
        store.finish(run, "running")
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        store.set_status(run, "done")
    store.set_status(run, "failed")
    assert store.get(run.id).status == "failed"


# --- `tunewise runs` on real runs ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_and_evaluated(tmp_path_factory):
    """A LoRA run of the tiny model and an evaluation of two arms, in one scaffolded project."""
    from tests.test_evaluate_run import HELD, SPEC, TRAIN
    from tests.test_train import config, write_chat
    from tunewise.evaluate.run import run_evaluation
    from tunewise.scaffold import scaffold
    from tunewise.spec import parse_spec
    from tunewise.train import run

    tmp_path = tmp_path_factory.mktemp("runs")
    project = scaffold(tmp_path / "p")
    data = write_chat(tmp_path / "train.jsonl", 32, seed=0), write_chat(tmp_path / "eval.jsonl", 12, seed=1)
    trained = run(config(data, epochs=1), project)
    assert trained.status == "succeeded"
    evaluated = run_evaluation(
        parse_spec(SPEC), project, TRAIN, HELD, ["zero-shot"], dataset_version="dv-held"
    )
    return project, trained, evaluated


def test_runs_lists_training_and_evaluation_with_their_figures(trained_and_evaluated, run_cli):
    project, trained, evaluated = trained_and_evaluated
    code, stdout, stderr = run_cli("runs", "--json", cwd=project.root)
    assert code == 0, stderr
    listed = {r["id"]: r for r in json.loads(stdout)}
    assert list(listed) == [evaluated.run_id, trained.run_id]  # newest first

    train = listed[trained.run_id]
    steps = [json.loads(x) for x in (trained.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert (train["kind"], train["status"]) == ("train", "succeeded")
    assert train["figures"] == {
        "steps": trained.steps,
        "train_loss": trained.train_loss_last,
        "validation_loss": trained.eval_after["eval_loss"],
        "tokens": sum(s["tokens"] for s in steps if "loss" in s),
        "seconds": trained.wall_s,
    }
    assert train["path"] == str(trained.run_dir)

    evaluation = listed[evaluated.run_id]
    accuracy = {a["name"]: a["accuracy"]["value"] for a in evaluated.summary["arms"]}
    assert list(accuracy) == ["zero-shot", "zero-shot+scored"]
    assert evaluation["kind"] == "eval" and evaluation["figures"] == {"examples": 3, "accuracy": accuracy}
    assert evaluation["dataset_versions"] == ["dv-held"] and evaluation["name"] == "tiny-sentiment"

    code, stdout, _ = run_cli("runs", "--kind", "train", "--project", project.root)
    assert code == 0 and trained.run_id in stdout and evaluated.run_id not in stdout
    assert f"loss {trained.train_loss_last:.3f}" in stdout
    assert f"validation {trained.eval_after['eval_loss']:.3f}" in stdout
    code, stdout, _ = run_cli("runs", "--project", project.root)
    assert f"zero-shot {accuracy['zero-shot']:.1%}" in stdout and "dv-held" in stdout
    assert f".tunewise/runs/{evaluated.run_id}" in stdout


def test_runs_show_prints_the_folder_and_figures(trained_and_evaluated, run_cli):
    project, trained, evaluated = trained_and_evaluated
    code, stdout, stderr = run_cli("runs", "show", trained.run_id[:-2], "--project", project.root)
    assert code == 0, stderr
    assert f"folder    {trained.run_dir}" in stdout
    assert f"train_loss              {trained.train_loss_last:.4f}" in stdout
    assert "adapter/" in stdout and "metrics.jsonl" in stdout

    code, stdout, _ = run_cli("runs", "show", evaluated.run_id, "--json", "--project", project.root)
    shown = json.loads(stdout)
    # 3 examples: the free arm answers once and samples twice; the scored arm makes one scoring call
    assert shown["model_calls"]["zero-shot"]["calls"] == 3 * 3
    assert shown["model_calls"]["zero-shot+scored"]["calls"] == 3
    assert shown["result"]["summary"] == str(evaluated.run_dir / "summary.json")


def test_unknown_run_ids_and_filters_are_clear_errors(tmp_path, run_cli):
    from tunewise.scaffold import scaffold

    project = scaffold(tmp_path / "p")
    code, _, stderr = run_cli("runs", "show", "train-1999", cwd=project.root)
    assert code == 1 and "error: no run 'train-1999'" in stderr and "tunewise runs" in stderr
    code, _, stderr = run_cli("runs", "--kind", "trian", cwd=project.root)
    assert code == 1 and "unknown --kind 'trian' (did you mean 'train'?)" in stderr
    code, stdout, stderr = run_cli("runs", cwd=project.root)
    assert code == 0 and stdout == "" and "no runs yet" in stderr


def test_a_pipeline_run_is_recorded_with_its_verdict_and_stages(tmp_path, monkeypatch, run_cli):
    """`tunewise run` interrupted, then run again: two pipeline runs (cancelled, succeeded) beside the training
    and evaluation runs its stages made."""
    from tests.test_pipeline import project as make_project
    from tunewise.pipeline.run import STAGES, Pipeline
    from tunewise.spec import load_spec

    project = make_project.__wrapped__(tmp_path)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "_run_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Pipeline(project, load_spec(project.spec_path)).run()
    monkeypatch.undo()
    result = Pipeline(project, load_spec(project.spec_path)).run()

    store = RunStore(project)
    done, stopped = store.list(kind="pipeline")
    assert (stopped.status, stopped.error, stopped.figures) == ("cancelled", "KeyboardInterrupt", {})
    stages = {o.stage: o.status for o in result.outcomes}
    assert stages == {s: "skipped" if STAGES.index(s) < STAGES.index("evaluate") else "ran" for s in STAGES}
    verdict = result.output("verdict").recommendation
    assert done.status == "succeeded" and done.figures == {"verdict": verdict, "stages": stages}
    split = result.output("split")
    assert done.dataset_versions == [split.train.version, split.eval.version]
    assert done.name == load_spec(project.spec_path).task.name
    # The stages' own runs: one training run, the baseline's evaluation and the fine-tuned arm's.
    assert [r.kind for r in store.list(kind="train")] == ["train"]
    assert len(store.list(kind="eval", status="succeeded")) == 2

    code, stdout, _ = run_cli("runs", "--kind", "pipeline", cwd=project.root)
    assert code == 0 and f"verdict: {verdict}" in stdout and "cancelled" in stdout
