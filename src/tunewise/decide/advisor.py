"""The advisor, before any data: prompt engineering, RAG, fine-tuning, RAG + fine-tuning, or not yet.

The guide's order is "prompt engineering first, RAG second, fine-tuning third. Each step only makes sense when
the previous one hits a ceiling you can clearly document." `advise()` applies its rules to a short
questionnaire; every reason names the rule and quotes the guide line behind it, and the advice ends with what
to measure next. Unanswered questions never count for fine-tuning: they become things to measure.

Fewer than 10 classes sends an untested prompt back to few-shot first (the guide: a few-shot prompt "often
matches fine-tuned model performance for tasks with fewer than 10 classification categories"), with the number
of examples the few-shot arm uses by default; 10 or more classes need 50 examples per class. The guide's
platform and team rules (`tunewise.decide.rules`: team size, the platforms considered, the model to fine-tune)
are added as reasons, each quoting its source sentence and the date it was true.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from tunewise.decide.rules import Situation, apply_rules, closed_platforms
from tunewise.decide.verdict import BARS
from tunewise.errors import TunewiseError
from tunewise.evaluate.arms import FEW_CLASSES, few_shot_k

Problem = Literal["knowledge", "behaviour", "both"]
Recommendation = Literal["prompt engineering", "RAG", "fine-tuning", "RAG + fine-tuning", "not yet"]

MIN_QUERIES_PER_DAY = 100  # "Avoid fine-tuning when your query volume is under 100 per day"
COMFORTABLE_QUERIES_PER_DAY = 1000  # "enough volume (1,000+ queries per day) to justify hosting costs"
MIN_VALIDATED_EXAMPLES = 200  # "You have 200+ validated training examples"
EXAMPLES_PER_CLASS = (
    50  # "For complex classification tasks with 10+ categories, plan for 50 to 100 examples per category"
)

GUIDE = {
    "problem": "If your problem is 'the model does not know our internal data,' use RAG. If your problem is 'the "
    "model knows what to say but does not say it the way we need,' fine-tuning is the right tool.",
    "facts_change_often": "Avoid fine-tuning when your output requirements change frequently. Retraining is "
    "expensive. (RAG does not require retraining when the data changes.)",
    "format_only": "Prompt engineering is best for format, tone, simple rules.",
    "prompt_tested": "If you have not tested a structured system prompt with few-shot examples first, do that "
    "before spending money on either approach.",
    "prompt_consistency": "Fine-tune only when you can document a specific consistency gap that persists across "
    "100+ prompted generations (use fine-tuning when prompting is inconsistent and you need 95%+).",
    "queries_per_day": "Avoid fine-tuning when your query volume is under 100 per day: the hosting cost per query "
    "becomes prohibitive. (Use it when you have 1,000+ queries per day to justify hosting.)",
    "validated_examples": "Use fine-tuning when you have 200+ validated training examples.",
    "can_judge_quality": "Avoid fine-tuning when you lack someone who can evaluate training data quality. Bad "
    "data produces confidently wrong outputs.",
    "classes": "A well-engineered system prompt with few-shot examples often matches fine-tuned model performance "
    "for tasks with fewer than 10 classification categories or simple format requirements. For complex "
    "classification tasks with 10+ categories, plan for 50 to 100 examples per category.",
    "team_size": "Avoid Azure if your team is under 10 people and the fine-tuned model will handle fewer than "
    "1,000 queries per day. Does that justify $2,000+ in training data preparation and monthly hosting fees for "
    "teams under 25 people?",
}

# The questionnaire, in the order it is asked.
QUESTIONS: dict[str, str] = {
    "problem": "Is the problem missing knowledge (the model does not know your data), wrong behaviour (it knows "
    "but answers in the wrong form, tone or label), or both?",
    "format_only": "Is the problem only the output's format (valid JSON, a label from a fixed set, a pattern)?",
    "facts_change_often": "Do the facts or output requirements change often (monthly or faster)?",
    "prompt_tested": "Have you tested a structured system prompt with few-shot examples?",
    "prompt_consistency": "How consistent was it across 100+ runs (fraction 0-1, e.g. 0.8)?",
    "queries_per_day": "How many queries per day will it serve?",
    "validated_examples": "How many validated input/output examples do you have?",
    "can_judge_quality": "Can someone on the team judge the quality of training data?",
    "classes": "How many classes (labels) can the output take (0 if it is not a classification)?",
    "team_size": "How many people are on the team?",
    "platforms": "Where would you fine-tune and host it (comma-separated: azure-openai, openai, together, vertex, "
    "bedrock, hf-autotrain, self-hosted; blank if undecided)?",
}


@dataclass
class Answers:
    problem: Problem | None = None
    format_only: bool | None = None
    facts_change_often: bool | None = None
    prompt_tested: bool | None = None
    prompt_consistency: float | None = None  # a fraction, 0-1
    queries_per_day: float | None = None
    validated_examples: int | None = None
    can_judge_quality: bool | None = None
    classes: int | None = None  # labels the output can take; 0: not a classification
    team_size: int | None = None
    platforms: list[str] | None = None  # where it would be fine-tuned and hosted; [] undecided
    model: str | None = None  # the model to fine-tune, when chosen

    def __post_init__(self) -> None:
        if self.problem is not None and self.problem not in ("knowledge", "behaviour", "both"):
            raise TunewiseError(f"problem must be knowledge, behaviour or both (got '{self.problem}')")
        if self.prompt_consistency is not None and not 0 <= self.prompt_consistency <= 1:
            raise TunewiseError(
                f"prompt consistency must be a fraction from 0 to 1 (got {self.prompt_consistency})",
                hint="write 0.8 for 80%",
            )
        if self.queries_per_day is not None and self.queries_per_day < 0:
            raise TunewiseError(f"queries per day cannot be negative (got {self.queries_per_day})")
        if self.validated_examples is not None and self.validated_examples < 0:
            raise TunewiseError(f"validated examples cannot be negative (got {self.validated_examples})")
        if self.classes is not None and self.classes < 0:
            raise TunewiseError(
                f"classes cannot be negative (got {self.classes})", hint="0: not a classification"
            )
        if self.team_size is not None and self.team_size < 1:
            raise TunewiseError(f"team size must be at least 1 (got {self.team_size})")

    def missing(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is None]


@dataclass
class Reason:
    rule: str  # the question it rests on
    guide: str  # the guide's rule behind it
    answer: Any
    effect: str  # what it does to the recommendation
    favours_fine_tuning: bool | None  # None: unanswered or neutral


@dataclass
class Advice:
    recommendation: Recommendation
    reasons: list[Reason]
    measure_next: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # the tunewise commands that measure the advice

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The retrieval arms measured beside the closed-book ones: the verdict then applies the guide's order.
RAG_ARMS = "zero-shot,rag,fine-tuned,rag+fine-tuned"


def rag_commands() -> list[str]:
    """The commands that measure retrieval against prompting and fine-tuning on the same held-out set.

    >>> rag_commands()[0]
    'tunewise demo --task knowledge   # see it work first: generated documents about a fictional company'
    """
    return [
        "tunewise demo --task knowledge   # see it work first: generated documents about a fictional company",
        "then add your documents to tunewise.yaml: knowledge: {docs: docs/}   (Markdown, text, HTML)",
        "tunewise eval --arms zero-shot,rag   # prompting vs RAG on the same held-out set, no training",
        f"tunewise run   # with evaluation.arms: [{RAG_ARMS.replace(',', ', ')}]: all four arms, then the "
        "three-way verdict",
    ]


def advise(answers: Answers) -> Advice:
    """Apply the guide's rules to the answers.

    >>> advise(Answers(problem="knowledge")).recommendation
    'RAG'
    >>> advise(Answers(problem="behaviour", prompt_tested=False)).recommendation
    'prompt engineering'
    >>> advise(Answers(problem="behaviour", format_only=False, facts_change_often=False, prompt_tested=True,
    ...     prompt_consistency=0.8, queries_per_day=2000, validated_examples=400, can_judge_quality=True)).recommendation
    'fine-tuning'
    """
    a = answers
    reasons: list[Reason] = []
    measure: list[str] = []
    prompting_first = False  # a rule says the prompt stage is not exhausted, or fine-tuning cannot pay
    not_ready = False  # fine-tuning would fit but the team cannot do it well yet
    unknown = False

    def add(rule: str, effect: str, favours: bool | None) -> None:
        reasons.append(Reason(rule, GUIDE[rule], getattr(a, rule), effect, favours))

    # What kind of problem is it?
    needs_rag = a.problem in ("knowledge", "both")
    if a.problem is None:
        add("problem", "unanswered: no approach can be chosen", None)
        measure.append(
            "Label 20-50 failing outputs: missing facts (knowledge) or wrong form, tone or label (behaviour)?"
        )
        return Advice("not yet", reasons, measure)
    if a.problem == "knowledge":
        add(
            "problem",
            "knowledge problem: RAG, not fine-tuning (fine-tuning does not teach facts reliably)",
            False,
        )
        measure.append(
            "Build retrieval over your documents and measure answer accuracy and unsupported content on 100+ held-out questions"
        )
        return Advice("RAG", reasons, measure, rag_commands())
    add(
        "problem",
        "behaviour problem: fine-tuning is the right tool once prompting hits a documented ceiling"
        + (" (knowledge part: RAG)" if needs_rag else ""),
        True,
    )
    if needs_rag:
        measure.append("Serve the knowledge part through retrieval; fine-tuning only shapes the behaviour")

    # Rules that send the team back to prompting (or retrieval) first.
    if a.format_only:
        add(
            "format_only",
            "format-only problem: try constrained decoding first (a grammar, JSON schema or label set "
            "guarantees the form with no training)",
            False,
        )
        measure.append(
            "Try constrained decoding first (label set, JSON schema or regex) and measure format compliance: "
            "it should reach 100% without training. `tunewise eval` runs each prompted arm with label scoring "
            "(ARM+scored) or schema-constrained decoding (ARM+constrained) beside it; `tunewise serve` applies "
            "the same constraint per request (response_format with a JSON Schema)"
        )
        prompting_first = True
    elif a.format_only is None:
        # Optional question: unanswered, it neither blocks nor supports (the other rules still apply).
        add("format_only", "unanswered", None)
    else:
        add(
            "format_only",
            "more than format: constrained decoding alone will not fix it (it still guarantees the form: "
            "compare fine-tuning against the constrained prompted arm, not the free one)",
            True,
        )

    if a.facts_change_often:
        add(
            "facts_change_often",
            "requirements change often: every change would need a retraining; keep them in the "
            "prompt or in retrieval",
            False,
        )
        measure.append(
            "Move the changing facts and rules into retrieval or the prompt; fine-tune only behaviour that stays stable for a quarter"
        )
        prompting_first = True
    elif a.facts_change_often is None:
        add("facts_change_often", "unanswered", None)
        unknown = True
    else:
        add("facts_change_often", "stable requirements: a quarterly retraining cadence is enough", True)

    if a.prompt_tested is False:
        add("prompt_tested", "no structured few-shot prompt tested yet: do that first", False)
        measure.append(
            "Write a structured system prompt with 5-10 few-shot examples and measure accuracy and consistency "
            "on 100+ held-out inputs (the few-shot arm of the evaluation)"
        )
        prompting_first = True
    elif a.prompt_tested is None:
        add("prompt_tested", "unanswered", None)
        measure.append("Test a structured system prompt with 5-10 few-shot examples")
        unknown = True
    else:
        add("prompt_tested", "a structured few-shot prompt was tested", True)
        c = a.prompt_consistency
        if c is None:
            reasons.append(
                Reason(
                    "prompt_consistency",
                    GUIDE["prompt_consistency"],
                    None,
                    "unanswered: the ceiling is not documented",
                    None,
                )
            )
            measure.append(
                "Measure the prompt's consistency across 100+ generations: is there a gap below 95%?"
            )
            unknown = True
        elif c >= BARS.consistency:
            reasons.append(
                Reason(
                    "prompt_consistency",
                    GUIDE["prompt_consistency"],
                    c,
                    f"the prompt already reaches {100 * c:.0f}% (>= 95%): no consistency gap for fine-tuning to close",
                    False,
                )
            )
            measure.append("Keep the prompt; re-measure consistency as inputs drift")
            prompting_first = True
        else:
            reasons.append(
                Reason(
                    "prompt_consistency",
                    GUIDE["prompt_consistency"],
                    c,
                    f"documented ceiling: {100 * c:.0f}% < 95%",
                    True,
                )
            )

    # "Fewer than 10 classes": few-shot often matches fine-tuning, so it comes first.
    n_classes = a.classes or 0
    k = few_shot_k("auto", n_classes)
    if 0 < n_classes < FEW_CLASSES:
        if a.prompt_tested is not True:
            add(
                "classes",
                f"{n_classes} classes (fewer than {FEW_CLASSES}): a structured prompt with few-shot examples often "
                "matches fine-tuning here: try it first",
                False,
            )
            measure.insert(
                0,
                f"Try few-shot first: a structured system prompt with {k} examples ({k // n_classes} per class), "
                "measured on 100+ held-out inputs (the few-shot arm; `evaluation.few_shot_k: auto` picks them)",
            )
            prompting_first = True
        else:
            add(
                "classes",
                f"{n_classes} classes (fewer than {FEW_CLASSES}): few-shot often matches fine-tuning, so only the "
                "tested prompt's documented ceiling justifies training",
                None,
            )

    q = a.queries_per_day
    if q is None:
        add("queries_per_day", "unanswered: hosting may not pay", None)
        measure.append("Estimate queries per day and run `tunewise cost` at that volume")
        unknown = True
    elif q < MIN_QUERIES_PER_DAY:
        add(
            "queries_per_day",
            f"{q:g} queries/day < 100: hosting a fine-tuned model costs more per query than a long prompt",
            False,
        )
        measure.append("Run `tunewise cost` at your volume: below 100 queries/day hosting dominates the bill")
        prompting_first = True
    elif q < COMFORTABLE_QUERIES_PER_DAY:
        add(
            "queries_per_day",
            f"{q:g} queries/day: between 100 and 1,000, it depends on the platform's hosting "
            "(the worked example in docs/guide.md breaks even at 680/day on Azure, 83/day on Together)",
            True,
        )
        measure.append(
            f"Run `tunewise cost --queries-per-day {q:g}` with your per-query costs to find the platforms that break even"
        )
    else:
        add("queries_per_day", f"{q:g} queries/day >= 1,000: enough volume to justify hosting", True)

    # Rules that say "not yet": fine-tuning could fit, but the data would not be good enough.
    n = a.validated_examples
    if n is None:
        add("validated_examples", "unanswered", None)
        measure.append(
            "Count the validated examples you have (200-500 high-quality examples is the range of the practitioner's guide, docs/guide.md)"
        )
        unknown = True
    elif n < MIN_VALIDATED_EXAMPLES:
        add("validated_examples", f"{n} validated examples < 200", False)
        measure.append(
            f"Collect and validate at least {MIN_VALIDATED_EXAMPLES - n} more examples (200-500 high-quality ones; quality beats quantity)"
        )
        not_ready = True
    elif n_classes >= FEW_CLASSES and n < EXAMPLES_PER_CLASS * n_classes:
        need = EXAMPLES_PER_CLASS * n_classes
        add(
            "classes",
            f"{n_classes} classes: {n} validated examples < {need} (50 per class, the low end of the guide's "
            "50-100)",
            False,
        )
        measure.append(f"Collect and validate at least {need - n} more examples, 50 to 100 per class")
        not_ready = True
    else:
        add("validated_examples", f"{n} validated examples >= 200", True)

    if a.can_judge_quality is False:
        add(
            "can_judge_quality",
            "nobody can judge the training data: bad data produces confidently wrong outputs",
            False,
        )
        measure.append(
            "Find a reviewer who knows the task and the expected output quality before collecting data"
        )
        not_ready = True
    elif a.can_judge_quality is None:
        add("can_judge_quality", "unanswered", None)
        unknown = True
    else:
        add("can_judge_quality", "someone can judge data quality", True)

    _platform_and_team_rules(a, reasons, measure)

    if prompting_first:
        recommendation: Recommendation = "RAG" if needs_rag else "prompt engineering"
    elif not_ready or unknown:
        recommendation = "not yet"
    else:
        recommendation = "RAG + fine-tuning" if needs_rag else "fine-tuning"
        measure.append(
            "Train, evaluate against the best prompted arm on the same held-out set, then run `tunewise decide`: "
            "fine-tuning must show a significant gain, 85%+ accuracy, 95%+ consistency and pay at your volume"
        )
    commands = rag_commands() if recommendation in ("RAG", "RAG + fine-tuning") else []
    return Advice(recommendation, reasons, list(dict.fromkeys(measure)), commands)


def _platform_and_team_rules(a: Answers, reasons: list[Reason], measure: list[str]) -> None:
    """The guide's platform and team rules (`tunewise.decide.rules`) as reasons: a warning or a closed platform
    counts against fine-tuning; none of them changes the recommendation (they say where and at what cost, not
    whether). The volume rule under 100 queries/day is the `queries_per_day` question's own."""
    hourly: dict[str, float] = {}
    if a.platforms:
        from tunewise.decide.rules import hourly_hosting
        from tunewise.economics.pricing import load_builtin

        hourly = hourly_hosting(a.platforms, load_builtin())
    situation = Situation(a.team_size, a.queries_per_day, tuple(a.platforms or ()), a.model, hourly)
    findings = [f for f in apply_rules(situation) if f.rule != "low-volume" and f.fires]
    if a.team_size is None:
        reasons.append(
            Reason("team_size", GUIDE["team_size"], None, "unanswered: the team rules are undecided", None)
        )
    elif not any(f.rule in ("azure-small-team", "small-team") for f in findings):
        reasons.append(
            Reason(
                "team_size",
                GUIDE["team_size"],
                a.team_size,
                f"a team of {a.team_size}: no team rule applies",
                True,
            )
        )
    for f in findings:
        answer = {
            "team_size": a.team_size,
            "queries_per_day": a.queries_per_day,
            "platforms": a.platforms,
            "model": a.model,
        }
        guide = f'"{f.source}" (true as of {f.as_of})'
        reasons.append(Reason(f.rule, guide, answer, f"{f.detail}: {f.advice}", False))
    closed = closed_platforms(findings)
    if closed:
        left = [p for p in a.platforms or () if p not in closed]
        measure.append(
            "Leave out " + ", ".join(f"{p} ({rule})" for p, rule in closed.items())
            + (f"; price the rest: `tunewise cost --platform {','.join(left)}`" if left
               else "; choose a platform the rules leave open (`tunewise pricing` lists them)")
        )  # fmt: skip


__all__ = ["Advice", "Answers", "QUESTIONS", "RAG_ARMS", "Reason", "advise", "rag_commands"]
