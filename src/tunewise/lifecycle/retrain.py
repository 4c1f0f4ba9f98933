"""Gated retraining: old data plus newly labelled traffic, the current model's settings, and a gate.

1. The current model: the run the alias `model` answers with (`registry.aliases.current`), else the newest
   training run that succeeded.
2. The new labelled examples (an imported dataset version, a file imported now, or the newest import) are split
   in two, seeded: half joins the training data, half is the new labelled test sample.
3. The next dataset version is the current run's training data plus that half, recorded with its lineage, and
   checked by the data check (`data.validate.check_files`) against the old held-out set and the new test
   sample as held-out files: an error (leakage among them) stops the retrain.
4. The candidate trains with the current run's config, on the new data.
5. Both models answer the old held-out set and the new test sample (an earlier evaluation of the current model
   on the old set is reused); `lifecycle.gate.decide` decides, the decision and its numbers are recorded, and a
   promotion goes through `registry.aliases.promote`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.lifecycle.gate import GateDecision, decide
from tunewise.lifecycle.lineage import add_lineage
from tunewise.project import Project
from tunewise.registry.db import utc_now
from tunewise.spec import Spec

Narrate = Callable[[str], None]
# (run id, examples, dataset version id) -> per-example correctness, in the examples' order
Evaluate = Callable[[str, list[dict], str], list[bool]]


@dataclass
class Current:
    run_id: str
    how: str  # 'alias <name>' or 'newest training run'


def current_model(project: Project, model: str) -> Current:
    """The training run `model` answers with now (see the module's docstring)."""
    from tunewise.registry.aliases import current
    from tunewise.registry.runs import RunStore

    with project.registry() as registry:
        alias = current(registry, model)
    if alias is not None:
        return Current(alias["run_id"], f"alias {model}")
    runs = [r for r in RunStore(project).list(kind="train") if r.status == "succeeded"]
    if not runs:
        raise TunewiseError(
            f"no model to compare with: the alias '{model}' was never promoted and no training run succeeded",
            hint="train first (`tunewise run` or `tunewise train`), or promote a run with `tunewise promote`",
        )
    return Current(runs[0].id, "newest training run")


def _version_path(project: Project, prefix: str) -> tuple[str, Path]:
    with project.registry() as registry:
        v = registry.dataset_version(prefix)
    if v is None:
        raise TunewiseError(
            f"no single dataset version starts with '{prefix}'",
            hint="list them with `tunewise data versions`",
        )
    return v["id"], Path(v["path"])


def held_out_set(project: Project, spec: Spec, run_id: str) -> tuple[str, list[dict]]:
    """The held-out set the current model was evaluated on (its newest evaluation), else the spec's split."""
    from tunewise.data.load import load_examples, load_spec_split
    from tunewise.data.versions import save_version
    from tunewise.registry.runs import RunStore

    for run in RunStore(project).list(kind="eval"):
        if run.config.get("fine_tuned_run") == run_id and run.status == "succeeded" and run.dataset_versions:
            vid, path = _version_path(project, run.dataset_versions[0])
            if path.is_file():
                return vid, load_examples(path)
    _, held, _ = load_spec_split(project.root, spec)
    vid, _, _ = save_version(
        project, "eval", held, list(spec.data.eval or spec.data.train), {"examples": len(held)}
    )
    return vid, held


def labelled_version(project: Project, with_: str | None) -> tuple[str, Path]:
    """The labelled examples to retrain with: a file (imported now), a dataset version id (prefix), or the
    newest imported labelled traffic."""
    from tunewise.lifecycle.traffic import LABELLED, import_labelled

    if with_ and Path(with_).is_file():
        got = import_labelled(project, Path(with_))
        return got.version, got.path
    if with_:
        return _version_path(project, with_)
    with project.registry() as registry:
        found = [v for v in registry.dataset_versions() if v["name"] == LABELLED]
    if not found:
        raise TunewiseError(
            "no labelled traffic to retrain with",
            hint="export traffic (`tunewise traffic export`), label it, import it (`tunewise traffic import "
            "FILE`), or pass --with FILE",
        )
    return found[0]["id"], Path(found[0]["path"])


def scorer(spec: Spec, project: Project, train_examples: list[dict]) -> Evaluate:
    """Per-example strict correctness of a training run's model (the fine-tuned arm) on a set of examples,
    through the evaluation every other arm goes through."""
    from tunewise.evaluate.run import run_evaluation
    from tunewise.evaluate.scorers import score

    # The gate compares accuracy alone: the scored answer, without the consistency samples.
    spec = spec.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"consistency_samples": 1})}
    )

    def evaluate(run_id: str, examples: list[dict], version: str) -> list[bool]:
        reused = _earlier_records(project, run_id, version)
        if reused is None:
            result = run_evaluation(
                spec,
                project,
                train_examples,
                examples,
                ["fine-tuned"],
                fine_tuned_run=run_id,
                dataset_version=version,
                seed=spec.data.seed,
            )
            reused = result.records
        records = sorted((r for r in reused if r["arm"] == "fine-tuned"), key=lambda r: int(r["id"]))
        return [score(r["output"], r["reference"], spec.contract).correct for r in records]

    return evaluate


def _earlier_records(project: Project, run_id: str, version: str) -> list[dict] | None:
    from tunewise.registry.runs import RunStore

    for run in RunStore(project).list(kind="eval"):
        if (
            run.status == "succeeded"
            and run.config.get("fine_tuned_run") == run_id
            and version in run.dataset_versions
            and "fine-tuned" in run.config.get("arms", [])
            and (run.path / "records.jsonl").is_file()
        ):
            return [json.loads(x) for x in (run.path / "records.jsonl").read_text().splitlines() if x]
    return None


@dataclass
class RetrainResult:
    model: str
    current: str
    candidate: str
    dataset_version: str
    decision: GateDecision
    promoted: bool
    data_warnings: int = 0
    lines: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "current": self.current,
            "candidate": self.candidate,
            "dataset_version": self.dataset_version,
            "promoted": self.promoted,
            "data_warnings": self.data_warnings,
            "gate": self.decision.to_dict(),
        }


def retrain(
    project: Project,
    spec: Spec,
    model: str,
    *,
    with_: str | None = None,
    by: str = "tunewise retrain",
    margin: float = 0.0,
    narrate: Narrate | None = None,
    evaluate: Evaluate | None = None,
    train: Callable[[Any], str] | None = None,
) -> RetrainResult:
    """Retrain `model` with newly labelled examples behind the gate (see the module's docstring). `evaluate`
    and `train` replace the evaluation and the training run (tests script them)."""
    from tunewise.data.load import load_examples
    from tunewise.data.split import split_examples
    from tunewise.data.versions import save_version
    from tunewise.registry.runs import RunStore
    from tunewise.train.config import TrainConfig

    say = narrate or (lambda _msg: None)
    cur = current_model(project, model)
    run = RunStore(project).get(cur.run_id, kinds=("train",))
    config = TrainConfig.from_dict(run.config.get("config", run.config))
    say(f"current model: {cur.run_id} ({cur.how})")

    new_vid, new_path = labelled_version(project, with_)
    labelled = load_examples(new_path)
    # Not stratified by the spec's labels: new traffic may carry answers training never had.
    new_train, new_test = split_examples(labelled, 0.5, seed=spec.data.seed + 2)
    if not new_train or not new_test:
        raise TunewiseError(
            f"{len(labelled)} labelled example(s) cannot be split into a training half and a test half",
            hint="label more traffic (at least 2 examples; a few dozen to measure anything)",
        )
    old_train = [ex for p in config.data for ex in load_examples(Path(p))]
    old_train_vid = config.dataset_version or (run.dataset_versions[0] if run.dataset_versions else None)
    if old_train_vid is None:  # a run trained from files: record them, so the lineage starts there
        old_train_vid, _, _ = save_version(
            project, "train", old_train, list(config.data), {"examples": len(old_train)}
        )
    held_vid, held = held_out_set(project, spec, cur.run_id)
    say(f"new labelled examples: {len(labelled)} ({len(new_train)} to train on, {len(new_test)} to test on)")

    combined = old_train + new_train
    vid, path, _ = save_version(
        project,
        "retrain",
        combined,
        [*config.data, str(new_path)],
        {"examples": len(combined), "old": len(old_train), "new": len(new_train)},
    )
    for parent in (old_train_vid, new_vid):
        if parent:
            add_lineage(project, vid, parent, "retrain", {"model": model, "current_run": cur.run_id})
    test_vid, test_path, _ = save_version(
        project, "labelled-test", new_test, [str(new_path)], {"examples": len(new_test)}
    )
    add_lineage(project, test_vid, new_vid, "retrain-test", {"model": model})
    warnings = _check_data(project, spec, path, held, test_path)
    say(f"next dataset version {vid[:12]}: {len(old_train)} old + {len(new_train)} new examples")

    if train is None:
        train = _trainer(project, say)
    candidate = train(config.model_copy(update={"data": [str(path)], "dataset_version": vid}))
    say(f"candidate: {candidate}")

    evaluate = evaluate or scorer(spec, project, combined)
    current_old = evaluate(cur.run_id, held, held_vid)
    candidate_old = evaluate(candidate, held, held_vid)
    current_new = evaluate(cur.run_id, new_test, test_vid)
    candidate_new = evaluate(candidate, new_test, test_vid)
    decision = decide(
        current_old, candidate_old, current_new, candidate_new, margin=margin, seed=spec.data.seed
    )
    _record(project, model, cur.run_id, candidate, vid, decision)
    if decision.promote:
        from tunewise.registry.aliases import promote

        with project.registry() as registry:
            promote(registry, model, candidate, by=by, reason=decision.why, verdict="fine-tune")
    return RetrainResult(
        model, cur.run_id, candidate, vid, decision, decision.promote, warnings, decision.lines()
    )


def _check_data(project: Project, spec: Spec, train_path: Path, held: list[dict], test_path: Path) -> int:
    """The data check over the next training set with the old held-out set and the new test sample as held-out
    files; raises on errors (leakage among them), returns the number of warnings."""
    from tunewise.data.validate import check_files, options_from_spec
    from tunewise.data.versions import to_jsonl
    from tunewise.fileio import atomic_write_text
    from tunewise.models.tokenizer import ChatTokenizer

    held_path = project.state_dir / "lifecycle" / "old-held-out.jsonl"
    atomic_write_text(held_path, to_jsonl(held))
    tokenizer = ChatTokenizer.for_base(spec.model.base)
    report = check_files(
        [train_path], [held_path, test_path], options_from_spec(spec, tokenizer=tokenizer), tokenizer
    )
    if report.errors:
        first = next(g for g in report.problems.sorted() if g.severity == "error")
        file, line, message = first.first[0]
        raise TunewiseError(
            f"the data check of the retraining set found {report.errors} error(s), e.g. {file}:{line}: {message}",
            hint="labelled traffic that repeats a held-out input leaks it into training: drop those lines and "
            "import again",
        )
    return int(report.warnings)


def _trainer(project: Project, say: Narrate) -> Callable[[Any], str]:
    def train(config: Any) -> str:
        from tunewise.train.loop import run as train_run

        result = train_run(config.model_copy(update={"progress": False}), project, narrate=say)
        if result.status != "succeeded":
            raise TunewiseError(
                f"training run {result.run_id} {result.status}: {result.error}",
                hint=f"see {result.run_dir}/result.json",
            )
        return result.run_id

    return train


def _record(
    project: Project, model: str, current: str, candidate: str, version: str, d: GateDecision
) -> None:
    with project.registry() as registry:
        with registry.transaction() as conn:
            conn.execute(
                "INSERT INTO retrain_decisions (id, created_at, model, current_run, candidate_run,"
                " dataset_version, promoted, rule, figures) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    "gate-" + uuid.uuid4().hex[:16],
                    utc_now(),
                    model,
                    current,
                    candidate,
                    version,
                    int(d.promote),
                    d.text(),
                    json.dumps(d.to_dict()),
                ),
            )
