"""`tunewise run`: every stage in order, each skipped when its inputs are unchanged.

    data      check every file (errors stop the run)
    split     the held-out set: data.eval, or a stratified split of data.train; both recorded as versions
    baseline  the prompted arms on the held-out set
    train     LoRA or full fine-tuning on the training split, less a validation slice that picks the weights
              kept (an interrupted run is resumed)
    evaluate  the fine-tuned arm on the same held-out set, merged with the baseline into one summary
    curve     (with evaluation.learning_curve or --learning-curve) the fine-tuned arm trained on nested fractions
              of the training examples and evaluated on the same held-out set: accuracy against examples
    economics measured tokens x prices: cost per query, monthly cost, break-even per platform
    verdict   the decision rules over quality and cost together
    report    one self-contained HTML page plus JSON

Each stage returns its typed output (`tunewise.outputs`); the stage record stores its `model_dump()` and a
later run reloads it with validation. A recorded output that no longer validates (written by another version of
tunewise, or naming a file that is gone or changed shape) is not reused: the stage runs again.

A stage's key hashes what it reads: file contents, the parts of the spec it uses, the outputs of the stages
before it, and the tunewise version. A stage whose key has a succeeded record (and whose files still exist) is
skipped and its recorded output reused, so a second run after a crash or a config change redoes only what
changed. `--from STAGE` forces that stage and every later one; `--only STAGE` runs one stage on the recorded
outputs of the others. Ctrl-C marks the running stage cancelled; the next run continues from it (training
resumes from its last checkpoint).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from tunewise import __version__
from tunewise.economics.settings import Economics, economics_settings
from tunewise.errors import TunewiseError
from tunewise.evaluate.arms import is_rag_arm, is_tuned_arm
from tunewise.fileio import atomic_write_text, sha256_file
from tunewise.outputs import (
    STAGE_OUTPUTS,
    BaselineOutput,
    CurveOutput,
    CurvePoint,
    DataOutput,
    DatasetPart,
    EconomicsOutput,
    EvalSummary,
    EvaluateOutput,
    Interval,
    LearningCurve,
    ReportOutput,
    SplitOutput,
    StageOutput,
    TrainingRun,
    TrainOutput,
    VerdictOutput,
)
from tunewise.pipeline.progress import NullProgress
from tunewise.project import Project
from tunewise.registry.db import utc_now
from tunewise.spec import Spec

if TYPE_CHECKING:
    from tunewise.train.loop import TrainResult

log = logging.getLogger(__name__)

# The validation set carved from the training split (see Pipeline._carve_validation).
MIN_VALIDATION, MAX_VALIDATION = 10, 200


def cheapest_meeting_bars(report: Any, summary: EvalSummary) -> str:
    """The economics stage's cheapest line: the cheapest option at the stated volume among the arms that meet the
    quality bars (`decide.verdict.meets_bars`), never one that misses them.

    `report` is an `economics.plan.CostReport`."""
    from tunewise.decide.verdict import meets_bars

    met = [a for a in summary.arms if meets_bars(a.model_dump())]
    # Options priced from given per-query costs are named for the kind of arm ("prompted", "fine-tuned"); a name
    # that is also an evaluated arm's (the closed-book "fine-tuned") is that arm, whatever its kind's others did.
    evaluated = {a.name for a in summary.arms}
    kinds = {"fine-tuned" if a.kind == "fine-tuned" else "prompted" for a in met}
    passing = {a.name for a in met} | (kinds - evaluated)
    arm_of = {o.name: o.arm for o in report.options}
    q = report.queries_per_day
    eligible = [m for m in report.monthly if arm_of.get(m.option) in passing]
    if not eligible:
        return f"cheapest at {q:,.0f} queries/day: none named, no option meets the quality bars"
    best = min(eligible, key=lambda m: m.total)
    return f"cheapest at {q:,.0f} queries/day among the options that meet the quality bars: {best.option}"


STAGES = ("data", "split", "baseline", "train", "evaluate", "economics", "verdict", "report")
CURVE = "curve"  # runs after evaluate when the spec asks for a learning curve


def stages_for(spec: Spec) -> tuple[str, ...]:
    """The stages a spec runs: STAGES, with the learning curve after evaluate when the spec asks for one."""
    if not spec.evaluation.learning_curve:
        return STAGES
    at = STAGES.index("evaluate") + 1
    return (*STAGES[:at], CURVE, *STAGES[at:])


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # src/tunewise


@functools.cache
def source_hash(*parts: str, root: Path = PACKAGE_ROOT) -> str:
    """The source of the tunewise modules a cheap stage runs (sub-packages or files under `root`).

    The economics, verdict and report stages hash their own code into their keys, so a change of their rules
    redoes them even where the version string stays the same (an editable install, a development build): a
    recorded verdict is never reused under other rules. The measured stages (baseline, train, evaluate) are
    keyed on the version only, since redoing them costs minutes to hours.
    """
    digest = hashlib.sha256()
    for part in parts:
        path = root / part
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and file.suffix in (".py", ".yaml", ".html"):
                digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:24]


@dataclass
class StageOutcome:
    stage: str
    status: str  # 'ran', 'skipped' (inputs unchanged), 'not needed'
    seconds: float
    output: StageOutput


@dataclass
class PipelineResult:
    outcomes: list[StageOutcome] = field(default_factory=list)

    def output(self, stage: str) -> Any:
        """The stage's output model (`tunewise.outputs.STAGE_OUTPUTS[stage]`), None when it did not run."""
        return next((o.output for o in self.outcomes if o.stage == stage), None)


class Pipeline:
    def __init__(
        self,
        project: Project,
        spec: Spec,
        narrate: Callable[[str], None] | None = None,
        progress: NullProgress | None = None,
    ):
        self.project = project
        self.spec = spec
        self.stages = stages_for(spec)
        # One display across stages (pipeline/progress.py); narration goes through it so that lines scroll
        # above the live bars instead of tearing them.
        self.progress = progress or NullProgress()
        self.say = narrate or (self.progress.log if progress is not None else log.info)
        self.outputs: dict[str, Any] = {}  # stage -> its output model
        self.keys: dict[str, str] = {}
        self._made_hashes: dict[str, str] = {}  # `_made`, once per stage and run: it reads the stage's files
        self.seconds: dict[str, float] = {}

    # --- the stage record -------------------------------------------------------------------------------

    def _recorded(self, stage: str, key: str) -> dict[str, Any] | None:
        registry = self.project.registry()
        try:
            row = registry.conn.execute(
                "SELECT status, output, seconds FROM pipeline_stages WHERE stage=? AND key=?", (stage, key)
            ).fetchone()
        finally:
            registry.close()
        if row is None:
            return None
        return {"status": row[0], "output": json.loads(row[1]) if row[1] else {}, "seconds": row[2]}

    def _reusable(self, stage: str, recorded: dict[str, Any] | None) -> StageOutput | None:
        """The recorded output of a succeeded stage, validated, with its files present; None otherwise.

        A record that fails validation was written by another version of the stage (or its files changed
        shape): it is treated as not usable, so the stage runs again rather than crash a later one."""
        if recorded is None or recorded["status"] != "succeeded":
            return None
        try:
            output = STAGE_OUTPUTS[stage].model_validate(recorded["output"])
            output.check()
        except (ValidationError, TunewiseError, OSError) as exc:
            log.info("stage %s: recorded output not reused: %s", stage, exc)
            self.say(f"  {stage}: its recorded output is from another version or incomplete; not reused")
            return None
        return output

    def _record(
        self, stage: str, key: str, status: str, output: dict | None = None, seconds: float | None = None
    ) -> None:
        registry = self.project.registry()
        try:
            with registry.transaction() as conn:
                conn.execute(
                    "INSERT INTO pipeline_stages (stage, key, status, started_at, finished_at, seconds, output)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(stage, key) DO UPDATE SET status=excluded.status, finished_at=excluded.finished_at,"
                    " seconds=excluded.seconds, output=COALESCE(excluded.output, pipeline_stages.output)",
                    (
                        stage,
                        key,
                        status,
                        utc_now(),
                        None if status == "running" else utc_now(),
                        seconds,
                        json.dumps(output, default=str) if output is not None else None,
                    ),
                )
        finally:
            registry.close()

    # --- running ----------------------------------------------------------------------------------------

    def run(self, from_stage: str | None = None, only: str | None = None) -> PipelineResult:
        """Run the stages, recorded as one run of kind 'pipeline' (its figures: the verdict, each stage's status)."""
        from tunewise.registry.runs import RunStore, pipeline_figures

        for name in (from_stage, only):
            if name == CURVE and CURVE not in self.stages:
                raise TunewiseError(
                    "the curve stage runs only for a learning curve",
                    hint="add --learning-curve, or set evaluation.learning_curve: [0.25, 0.5, 1.0] in the spec",
                )
            if name is not None and name not in self.stages:
                raise TunewiseError(f"unknown stage '{name}'", hint=f"stages: {', '.join(self.stages)}")
        config = {"from": from_stage, "only": only, "spec": self.spec.model_dump(mode="json", by_alias=True)}
        with RunStore(self.project).recording("pipeline", config, name=self.spec.task.name) as record:
            result = self._run_stages(from_stage, only)
            stages = record.result["stages"] = {o.stage: o.status for o in result.outcomes}
            verdict = self.outputs.get("verdict")
            record.figures = pipeline_figures(verdict.recommendation if verdict else None, stages)
            split = self.outputs.get("split")
            if split is not None:
                record.dataset_versions = [split.train.version, split.eval.version]
        return result

    def _run_stages(self, from_stage: str | None, only: str | None) -> PipelineResult:
        result = PipelineResult()
        forced = False
        stages = self.stages
        for index, stage in enumerate(stages, 1):
            forced = forced or stage == from_stage
            key = _hash(
                {"stage": stage, "version": __version__, "inputs": getattr(self, f"_inputs_{stage}")()}
            )
            self.keys[stage] = key
            recorded = self._recorded(stage, key)
            if only is not None and stages.index(stage) > stages.index(only):
                break  # later stages are left as they are; the next plain run redoes those that read this output
            redo = stage == only or (forced and only is None)
            reused = None if redo else self._reusable(stage, recorded)
            if only is not None and stage != only:
                if reused is None:
                    raise TunewiseError(
                        f"--only {only} needs the output of stage '{stage}', which has not run with these inputs",
                        hint=f"run `tunewise run` (or `tunewise run --from {stage}`) first",
                    )
                self.outputs[stage] = reused
                self.seconds[stage] = recorded["seconds"] or 0.0  # type: ignore[index]
                continue
            if reused is not None:
                self.outputs[stage] = reused
                self.seconds[stage] = recorded["seconds"] or 0.0  # type: ignore[index]
                self.say(f"[{index}/{len(stages)}] {stage}: inputs unchanged, skipped")
                result.outcomes.append(StageOutcome(stage, "skipped", 0.0, reused))
                continue
            self.say(f"[{index}/{len(stages)}] {stage} ...")
            started = time.perf_counter()
            self._record(stage, key, "running")
            self.progress.begin(index, stage)
            try:
                output: StageOutput = getattr(self, f"_run_{stage}")()
            except KeyboardInterrupt:
                self._record(stage, key, "cancelled", seconds=time.perf_counter() - started)
                raise
            except BaseException as exc:
                self._record(stage, key, "failed", {"error": str(exc)}, time.perf_counter() - started)
                raise
            finally:
                self.progress.end()
            seconds = time.perf_counter() - started
            self._record(stage, key, "succeeded", output.model_dump(mode="json"), seconds)
            self.outputs[stage] = output
            self.seconds[stage] = seconds
            status = "not needed" if output.skipped else "ran"
            self.say(
                f"[{index}/{len(stages)}] {stage}: done in {seconds:.1f} s"
                + (f" ({output.skipped})" if output.skipped else "")
            )
            result.outcomes.append(StageOutcome(stage, status, seconds, output))
        return result

    # --- stage inputs (what each stage's key hashes) ----------------------------------------------------

    def _files(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for p in paths:
            path = self.project.root / p
            out[p] = sha256_file(path) if path.is_file() else "missing"
        return out

    def _made(self, stage: str) -> str:
        """What an earlier stage produced, as a later stage's key reads it: its key, its output, and the contents
        of the files that output names. The key alone would not do: after `--only baseline` replaced the prompted
        arms' records, a plain run skipped evaluate, and the summary kept merging the old ones."""
        if stage in self._made_hashes:
            return self._made_hashes[stage]
        output = self.outputs.get(stage)
        dumped = output.model_dump(mode="json") if output is not None else {}
        files = {str(p): sha256_file(p) for p in (output.files() if output else []) if p.is_file()}
        made = self._made_hashes[stage] = _hash({"key": self.keys[stage], "output": dumped, "files": files})
        return made

    def _inputs_data(self) -> Any:
        s = self.spec
        return {
            "train": self._files(s.data.train),
            "eval": self._files(s.data.eval),
            "data": s.data.model_dump(),
            "contract": s.contract.model_dump(by_alias=True),
            "base": s.model.base,
        }

    def _inputs_split(self) -> Any:
        return {"data": self._made("data")}

    def _arms(self) -> list[str]:
        """The baseline's arms: the prompted ones the spec names, then every endpoint."""
        prompted = [a for a in self.spec.evaluation.arms if not is_tuned_arm(a)]
        return prompted + [e.name for e in self.spec.evaluation.endpoints]

    def _tuned_arms(self) -> list[str]:
        """The fine-tuned arm and any variant of it the spec names (`fine-tuned+scored`)."""
        return [a for a in self.spec.evaluation.arms if is_tuned_arm(a)]

    @functools.cached_property
    def _knowledge(self) -> Any:
        """The knowledge settings and every document's content: a changed document redoes the rag arms. Read
        once per run: the baseline's and the evaluation's stage keys share it."""
        from tunewise.rag.ingest import resolve

        k = self.spec.knowledge
        if k is None:
            return None
        found, _ = resolve(k.docs, self.project.root)
        return {"settings": k.model_dump(), "docs": {name: sha256_file(path) for name, path in found}}

    def _inputs_baseline(self) -> Any:
        s = self.spec
        return {
            "split": self._made("split"),
            "arms": self._arms(),
            **({"knowledge": self._knowledge} if any(is_rag_arm(a) for a in self._arms()) else {}),
            "system_prompt": s.system_prompt,
            "contract": s.contract.model_dump(by_alias=True),
            "evaluation": self._evaluation_settings(),
            "model": s.model.model_dump(),
        }

    def _evaluation_settings(self) -> dict[str, Any]:
        """The evaluation settings the arms' answers depend on: asking for a learning curve redoes no arm."""
        return self.spec.evaluation.model_dump(exclude={"learning_curve"})

    def _inputs_train(self) -> Any:
        s = self.spec
        return {
            "split": self._made("split"),
            "model": s.model.model_dump(),
            "method": s.method,
            "hyperparameters": s.hyperparameters.model_dump(),
            "seed": s.data.seed,
            "wanted": bool(self._tuned_arms()),
            # rag+fine-tuned trains a second run with passages in its prompts (see _run_train)
            **({"knowledge": self._knowledge} if any(is_rag_arm(a) for a in self._tuned_arms()) else {}),
        }

    def _inputs_evaluate(self) -> Any:
        return {
            "train": self._made("train"),
            "baseline": self._made("baseline"),
            "evaluation": self._evaluation_settings(),
            "contract": self.spec.contract.model_dump(by_alias=True),
        }

    def _inputs_curve(self) -> Any:
        s = self.spec
        evaluate = self.outputs.get("evaluate")
        return {
            "split": self._made("split"),
            # The main training run and its evaluation are the curve's last point; the prompted arms are not read.
            "train": self._made("train"),
            "fine_tuned_eval": evaluate.fine_tuned_eval if evaluate is not None else None,
            "fractions": s.evaluation.learning_curve,
            "model": s.model.model_dump(),
            "method": s.method,
            "hyperparameters": s.hyperparameters.model_dump(),
            "seed": s.data.seed,
            "evaluation": self.spec.evaluation.model_dump(exclude={"learning_curve", "arms", "endpoints"}),
            "contract": s.contract.model_dump(by_alias=True),
        }

    def _curve_made(self) -> str | None:
        return self._made(CURVE) if CURVE in self.stages else None

    def _inputs_economics(self) -> Any:
        e = self.spec.economics
        pricing = self._files([e.pricing_file]) if e.pricing_file else None
        return {
            "evaluate": self._made("evaluate"),
            "economics": e.model_dump(),
            "pricing": pricing,
            "code": source_hash("economics", "outputs.py"),
        }

    def _inputs_verdict(self) -> Any:
        return {
            "economics": self._made("economics"),
            "curve": self._curve_made(),
            "code": source_hash("decide", "outputs.py", "evaluate/curve.py"),
        }

    def _inputs_report(self) -> Any:
        return {
            "verdict": self._made("verdict"),
            "curve": self._curve_made(),
            "task": self.spec.task.model_dump(),
            "code": source_hash("report", "pipeline/state.py", "outputs.py", "evaluate/curve.py"),
        }

    # --- the stages -------------------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.project.state_dir / "pipeline" / name

    def _run_data(self) -> DataOutput:
        from tunewise.data.validate import check_files, options_from_spec
        from tunewise.models.tokenizer import ChatTokenizer

        s = self.spec
        tokenizer = ChatTokenizer.for_base(s.model.base)
        report = check_files(
            [self.project.root / p for p in s.data.train],
            [self.project.root / p for p in s.data.eval],
            options_from_spec(s, tokenizer=tokenizer),
            tokenizer,
        )
        path = self._state_path("data_report.json")
        atomic_write_text(path, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
        if report.errors:
            first = next(g for g in report.problems.sorted() if g.severity == "error")
            file, line, message = first.first[0]
            raise TunewiseError(
                f"the data check found {report.errors} error(s), e.g. {file}:{line}: {message}",
                hint="run `tunewise data check` for the full report, fix the data, then `tunewise run` again",
            )
        self.say(f"  {report.stats.get('examples', 0)} training examples, {report.warnings} warning(s)")
        return DataOutput(report_path=path, errors=report.errors, warnings=report.warnings)

    def _run_split(self) -> SplitOutput:
        from tunewise.data.load import load_spec_split
        from tunewise.data.split import interval_half_width
        from tunewise.data.versions import save_version

        s = self.spec
        train, held, how = load_spec_split(self.project.root, s)
        parts: dict[str, DatasetPart] = {}
        for name, part, sources in (
            ("train", train, s.data.train),
            ("eval", held, s.data.eval or s.data.train),
        ):
            vid, path, _ = save_version(self.project, name, part, list(sources), {"examples": len(part)})
            parts[name] = DatasetPart(version=vid, examples=len(part), path=path)
        hw = interval_half_width(len(held), 0.8)
        self.say(
            f"  {len(train)} train / {len(held)} held out ({how}); accuracy near 80% is measured to ±{hw:.1%}"
        )
        return SplitOutput(
            how=how,
            train=parts["train"].model_copy(update={"path": None}),
            eval=parts["eval"].model_copy(update={"path": None}),
            train_path=parts["train"].path,
            eval_path=parts["eval"].path,
        )

    def _load_split(self) -> tuple[list[dict], list[dict]]:
        from tunewise.data.load import load_examples

        split: SplitOutput = self.outputs["split"]
        return load_examples(split.train_path), load_examples(split.eval_path)

    def _run_baseline(self) -> BaselineOutput:
        from tunewise.evaluate.run import run_evaluation

        arms = self._arms()
        if not arms:
            return BaselineOutput(skipped="no prompted arm in evaluation.arms and no endpoint")
        train, held = self._load_split()
        result = run_evaluation(
            self.spec,
            self.project,
            train,
            held,
            arms,
            dataset_version=self.outputs["split"].eval.version,
            narrate=self.say,
            seed=self.spec.data.seed,
            progress=self.progress,
        )
        return BaselineOutput(
            run_id=result.run_id,
            records_path=result.run_dir / "records.jsonl",
            arm_info=EvalSummary.model_validate(result.summary).arm_info,
        )

    def _run_train(self) -> TrainOutput:
        """The fine-tuned arms' training: closed-book for `fine-tuned`, with the retrieved passages in every
        training prompt for `rag+fine-tuned` (so the model learns to answer from context); both runs when both
        arms are asked, each evaluated with its own arm. Without a closed-book arm the rag run is the run."""
        tuned = self._tuned_arms()
        if not tuned:
            return TrainOutput(skipped="fine-tuned is not in evaluation.arms")
        fit, validation = self._carve_validation(self.spec.hyperparameters.validation_fraction)
        closed = self._train(fit, validation) if any(not is_rag_arm(a) for a in tuned) else None
        rag = None
        if any(is_rag_arm(a) for a in tuned):
            self.say("  training with retrieved passages in the prompts (the rag+fine-tuned arm)")
            rag = self._train_with_passages(fit, validation)
        result = closed or rag
        assert result is not None
        return TrainOutput(
            run_id=result.run_id,
            run_dir=result.run_dir,
            output_path=result.output,
            fit=fit,
            validation=validation,
            result=TrainingRun.model_validate(result.to_dict()),
            rag_run_id=rag.run_id if rag is not None else None,
        )

    def _train_with_passages(self, fit: DatasetPart, validation: DatasetPart | None) -> TrainResult:
        """Train on copies of `fit` and `validation` whose prompts carry the passages retrieved for each
        question (`train.data.with_retrieved_passages`); the run folder's retrieval.json names the index."""
        from tunewise.data.load import load_examples
        from tunewise.data.versions import save_version
        from tunewise.evaluate.knowledge import PassageCache, open_knowledge
        from tunewise.train.data import with_retrieved_passages

        assert self.spec.knowledge is not None  # the spec refuses a rag arm without it
        cache = PassageCache(
            open_knowledge(self.spec, self.project.root, self.project.state_dir), self.spec.knowledge.top_k
        )
        retrieval = {"index": cache.version, "top_k": cache.k, "retriever": self.spec.knowledge.retriever}
        parts: list[DatasetPart | None] = []
        for name, part in (("fit-rag", fit), ("validation-rag", validation)):
            if part is None or part.path is None:
                parts.append(None)
                continue
            examples = with_retrieved_passages(load_examples(part.path), cache)
            vid, path, _ = save_version(
                self.project, name, examples, [str(part.path)], {"examples": len(examples), **retrieval}
            )
            parts.append(DatasetPart(version=vid, examples=len(examples), path=path))
        assert parts[0] is not None
        result = self._train(parts[0], parts[1])
        atomic_write_text(Path(result.run_dir) / "retrieval.json", json.dumps(retrieval, indent=2) + "\n")
        return result

    def _train(self, fit: DatasetPart, validation: DatasetPart | None) -> TrainResult:
        """One training run of the spec's settings on `fit`, choosing on `validation`; an interrupted run with
        the same config is resumed. Returns the loop's result; a failed run raises."""
        from tunewise.train.loop import run as train_run

        config = self._train_config(fit, validation)
        resume = self._interrupted_training(config.to_dict())
        if resume:
            self.say(f"  resuming the interrupted training run {resume}")

        def on_step(step: int, record: dict[str, Any]) -> None:
            total = record["total_steps"]
            self.progress.update(step, total, f"step {step}/{total}  loss {record['loss']:.3f}")

        result = train_run(
            None if resume else config, self.project, resume=resume, narrate=self.say, on_step=on_step
        )
        if result.status != "succeeded":
            raise TunewiseError(
                f"training run {result.run_id} {result.status}: {result.error}",
                hint=f"see {result.run_dir}/result.json",
            )
        return result

    def _train_config(self, fit: DatasetPart, validation: DatasetPart | None) -> Any:
        from tunewise.train.config import TrainConfig

        return TrainConfig.from_spec(
            self.spec,
            data=[str(fit.path)],
            eval_data=[str(validation.path)] if validation else [],
            dataset_version=fit.version,
            progress=False,  # the pipeline's own display shows the steps (on_step below)
        )

    def _finished_training(self, wanted: dict[str, Any]) -> str | None:
        """A succeeded training run with exactly this config whose weights are still there: the learning curve
        takes it rather than train the same fraction again after an interrupted curve stage."""
        from tunewise.registry.runs import RunStore

        wanted = json.loads(json.dumps(wanted, default=str))
        for run in RunStore(self.project).list(kind="train"):  # newest first
            if run.status != "succeeded" or run.config.get("config", run.config) != wanted:
                continue
            if (run.path / "result.json").is_file():
                output = json.loads((run.path / "result.json").read_text()).get("output")
                if output and Path(output).exists():
                    return run.id
        return None

    def _carve_validation(self, fraction: float) -> tuple[DatasetPart, DatasetPart | None]:
        """Hold `fraction` of the training split out of training as the validation set (at most
        MAX_VALIDATION examples; none when it would be fewer than MIN_VALIDATION).

        Training reports its held-out loss on this set and keeps the weights with the lowest one. Choosing on
        the held-out evaluation set instead would leak: the fine-tuned arm's accuracy would be measured on the
        examples that picked it. Both parts are recorded as dataset versions."""
        from tunewise.data.load import load_examples
        from tunewise.data.split import split_examples
        from tunewise.data.versions import save_version

        split: SplitOutput = self.outputs["split"]
        whole = split.train.model_copy(update={"path": split.train_path})
        train = load_examples(split.train_path)
        n_validation = min(MAX_VALIDATION, round(fraction * len(train)))
        if n_validation < MIN_VALIDATION:
            self.say(
                f"  no validation set ({fraction:.0%} of {len(train)} examples is under {MIN_VALIDATION}):"
                " training keeps its last weights"
            )
            return whole, None
        # Another seed than the split's, so the validation set is not the next slice of the split's order.
        fit, validation = split_examples(train, n_validation / len(train), seed=self.spec.data.seed + 1)
        parts: dict[str, DatasetPart] = {}
        for name, part in (("fit", fit), ("validation", validation)):
            vid, path, _ = save_version(
                self.project, name, part, [str(split.train_path)], {"examples": len(part)}
            )
            parts[name] = DatasetPart(version=vid, examples=len(part), path=path)
        self.say(f"  training on {len(fit)} examples; {len(validation)} held out of training for validation")
        return parts["fit"], parts["validation"]

    def _interrupted_training(self, wanted: dict[str, Any]) -> str | None:
        """A cancelled or crashed training run with exactly this config and a checkpoint: resume it rather than
        start again. Any other difference (a changed hyperparameter, other data) means a new run."""
        from tunewise.registry.runs import RunStore

        runs = RunStore(self.project).list(kind="train")  # newest first
        unfinished = [run for run in runs if run.status in ("running", "cancelled", "failed")]
        # The registry holds JSON: compare like with like.
        wanted = json.loads(json.dumps(wanted, default=str))
        for run in unfinished:
            if run.config.get("config", run.config) != wanted:
                continue
            if any((run.path / "checkpoints").glob("step-*")):
                return run.id
        return None

    def _run_evaluate(self) -> EvaluateOutput:
        from tunewise.evaluate.run import run_evaluation
        from tunewise.evaluate.summary import build_summary

        records: list[dict] = []
        info: dict[str, dict] = {}
        baseline: BaselineOutput = self.outputs["baseline"]
        if baseline.records_path is not None:
            records += [json.loads(line) for line in baseline.records_path.read_text().splitlines() if line]
            info.update(baseline.arm_info or {a: {"kind": "prompted"} for a in self._arms()})
        train: TrainOutput = self.outputs["train"]
        tuned_run = None
        if train.run_id:
            train_ex, held = self._load_split()
            tuned = run_evaluation(
                self.spec,
                self.project,
                train_ex,
                held,
                self._tuned_arms(),
                fine_tuned_run=train.run_id,
                rag_fine_tuned_run=train.rag_run_id,
                dataset_version=self.outputs["split"].eval.version,
                narrate=self.say,
                seed=self.spec.data.seed,
                progress=self.progress,
            )
            records += tuned.records
            info.update(EvalSummary.model_validate(tuned.summary).arm_info)
            tuned_run = tuned.run_id
        if not records:
            return EvaluateOutput(skipped="no arm to evaluate")
        summary = build_summary(
            records,
            self.spec.contract.model_dump(by_alias=True),
            task=self.spec.task.name,
            arm_info=info,
            seed=self.spec.data.seed,
        )
        path = self._state_path("summary.json")
        atomic_write_text(path, json.dumps(summary.model_dump(), indent=2, ensure_ascii=False) + "\n")
        records_path = self._state_path("records.jsonl")
        atomic_write_text(records_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for arm in summary.arms:
            acc = arm.accuracy
            self.say(f"  {arm.name:<12} accuracy {acc.value:.1%} [{acc.low:.1%}, {acc.high:.1%}]")
        return EvaluateOutput(summary_path=path, records_path=records_path, fine_tuned_eval=tuned_run)

    def _run_curve(self) -> CurveOutput:
        """The learning curve: the fine-tuned arm trained on nested, label-stratified fractions of the examples
        the main run trained on (the same validation slice chooses the weights), each evaluated on the same
        held-out set with the fine-tuned arm's settings. Each fraction resolves `auto` hyperparameters for its
        own size, as a project with that many examples would. The whole set is the main run: not trained again.
        """
        from tunewise.data.load import load_examples
        from tunewise.data.versions import save_version
        from tunewise.evaluate.curve import curve_label, nested_subsets, paired_gain
        from tunewise.evaluate.run import run_evaluation
        from tunewise.evaluate.stats import wilson
        from tunewise.evaluate.summary import score_records
        from tunewise.spec import LabelContract

        train: TrainOutput = self.outputs["train"]
        evaluate: EvaluateOutput = self.outputs["evaluate"]
        summary = evaluate.summary()
        if train.run_id is None or train.fit is None or summary is None or evaluate.records_path is None:
            return CurveOutput(skipped="no fine-tuned arm was trained and evaluated")
        tuned = [a for a in summary.arms if a.kind == "fine-tuned"]
        if not tuned:
            return CurveOutput(skipped="no fine-tuned arm was evaluated")
        # The free fine-tuned arm when it ran (a variant is the same weights, decoded otherwise).
        arm = next((a for a in tuned if a.name == "fine-tuned"), tuned[0])
        split: SplitOutput = self.outputs["split"]
        fit_examples = load_examples(train.fit.path) if train.fit.path else load_examples(split.train_path)
        fractions = sorted(set(self.spec.evaluation.learning_curve or []) | {1.0})
        stratify = isinstance(self.spec.contract, LabelContract)
        seed = self.spec.data.seed
        subsets = nested_subsets(fit_examples, fractions, seed, curve_label if stratify else None)
        contract = self.spec.contract.model_dump(by_alias=True)

        def correct_of(records: list[dict]) -> list[bool]:
            rows = sorted(
                (r for r in score_records(records, contract) if r["arm"] == arm.name),
                key=lambda r: int(r["id"]),
            )
            return [bool(r["correct"]) for r in rows]

        main_records = [json.loads(x) for x in evaluate.records_path.read_text().splitlines() if x.strip()]
        train_ex, held = self._load_split()
        # Evaluate only the tracked arm: no variants beside it (they would cost a pass each and plot nothing).
        eval_spec = self.spec.model_copy(deep=True)
        eval_spec.evaluation.constrained = False
        notes: list[str] = []
        points: list[CurvePoint] = []
        correct: list[list[bool]] = []
        done_sizes: set[int] = set()
        for fraction, subset in zip(fractions, subsets, strict=True):
            if len(subset) in done_sizes:
                notes.append(
                    f"fraction {fraction:g} gives {len(subset)} examples, as a smaller one did: skipped"
                )
                continue
            done_sizes.add(len(subset))
            labels: dict[str, int] = {}
            for ex in subset if stratify else []:
                labels[curve_label(ex)] = labels.get(curve_label(ex), 0) + 1
            if fraction == 1.0:
                run_id, eval_run, records = train.run_id, evaluate.fine_tuned_eval, main_records
            else:
                self.say(f"  learning curve: {fraction:g} of the training examples ({len(subset)})")
                vid, path, _ = save_version(
                    self.project,
                    f"curve-{len(subset)}",
                    subset,
                    [str(train.fit.path or split.train_path)],
                    {"examples": len(subset), "fraction": fraction, "seed": seed},
                )
                part = DatasetPart(version=vid, examples=len(subset), path=path)
                run_id = self._finished_training(self._train_config(part, train.validation).to_dict())
                if run_id:
                    self.say(f"  its training run {run_id} finished before: taken as it is")
                else:
                    run_id = self._train(part, train.validation).run_id
                result = run_evaluation(
                    eval_spec,
                    self.project,
                    train_ex,
                    held,
                    [arm.name],
                    fine_tuned_run=run_id,
                    dataset_version=split.eval.version,
                    narrate=self.say,
                    seed=seed,
                )
                eval_run, records = result.run_id, result.records
            right = correct_of(records)
            iv = wilson(sum(right), len(right))
            point = CurvePoint(
                fraction=fraction,
                examples=len(subset),
                accuracy=Interval(value=iv.value, low=iv.low, high=iv.high, n=len(right)),
                labels=labels,
                train_run=run_id,
                eval_run=eval_run,
            )
            if correct and len(correct[-1]) == len(right):
                gain, p = paired_gain(correct[-1], right, seed=seed)
                point = point.model_copy(update={"gain": gain, "gain_p": p})
            self.say(
                f"  {len(subset):>6} examples: {arm.name} accuracy {iv.value:.1%} [{iv.low:.1%}, {iv.high:.1%}]"
            )
            points.append(point)
            correct.append(right)
        curve = LearningCurve(
            arm=arm.name,
            held_out=len(correct[-1]),
            training_examples=split.train.examples,
            seed=seed,
            points=points,
            notes=notes,
        )
        png = self._curve_png(curve)
        return CurveOutput(curve=curve, plot_png_path=png)

    def _curve_png(self, curve: LearningCurve) -> Path | None:
        """The curve's plot as a PNG beside the report (the report page embeds its own SVG)."""
        from tunewise.decide.verdict import BARS
        from tunewise.report.plots import learning_curve_png

        path = self.project.reports_dir / "learning-curve.png"
        try:
            return learning_curve_png(curve.model_dump(mode="json"), BARS.accuracy, path)
        except TunewiseError as exc:  # matplotlib missing: the curve stands without its picture
            self.say(f"  learning curve plot: {exc.message}")
            return None

    def _economics(self) -> Economics:
        """The economics settings of the spec (`economics.settings`, the shape every command uses)."""
        return economics_settings(self.spec.economics, self.project.root)

    def _run_economics(self) -> EconomicsOutput:
        from tunewise.economics.plan import arm_tokens, corpus_tokens, cost_report
        from tunewise.economics.plot import plot_sweep

        summary = self.outputs["evaluate"].summary()
        if summary is None:
            return EconomicsOutput(skipped="nothing was evaluated")
        arms = arm_tokens(summary)  # rag arms also get their passages' extra tokens
        data = json.loads(self.outputs["data"].report_path.read_text())
        tokens = (data.get("stats") or {}).get("tokens") or {}
        run = self.outputs["train"].result
        econ = self._economics()
        econ = econ.model_copy(update={"corpus_tokens": corpus_tokens(summary)})
        training_tokens = tokens.get("estimated_training_tokens")
        try:
            report = cost_report(
                econ.cost_request(
                    arms,
                    training_tokens=training_tokens,
                    epochs=(run.epochs if run else None) or 3,
                    # Platforms that bill training by the hour are priced from the run's measured time.
                    training_hours=(run.wall_s / 3600 if getattr(run, "wall_s", None) else None),
                    **self._rag_training_size(training_tokens),
                ),
                econ.catalog(),
            )
        except TunewiseError as exc:
            # Not fatal: the verdict says the cost rule could not be checked, and why.
            self.say(f"  costs could not be computed: {exc.message}")
            return EconomicsOutput(error=exc.message, hint=exc.hint)
        payload = report.to_dict()
        path = self._state_path("economics.json")
        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        plots = plot_sweep(report.options, self.project.reports_dir / "cost-sweep", econ.queries_per_day)
        self.say(f"  {cheapest_meeting_bars(report, summary)}")
        return EconomicsOutput(economics_path=path, sweep_png_path=plots[0])

    def _rag_training_size(self, training_tokens: float | None) -> dict[str, float]:
        """The run trained with passages, sized for pricing: the closed-book estimate scaled by the two runs'
        measured tokens per epoch (their records' plans), and its own hours. Empty when there was no such run."""
        train = self.outputs["train"]
        if train.rag_run_id is None or train.run_id is None:
            return {}
        from tunewise.registry.runs import RunStore

        store = RunStore(self.project)
        rag, closed = (store.get(i).result or {} for i in (train.rag_run_id, train.run_id))
        size: dict[str, float] = {}
        if rag.get("wall_s"):
            size["rag_training_hours"] = rag["wall_s"] / 3600
        rag_tokens = (rag.get("plan") or {}).get("tokens_per_epoch")
        closed_tokens = (closed.get("plan") or {}).get("tokens_per_epoch")
        if training_tokens and rag_tokens and closed_tokens:
            size["rag_training_tokens"] = training_tokens * rag_tokens / closed_tokens
        return size

    def _run_verdict(self) -> VerdictOutput:
        from tunewise.decide.verdict import decide

        summary = self.outputs["evaluate"].summary()
        if summary is None:
            return VerdictOutput(skipped="nothing was evaluated")
        if not any(a.kind == "fine-tuned" for a in summary.arms):
            return VerdictOutput(skipped="no fine-tuned arm to decide on")
        if all(a.kind == "fine-tuned" for a in summary.arms):
            return VerdictOutput(skipped="no prompted arm or endpoint to compare the fine-tuned arm with")
        econ = self._economics()
        curve_out: CurveOutput | None = self.outputs.get(CURVE)
        verdict = decide(
            summary,
            econ,
            econ.catalog(),
            learning_curve=curve_out.curve if curve_out is not None else None,
            preference=self._preference(summary),
        )
        path = self._state_path("verdict.json")
        atomic_write_text(path, json.dumps(verdict.to_dict(), indent=2) + "\n")
        self.say(f"  verdict: {verdict.recommendation}: {verdict.reason}")
        for rule in verdict.platform_rules:
            if rule["fires"]:
                self.say(f"  platform rule: {rule['detail']}: {rule['advice']} (docs/rules.md)")
        return VerdictOutput(verdict_path=path, recommendation=verdict.recommendation)

    def _preference(self, summary: Any) -> dict[str, Any] | None:
        """The blind preference the verdict reads for a free-text task (see `review.results.preference_for`)."""
        from tunewise.decide.verdict import best_prompted, meets_bars
        from tunewise.review.results import applies_to, preference_for

        records = self.outputs["evaluate"].records_path
        if records is None or not applies_to(self.spec):
            return None
        tuned_arms = [a for a in summary.arms if a.kind == "fine-tuned"]
        tuned = max(tuned_arms, key=lambda a: (meets_bars(a.model_dump()), a.accuracy.value))  # as `decide`
        prompted = best_prompted(summary)
        judge = self.spec.evaluation.judge
        if judge is not None:  # asks only the pairs not judged yet (evaluate/judge.py)
            from tunewise.evaluate.judge import judge_engine, run_judge

            engine, name = judge_engine(self.project, self.spec)
            pair = (tuned.name, prompted.name)
            res = run_judge(
                self.project,
                records.parent.name,
                pair,
                engine,
                name,
                self.spec.task.target,
                judge.rubric,
                self.say,
            )
            self.say(f"  judge {name}: {res.get('reading', '')}")
        return preference_for(
            self.project, records.parent.name, tuned.name, prompted.name, self.spec.contract
        )

    def _run_report(self) -> ReportOutput:
        from tunewise.pipeline.state import assemble_state
        from tunewise.report.build import build_report

        state = assemble_state(self)
        html, js = build_report(state.model_dump(mode="json"), self.project.reports_dir)
        return ReportOutput(html_path=html, json_path=js)
