"""`tunewise run`: every stage in order, each skipped when its inputs are unchanged.

    data      check every file (errors stop the run)
    split     the held-out set: data.eval, or a stratified split of data.train; both recorded as versions
    baseline  the prompted arms on the held-out set
    train     LoRA or full fine-tuning on the training split, less a validation slice that picks the weights
              kept (an interrupted run is resumed)
    evaluate  the fine-tuned arm on the same held-out set, merged with the baseline into one summary
    economics measured tokens x prices: cost per query, monthly cost, break-even per platform
    verdict   the decision rules over quality and cost together
    report    one self-contained HTML page plus JSON

A stage's key hashes what it reads: file contents, the parts of the spec it uses, the outputs of the stages
before it, and the tunewise version. A stage whose key has a succeeded record (and whose files still exist) is
skipped and its recorded output reused, so a second run after a crash or a config change redoes only what
changed. `--from STAGE` forces that stage and every later one; `--only STAGE` runs one stage on the recorded
outputs of the others. Ctrl-C marks the running stage cancelled; the next run continues from it (training
resumes from its last checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunewise import __version__
from tunewise.errors import TunewiseError
from tunewise.pipeline.progress import NullProgress
from tunewise.project import Project, atomic_write_text
from tunewise.spec import Spec

log = logging.getLogger(__name__)

# The validation set carved from the training split (see Pipeline._carve_validation).
MIN_VALIDATION, MAX_VALIDATION = 10, 200

STAGES = ("data", "split", "baseline", "train", "evaluate", "economics", "verdict", "report")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class StageOutcome:
    stage: str
    status: str  # 'ran', 'skipped' (inputs unchanged), 'not needed'
    seconds: float
    output: dict[str, Any]


@dataclass
class PipelineResult:
    outcomes: list[StageOutcome] = field(default_factory=list)

    def output(self, stage: str) -> dict[str, Any]:
        return next((o.output for o in self.outcomes if o.stage == stage), {})


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
        # One display across stages (pipeline/progress.py); narration goes through it so that lines scroll
        # above the live bars instead of tearing them.
        self.progress = progress or NullProgress()
        self.say = narrate or (self.progress.log if progress is not None else log.info)
        self.outputs: dict[str, dict[str, Any]] = {}
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
                        _now(),
                        None if status == "running" else _now(),
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
            if name is not None and name not in STAGES:
                raise TunewiseError(f"unknown stage '{name}'", hint=f"stages: {', '.join(STAGES)}")
        config = {"from": from_stage, "only": only, "spec": self.spec.model_dump(mode="json", by_alias=True)}
        with RunStore(self.project).recording("pipeline", config, name=self.spec.task.name) as record:
            result = self._run_stages(from_stage, only)
            stages = record.result["stages"] = {o.stage: o.status for o in result.outcomes}
            record.figures = pipeline_figures(self.outputs.get("verdict", {}).get("recommendation"), stages)
            split = self.outputs.get("split", {})
            record.dataset_versions = [split.get(part, {}).get("version") for part in ("train", "eval")]
        return result

    def _run_stages(self, from_stage: str | None, only: str | None) -> PipelineResult:
        result = PipelineResult()
        forced = False
        for index, stage in enumerate(STAGES, 1):
            forced = forced or stage == from_stage
            key = _hash(
                {"stage": stage, "version": __version__, "inputs": getattr(self, f"_inputs_{stage}")()}
            )
            self.keys[stage] = key
            recorded = self._recorded(stage, key)
            usable = (
                recorded is not None
                and recorded["status"] == "succeeded"
                and self._still_there(recorded["output"])
            )
            if only is not None and STAGES.index(stage) > STAGES.index(only):
                break  # later stages are left as they are; the next plain run redoes those that read this output
            if only is not None and stage != only:
                if not usable:
                    raise TunewiseError(
                        f"--only {only} needs the output of stage '{stage}', which has not run with these inputs",
                        hint=f"run `tunewise run` (or `tunewise run --from {stage}`) first",
                    )
                self.outputs[stage] = recorded["output"]
                self.seconds[stage] = recorded["seconds"] or 0.0
                continue
            if usable and not forced and only is None:
                self.outputs[stage] = recorded["output"]
                self.seconds[stage] = recorded["seconds"] or 0.0
                self.say(f"[{index}/{len(STAGES)}] {stage}: inputs unchanged, skipped")
                result.outcomes.append(StageOutcome(stage, "skipped", 0.0, recorded["output"]))
                continue
            self.say(f"[{index}/{len(STAGES)}] {stage} ...")
            started = time.perf_counter()
            self._record(stage, key, "running")
            self.progress.begin(index, stage)
            try:
                output = getattr(self, f"_run_{stage}")(recorded)
            except KeyboardInterrupt:
                self._record(stage, key, "cancelled", seconds=time.perf_counter() - started)
                raise
            except BaseException as exc:
                self._record(stage, key, "failed", {"error": str(exc)}, time.perf_counter() - started)
                raise
            finally:
                self.progress.end()
            seconds = time.perf_counter() - started
            self._record(stage, key, "succeeded", output, seconds)
            self.outputs[stage] = output
            self.seconds[stage] = seconds
            status = "not needed" if output.get("skipped") else "ran"
            self.say(
                f"[{index}/{len(STAGES)}] {stage}: done in {seconds:.1f} s"
                + (f" ({output['skipped']})" if output.get("skipped") else "")
            )
            result.outcomes.append(StageOutcome(stage, status, seconds, output))
        return result

    @staticmethod
    def _still_there(output: dict[str, Any]) -> bool:
        """Recorded files must still exist for a skipped stage's output to be reused."""
        paths = [v for k, v in output.items() if k.endswith("_path") and v]
        return all(Path(p).exists() for p in paths)

    # --- stage inputs (what each stage's key hashes) ----------------------------------------------------

    def _files(self, paths: list[str]) -> dict[str, str]:
        out = {}
        for p in paths:
            path = self.project.root / p
            out[p] = _file_hash(path) if path.is_file() else "missing"
        return out

    def _made(self, stage: str) -> str:
        """What an earlier stage produced, as a later stage's key reads it: its key, its output, and the contents
        of the files that output names. The key alone would not do: after `--only baseline` replaced the prompted
        arms' records, a plain run skipped evaluate, and the summary kept merging the old ones."""
        if stage in self._made_hashes:
            return self._made_hashes[stage]
        output = self.outputs.get(stage) or {}
        files = {
            k: _file_hash(Path(v))
            for k, v in output.items()
            if k.endswith("_path") and isinstance(v, str) and Path(v).is_file()
        }
        made = self._made_hashes[stage] = _hash({"key": self.keys[stage], "output": output, "files": files})
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
        prompted = [a for a in self.spec.evaluation.arms if not a.startswith("fine-tuned")]
        return prompted + [e.name for e in self.spec.evaluation.endpoints]

    def _tuned_arms(self) -> list[str]:
        """The fine-tuned arm and any variant of it the spec names (`fine-tuned+scored`)."""
        return [a for a in self.spec.evaluation.arms if a.startswith("fine-tuned")]

    def _inputs_baseline(self) -> Any:
        s = self.spec
        return {
            "split": self._made("split"),
            "arms": self._arms(),
            "system_prompt": s.system_prompt,
            "contract": s.contract.model_dump(by_alias=True),
            "evaluation": s.evaluation.model_dump(),
            "model": s.model.model_dump(),
        }

    def _inputs_train(self) -> Any:
        s = self.spec
        return {
            "split": self._made("split"),
            "model": s.model.model_dump(),
            "method": s.method,
            "hyperparameters": s.hyperparameters.model_dump(),
            "seed": s.data.seed,
            "wanted": bool(self._tuned_arms()),
        }

    def _inputs_evaluate(self) -> Any:
        return {
            "train": self._made("train"),
            "baseline": self._made("baseline"),
            "evaluation": self.spec.evaluation.model_dump(),
            "contract": self.spec.contract.model_dump(by_alias=True),
        }

    def _inputs_economics(self) -> Any:
        e = self.spec.economics
        pricing = self._files([e.pricing_file]) if e.pricing_file else None
        return {"evaluate": self._made("evaluate"), "economics": e.model_dump(), "pricing": pricing}

    def _inputs_verdict(self) -> Any:
        return {"economics": self._made("economics")}

    def _inputs_report(self) -> Any:
        return {"verdict": self._made("verdict"), "task": self.spec.task.model_dump()}

    # --- the stages -------------------------------------------------------------------------------------

    def _state_path(self, name: str) -> Path:
        return self.project.state_dir / "pipeline" / name

    def _run_data(self, recorded: dict | None) -> dict[str, Any]:
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
        return {"report_path": str(path), "errors": report.errors, "warnings": report.warnings}

    def _run_split(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.data.load import load_spec_split
        from tunewise.data.split import interval_half_width
        from tunewise.data.versions import save_version

        s = self.spec
        train, held, how = load_spec_split(self.project.root, s)
        out: dict[str, Any] = {"how": how}
        for name, part, sources in (
            ("train", train, s.data.train),
            ("eval", held, s.data.eval or s.data.train),
        ):
            vid, path, _ = save_version(self.project, name, part, list(sources), {"examples": len(part)})
            out[name] = {"version": vid, "examples": len(part)}
            out[f"{name}_path"] = str(path)
        hw = interval_half_width(len(held), 0.8)
        self.say(
            f"  {len(train)} train / {len(held)} held out ({how}); accuracy near 80% is measured to ±{hw:.1%}"
        )
        return out

    def _load_split(self) -> tuple[list[dict], list[dict]]:
        from tunewise.data.load import load_examples

        split = self.outputs["split"]
        return load_examples(Path(split["train_path"])), load_examples(Path(split["eval_path"]))

    def _run_baseline(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.evaluate.run import run_evaluation

        arms = self._arms()
        if not arms:
            return {"skipped": "no prompted arm in evaluation.arms and no endpoint"}
        train, held = self._load_split()
        result = run_evaluation(
            self.spec,
            self.project,
            train,
            held,
            arms,
            dataset_version=self.outputs["split"]["eval"]["version"],
            narrate=self.say,
            seed=self.spec.data.seed,
        )
        return {
            "run_id": result.run_id,
            "records_path": str(result.run_dir / "records.jsonl"),
            "arm_info": result.summary.get("arm_info", {}),
        }

    def _run_train(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.train.config import TrainConfig
        from tunewise.train.loop import run as train_run

        s = self.spec
        if not self._tuned_arms():
            return {"skipped": "fine-tuned is not in evaluation.arms"}
        hp = s.hyperparameters.model_dump()
        fit, validation = self._carve_validation(hp.pop("validation_fraction"))
        config = TrainConfig(
            data=[fit["path"]],
            eval_data=[validation["path"]] if validation else [],
            base=s.model.base,
            trust_remote_code=s.model.trust_remote_code,
            method=s.method,
            seed=s.data.seed,
            dataset_version=fit["version"],
            progress=False,  # the pipeline's own display shows the steps (on_step below)
            **hp,
        )
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
        return {
            "run_id": result.run_id,
            "run_dir": str(result.run_dir),
            "output_path": result.output,
            "fit": fit,
            "validation": validation,
            "result": result.to_dict(),
        }

    def _carve_validation(self, fraction: float) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Hold `fraction` of the training split out of training as the validation set (at most
        MAX_VALIDATION examples; none when it would be fewer than MIN_VALIDATION).

        Training reports its held-out loss on this set and keeps the weights with the lowest one. Choosing on
        the held-out evaluation set instead would leak: the fine-tuned arm's accuracy would be measured on the
        examples that picked it. Both parts are recorded as dataset versions."""
        from tunewise.data.load import load_examples
        from tunewise.data.split import split_examples
        from tunewise.data.versions import save_version

        split = self.outputs["split"]
        whole = {"path": split["train_path"], **split["train"]}
        train = load_examples(Path(split["train_path"]))
        n_validation = min(MAX_VALIDATION, round(fraction * len(train)))
        if n_validation < MIN_VALIDATION:
            self.say(
                f"  no validation set ({fraction:.0%} of {len(train)} examples is under {MIN_VALIDATION}):"
                " training keeps its last weights"
            )
            return whole, None
        # Another seed than the split's, so the validation set is not the next slice of the split's order.
        fit, validation = split_examples(train, n_validation / len(train), seed=self.spec.data.seed + 1)
        parts: dict[str, dict[str, Any]] = {}
        for name, part in (("fit", fit), ("validation", validation)):
            vid, path, _ = save_version(
                self.project, name, part, [split["train_path"]], {"examples": len(part)}
            )
            parts[name] = {"version": vid, "examples": len(part), "path": str(path)}
        self.say(f"  training on {len(fit)} examples; {len(validation)} held out of training for validation")
        return parts["fit"], parts["validation"]

    def _interrupted_training(self, wanted: dict[str, Any]) -> str | None:
        """A cancelled or crashed training run with exactly this config and a checkpoint: resume it rather than
        start again. Any other difference (a changed hyperparameter, other data) means a new run."""
        registry = self.project.registry()
        try:
            rows = registry.conn.execute(
                "SELECT id, config FROM runs WHERE kind='train' AND status IN ('running', 'cancelled', 'failed')"
                " ORDER BY created_at DESC"
            ).fetchall()
        finally:
            registry.close()
        # The registry holds JSON: compare like with like.
        wanted = json.loads(json.dumps(wanted, default=str))
        for run_id, config in rows:
            asked = json.loads(config or "{}")
            if asked.get("config", asked) != wanted:
                continue
            if any((self.project.runs_dir / run_id / "checkpoints").glob("step-*")):
                return run_id
        return None

    def _run_evaluate(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.evaluate.run import run_evaluation
        from tunewise.evaluate.summary import build_summary

        records: list[dict] = []
        info: dict[str, dict] = {}
        baseline = self.outputs["baseline"]
        if baseline.get("records_path"):
            records += [
                json.loads(line) for line in Path(baseline["records_path"]).read_text().splitlines() if line
            ]
            info.update(baseline.get("arm_info") or {a: {"kind": "prompted"} for a in self._arms()})
        train = self.outputs["train"]
        tuned_run = None
        if train.get("run_id"):
            train_ex, held = self._load_split()
            tuned = run_evaluation(
                self.spec,
                self.project,
                train_ex,
                held,
                self._tuned_arms(),
                fine_tuned_run=train["run_id"],
                dataset_version=self.outputs["split"]["eval"]["version"],
                narrate=self.say,
                seed=self.spec.data.seed,
            )
            records += tuned.records
            info.update(tuned.summary.get("arm_info", {}))
            tuned_run = tuned.run_id
        if not records:
            return {"skipped": "no arm to evaluate"}
        summary = build_summary(
            records,
            self.spec.contract.model_dump(by_alias=True),
            task=self.spec.task.name,
            arm_info=info,
            seed=self.spec.data.seed,
        )
        path = self._state_path("summary.json")
        atomic_write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        records_path = self._state_path("records.jsonl")
        atomic_write_text(records_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for arm in summary["arms"]:
            self.say(
                f"  {arm['name']:<12} accuracy {arm['accuracy']['value']:.1%} "
                f"[{arm['accuracy']['low']:.1%}, {arm['accuracy']['high']:.1%}]"
            )
        return {"summary_path": str(path), "records_path": str(records_path), "fine_tuned_eval": tuned_run}

    def _economics_request(self, summary: dict[str, Any]):
        from tunewise.economics.plan import ArmTokens, CostRequest

        e = self.spec.economics
        arms = [
            ArmTokens(
                a["name"],
                a["kind"],
                a["prompt_tokens"] or 0.0,
                a["completion_tokens"] or 0.0,
                pricing=a.get("pricing"),
            )
            for a in summary["arms"]
        ]
        data = json.loads(Path(self.outputs["data"]["report_path"]).read_text())
        tokens = (data.get("stats") or {}).get("tokens") or {}
        epochs = (
            ((self.outputs["train"].get("result") or {}).get("extra") or {})
            .get("resolved", {})
            .get("epochs", 3)
        )
        return CostRequest(
            queries_per_day=e.queries_per_day,
            platforms=list(e.platforms),
            arms=arms,
            training_tokens=tokens.get("estimated_training_tokens"),
            epochs=epochs,
            retrain_every_days=e.retrain_every_days,
        )

    def _catalog(self):
        from tunewise.economics.pricing import load_catalog

        e = self.spec.economics
        return load_catalog(self.project.root / e.pricing_file if e.pricing_file else None)

    def _run_economics(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.economics.plan import cost_report
        from tunewise.economics.plot import plot_sweep

        evaluate = self.outputs["evaluate"]
        if not evaluate.get("summary_path"):
            return {"skipped": "nothing was evaluated"}
        summary = json.loads(Path(evaluate["summary_path"]).read_text())
        try:
            report = cost_report(self._economics_request(summary), self._catalog())
        except TunewiseError as exc:
            # Not fatal: the verdict says the cost rule could not be checked, and why.
            self.say(f"  costs could not be computed: {exc.message}")
            return {"error": exc.message, "hint": exc.hint}
        payload = report.to_dict()
        path = self._state_path("economics.json")
        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        plots = plot_sweep(
            report.options, self.project.reports_dir / "cost-sweep", self.spec.economics.queries_per_day
        )
        cheapest = payload["cheapest"]
        self.say(
            f"  cheapest at {self.spec.economics.queries_per_day:,.0f} queries/day: {cheapest.get('option', cheapest)}"
        )
        return {"economics_path": str(path), "sweep_png_path": str(plots[0])}

    def _run_verdict(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.decide.verdict import Economics, EvalSummary, decide

        evaluate = self.outputs["evaluate"]
        if not evaluate.get("summary_path"):
            return {"skipped": "nothing was evaluated"}
        raw = json.loads(Path(evaluate["summary_path"]).read_text())
        summary = EvalSummary.model_validate(raw)
        if not any(a.kind == "fine-tuned" for a in summary.arms):
            return {"skipped": "no fine-tuned arm to decide on"}
        if all(a.kind == "fine-tuned" for a in summary.arms):
            return {"skipped": "no prompted arm or endpoint to compare the fine-tuned arm with"}
        e = self.spec.economics
        econ = Economics(
            queries_per_day=e.queries_per_day,
            value_per_accuracy_point=e.value_per_accuracy_point,
            platforms=list(e.platforms),
            retrain_every_days=e.retrain_every_days,
        )
        verdict = decide(summary, econ, self._catalog())
        payload = verdict.to_dict()
        path = self._state_path("verdict.json")
        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        self.say(f"  verdict: {verdict.recommendation}")
        return {"verdict_path": str(path), "recommendation": verdict.recommendation}

    def _run_report(self, recorded: dict | None) -> dict[str, Any]:
        from tunewise.pipeline.state import assemble_state
        from tunewise.report.build import build_report

        state = assemble_state(self)
        html, js = build_report(state, self.project.reports_dir)
        return {"html_path": str(html), "json_path": str(js)}
