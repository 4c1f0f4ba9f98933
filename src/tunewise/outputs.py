"""What each stage produces, as pydantic models: the producing stage builds and returns them, every consumer
reads them, and the pipeline stores their `model_dump()` and reloads them with `model_validate`.

    DataOutput      the data check: its report file and counts
    SplitOutput     the training and held-out parts, each a dataset version
    BaselineOutput  the prompted arms' evaluation run
    TrainingRun     one training run's result;  TrainOutput  the pipeline's training stage
    EvalSummary     the evaluation summary (arms with 95% intervals, paired differences); EvaluateOutput
    LearningCurve   the fine-tuned arm's accuracy against training examples (nested fractions);  CurveOutput
    CostSummary     the cost report at the stated volume;  EconomicsOutput
    Verdict         the decision rules with their numbers, the bars they used, the best prompted arm;
                    VerdictOutput
    ReportState     everything the report page shows;  ReportOutput

Evaluation and verdict models allow extra keys: a newer stage may add fields an older reader does not need.
Stage outputs forbid them, so a record written by another version of a stage fails validation and the stage
runs again instead of being misread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunewise.errors import ConfigError, TunewiseError

# --- the evaluation summary ----------------------------------------------------------------------------


class Interval(BaseModel):
    """A rate and its 95% interval (Wilson for proportions, bootstrap for means and differences)."""

    model_config = ConfigDict(extra="allow")  # the evaluation adds `n` and the interval's method

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def width(self) -> float | None:
        return None if self.low is None or self.high is None else self.high - self.low


class Latency(BaseModel):
    model_config = ConfigDict(extra="allow")
    p50: float | None = None
    p95: float | None = None


ArmKind = Literal["prompted", "fine-tuned", "endpoint"]


class ArmResult(BaseModel):
    """One arm's measures over the held-out set (None where a measure does not apply to the contract)."""

    model_config = ConfigDict(extra="allow")

    name: str
    kind: ArmKind
    constrained: bool = False
    variant: str = "free"  # free | scored (labels ranked by likelihood) | constrained (constrained decoding)
    n: int | None = None
    accuracy: Interval
    accuracy_lenient: Interval | None = None
    format_compliance: Interval | None = None
    consistency: Interval | None = None
    unsupported_rate: Interval | None = None
    macro_f1: float | None = None
    field_f1: float | None = None
    text_similarity: Interval | None = None
    latency_ms: Latency | None = None
    prompt_tokens: float | None = Field(default=None, ge=0)
    completion_tokens: float | None = Field(default=None, ge=0)
    cost_per_query: float | None = None
    pricing: str | None = None  # an endpoint's pricing catalog entry


class Paired(BaseModel):
    """Arm a minus arm b on the examples both answered, with a paired bootstrap interval."""

    model_config = ConfigDict(extra="allow")

    a: str
    b: str
    metric: str
    diff: float
    low: float
    high: float
    mcnemar_p: float | None = None
    text_similarity_diff: Interval | None = None


class EvalSummary(BaseModel):
    """The evaluation summary: `evaluate.summary.build_summary` makes it, decide, economics and report read it."""

    model_config = ConfigDict(extra="allow")

    task: str = ""
    n_examples: int = Field(ge=0)
    contract: str = "text"
    arms: list[ArmResult] = Field(min_length=1)
    paired: list[Paired] = Field(default_factory=list)
    # Set by an evaluation run: its id, what each arm was, the decoding budget.
    run_id: str | None = None
    arm_info: dict[str, dict[str, Any]] = Field(default_factory=dict)
    max_new_tokens: int | None = None

    def arm(self, name: str) -> ArmResult:
        for a in self.arms:
            if a.name == name:
                return a
        raise TunewiseError(
            f"no arm named '{name}' in the evaluation summary",
            hint=f"arms: {', '.join(a.name for a in self.arms)}",
        )

    def paired_diff(self, a: str, b: str, metric: str = "accuracy") -> Paired | None:
        """The paired comparison a - b, flipping a stored b - a record."""
        for p in self.paired:
            if p.metric != metric:
                continue
            if (p.a, p.b) == (a, b):
                return p
            if (p.a, p.b) == (b, a):
                text = p.text_similarity_diff
                flipped = None
                if text is not None and text.low is not None and text.high is not None:
                    flipped = Interval(value=-text.value, low=-text.high, high=-text.low)
                return Paired(
                    a=a, b=b, metric=metric, diff=-p.diff, low=-p.high, high=-p.low, mcnemar_p=p.mcnemar_p,
                    text_similarity_diff=flipped,
                )  # fmt: skip
        return None


def load_summary(path: str | Path) -> EvalSummary:
    """Read an evaluation summary file; a problem names the file and the field."""
    return _load(
        path, EvalSummary, "no evaluation summary", "run the evaluation stage first, or check the path"
    )


# --- the verdict ---------------------------------------------------------------------------------------


class Bars(BaseModel):
    """The quality bars (values in `decide.verdict.BARS`): accuracy and consistency, which every arm must meet to be
    recommended, and the format compliance under which format is the first thing to fix."""

    accuracy: float = Field(ge=0, le=1)
    consistency: float = Field(ge=0, le=1)
    format: float = Field(ge=0, le=1)


class RuleRecord(BaseModel):
    rule: str
    guide: str  # the published rule behind it
    numbers: dict[str, Any]
    passed: bool | None  # None: not applicable (it neither blocks nor supports)
    detail: str


class Verdict(BaseModel):
    """The decision (fine-tune | keep prompting | use RAG | RAG + fine-tuning | not yet): its sentence, every rule
    with its numbers, the bars and the arms it judged."""

    model_config = ConfigDict(extra="allow")

    # fine-tune | keep prompting (the best prompted arm meets the bars) | use RAG (the retrieval arm meets them and
    # fine-tuning does not earn its place over it) | RAG + fine-tuning (both help) | not yet (no arm is ready)
    recommendation: Literal["fine-tune", "keep prompting", "use RAG", "RAG + fine-tuning", "not yet"]
    headline: str  # "<Recommendation>: <reason>", one sentence
    reason: str = ""  # the headline's reason alone
    fine_tuned_arm: str | None
    best_prompted_arm: str | None
    bars: Bars
    rules: list[RuleRecord]
    cheapest_platform: str | None = None  # the fine-tuned arm's, only when it meets the bars
    cheapest: str = ""  # the cheapest option among the arms that meet the bars, or why none is named
    break_even: dict[str, Any] | None = None
    weakest_point: str = ""
    reasons: list[str] = Field(default_factory=list)
    diagnosis: list[str] = Field(default_factory=list)  # which problem each option fixes
    # The platform and team rules that fired (or are undecided), each with its source sentence and date.
    platform_rules: list[dict[str, Any]] = Field(default_factory=list)
    # The retrieval arms judged (None when the evaluation has none), and the guide's mistakes the verdict names.
    rag_arm: str | None = None
    rag_fine_tuned_arm: str | None = None
    mistakes: list[str] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --- the cost report -----------------------------------------------------------------------------------


class CostOptionRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    per_query: float


class MonthlyRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    option: str
    hosting: float
    training: float
    total: float


class BreakEvenRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    a: str
    b: str
    volume: float | None
    formula: str
    notes: list[str] = Field(default_factory=list)


class CostSummary(BaseModel):
    """`economics.plan.CostReport.to_dict()`, as the economics stage writes it and the report reads it."""

    model_config = ConfigDict(extra="allow")

    queries_per_day: float
    options: list[CostOptionRow]
    monthly: list[MonthlyRow]
    break_even: list[BreakEvenRow]
    cheapest: dict[str, Any]
    skipped: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


# --- the pipeline's stage outputs ----------------------------------------------------------------------


class StageOutput(BaseModel):
    """A pipeline stage's recorded output. `skipped` says why a stage had nothing to do."""

    model_config = ConfigDict(extra="forbid")

    skipped: str | None = None

    def files(self) -> list[Path]:
        """The files this output names (top-level path fields); they must exist for it to be reused."""
        return [v for v in (getattr(self, k) for k in type(self).model_fields) if isinstance(v, Path)]

    def check(self) -> None:
        """Raise when the output cannot be reused: a named file is gone, or its content fails validation."""
        for path in self.files():
            if not path.exists():
                raise FileNotFoundError(path)


class DataOutput(StageOutput):
    report_path: Path
    errors: int = Field(ge=0)
    warnings: int = Field(ge=0)


class DatasetPart(BaseModel):
    """One part of the data recorded as a dataset version."""

    model_config = ConfigDict(extra="forbid")

    version: str
    examples: int = Field(ge=0)
    path: Path | None = None


class SplitOutput(StageOutput):
    how: str
    train: DatasetPart
    eval: DatasetPart
    train_path: Path
    eval_path: Path


class BaselineOutput(StageOutput):
    run_id: str | None = None
    records_path: Path | None = None
    arm_info: dict[str, dict[str, Any]] = Field(default_factory=dict)


class TrainingRun(BaseModel):
    """One training run's result (`train.loop.TrainResult.to_dict()`)."""

    model_config = ConfigDict(extra="allow")

    run_id: str
    run_dir: Path
    status: str
    steps: int = 0
    eval_before: dict[str, float] | None = None
    eval_after: dict[str, float] | None = None
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    output: str | None = None
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def epochs(self) -> int | None:
        """The epochs the run resolved (after `auto`)."""
        return (self.extra.get("resolved") or {}).get("epochs")


class TrainOutput(StageOutput):
    run_id: str | None = None
    run_dir: Path | None = None
    output_path: Path | None = None
    fit: DatasetPart | None = None
    validation: DatasetPart | None = None
    result: TrainingRun | None = None
    rag_run_id: str | None = None  # the run trained with retrieved passages, for rag+fine-tuned


class EvaluateOutput(StageOutput):
    summary_path: Path | None = None
    records_path: Path | None = None
    fine_tuned_eval: str | None = None

    def check(self) -> None:
        super().check()
        if self.summary_path is not None:
            load_summary(self.summary_path)

    def summary(self) -> EvalSummary | None:
        return None if self.summary_path is None else load_summary(self.summary_path)


class CurvePoint(BaseModel):
    """One point of the learning curve: the fine-tuned arm trained on `examples` of the training split."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(gt=0, le=1)
    examples: int = Field(ge=1)
    accuracy: Interval  # Wilson 95% interval over the held-out set
    labels: dict[str, int] = Field(default_factory=dict)  # training examples per label (label contracts)
    train_run: str | None = None
    eval_run: str | None = None
    # This point minus the previous one, on the same held-out examples: paired bootstrap interval and McNemar p.
    gain: Interval | None = None
    gain_p: float | None = None


class LearningCurve(BaseModel):
    """Accuracy against training examples, every point evaluated on the same held-out set with the fine-tuned
    arm's settings; the last point (fraction 1) is the pipeline's own training run."""

    model_config = ConfigDict(extra="forbid")

    arm: str
    held_out: int = Field(ge=1)
    training_examples: int = Field(
        ge=1
    )  # the whole training split, validation slice included: what was labelled
    seed: int = 0
    points: list[CurvePoint] = Field(min_length=1)
    notes: list[str] = Field(default_factory=list)


class CurveOutput(StageOutput):
    curve: LearningCurve | None = None
    plot_png_path: Path | None = None

    def files(self) -> list[Path]:
        # The curve's numbers are the output; a deleted picture must not cost the training runs again.
        return []


class EconomicsOutput(StageOutput):
    economics_path: Path | None = None
    sweep_png_path: Path | None = None
    error: str | None = None  # the costs could not be computed: the verdict says why
    hint: str | None = None

    def check(self) -> None:
        super().check()
        self.costs()

    def costs(self) -> CostSummary | None:
        if self.economics_path is None:
            return None
        return _load(
            self.economics_path, CostSummary, "no cost report", "run `tunewise run --from economics`"
        )


class VerdictOutput(StageOutput):
    verdict_path: Path | None = None
    recommendation: str | None = None

    def check(self) -> None:
        super().check()
        self.verdict()

    def verdict(self) -> Verdict | None:
        if self.verdict_path is None:
            return None
        return _load(self.verdict_path, Verdict, "no verdict", "run `tunewise run --from verdict`")


class ReportOutput(StageOutput):
    html_path: Path
    json_path: Path


STAGE_OUTPUTS: dict[str, type[StageOutput]] = {
    "data": DataOutput,
    "split": SplitOutput,
    "baseline": BaselineOutput,
    "train": TrainOutput,
    "evaluate": EvaluateOutput,
    "curve": CurveOutput,
    "economics": EconomicsOutput,
    "verdict": VerdictOutput,
    "report": ReportOutput,
}


# --- the report's input --------------------------------------------------------------------------------


class ReportState(BaseModel):
    """What the report page shows, assembled from the stages' outputs (`pipeline.state.assemble_state`).

    Sections a stage fills are None until it has run; `data`, `task`, `training` and `economics` are the
    display-ready dicts the report reads. Serialized with `model_dump(mode="json")` it is report.json."""

    model_config = ConfigDict(extra="forbid")

    generated_at: str
    tunewise_version: str
    project: str
    project_path: str
    task: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    training: dict[str, Any] | None = None
    evaluation: EvalSummary | None = None
    economics: dict[str, Any] | None = None
    learning_curve: dict[str, Any] | None = None  # the curve, its reading and the data cost it was read with
    verdict: Verdict | None = None
    # Every held-out example, all arms side by side and scored (`pipeline.state.examples_from_scored`); when
    # there are more than `report.build.MAX_EXAMPLE_CELLS` examples x arms, the first ones, and
    # `examples_records` names the evaluation's file of per-example records that holds them all.
    examples: list[dict[str, Any]] = Field(default_factory=list)
    examples_total: int | None = None  # held-out examples the evaluation scored
    examples_records: str | None = None
    # Older states kept only examples where the arms disagreed, under this name; still read, no longer written.
    disagreements: list[dict[str, Any]] = Field(default_factory=list)
    stage_times: dict[str, float] = Field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------------------


def _load(path: str | Path, model: type[Any], missing: str, hint: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise TunewiseError(f"{missing} at {path}", hint=hint)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), [f"line {exc.lineno}: not valid JSON: {exc.msg}"]) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()
        ]
        raise ConfigError(str(path), problems) from None


__all__ = [
    "STAGE_OUTPUTS",
    "ArmResult",
    "Bars",
    "BaselineOutput",
    "CostSummary",
    "CurveOutput",
    "CurvePoint",
    "DataOutput",
    "DatasetPart",
    "EconomicsOutput",
    "EvalSummary",
    "EvaluateOutput",
    "Interval",
    "Latency",
    "LearningCurve",
    "Paired",
    "ReportOutput",
    "ReportState",
    "RuleRecord",
    "SplitOutput",
    "StageOutput",
    "TrainOutput",
    "TrainingRun",
    "Verdict",
    "VerdictOutput",
    "load_summary",
]
