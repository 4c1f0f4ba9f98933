"""The verdict, after evaluation: does fine-tuning pay, and is that proven?

Reads an evaluation summary (the evaluation stage writes it) and applies the guide's rules, every one returned
as a record with the numbers it used:

1. significant gain   the fine-tuned arm beats the best prompted arm (constrained variants included) on
                      accuracy, and the paired interval excludes zero ("if you cannot quantify the improvement
                      over the base model plus a good system prompt, you cannot justify the cost"). A JSON
                      contract with free-text fields has two measures, structured accuracy and the fields'
                      ROUGE-L: a gain on either counts when neither is significantly worse.
2. accuracy bar       task accuracy >= 85% ("below 85% means data or task definition needs work")
3. consistency bar    consistency >= 95% ("target 95%+")
4. unsupported rate   not above the best prompted arm's ("should not increase vs. base model")
5. cost              the fine-tuned option's monthly cost at the stated volume is lower, or the stated value of
                      the gain covers the difference ("a fine-tuned model that scores 92% accuracy but costs
                      $0.45 per query is worse than a prompted model at 89% accuracy and $0.03 per query")

Fine-tuning is recommended only when every rule passes. The verdict also names the cheapest platform, the
break-even volume and the weakest point of the evidence, and diagnoses which problem each option fixes
(`diagnose`): a constrained or scored variant that lifts format compliance but not accuracy fixed a format
problem, which needs no training; fine-tuning must then win on task accuracy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunewise.economics.cost import break_even, monthly_cost
from tunewise.economics.plan import ArmTokens, build_options
from tunewise.economics.pricing import Catalog
from tunewise.economics.settings import Economics
from tunewise.errors import TunewiseError
from tunewise.outputs import ArmResult, Bars, EvalSummary, Paired, RuleRecord, Verdict

# The quality bars of "How to Measure Fine-Tuning Success", defined once: the verdict applies them, records them
# in its output, and the report reads them from there.
BARS = Bars(
    accuracy=0.85,  # "Task Accuracy ... Below 85% means data or task definition needs work"
    consistency=0.95,  # "Consistency Rate ... Target 95%+"
    format=0.95,  # "95%+ format compliance": at or above it, format is not the problem
)
SMALL_EVAL_SET = 100  # a consistency gap "that persists across 100+ prompted generations"
WIDE_INTERVAL = 0.10  # a 95% interval wider than 10 accuracy points cannot separate close arms

# --- the rules ------------------------------------------------------------------------------------------


def _rule(rule: str, guide: str, numbers: dict[str, Any], passed: bool | None, detail: str) -> RuleRecord:
    return RuleRecord(rule=rule, guide=guide, numbers=numbers, passed=passed, detail=detail)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def prompted_strength(arm: Mapping[str, Any]) -> tuple[float, ...]:
    """How strong a prompted arm is, as a sort key: accuracy, then (to break ties, e.g. when every prompted arm
    scores 0% exact) lenient accuracy, field/macro F1, format compliance and consistency; -1 where unmeasured.

    >>> prompted_strength({"accuracy": {"value": 0.5}, "accuracy_lenient": {"value": 0.7}, "macro_f1": 0.6})
    (0.5, 0.7, 0.6, -1.0, -1.0)
    """

    def value(key: str) -> float:
        iv = arm.get(key)
        v = iv.get("value") if isinstance(iv, Mapping) else None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else -1.0

    f1 = arm.get("field_f1") if arm.get("field_f1") is not None else arm.get("macro_f1")
    return (
        value("accuracy"),
        value("accuracy_lenient"),
        float(f1) if isinstance(f1, (int, float)) else -1.0,
        value("format_compliance"),
        value("consistency"),
    )


def best_prompted_arm(arms: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The strongest arm that is not fine-tuned (constrained variants and endpoints included), by
    `prompted_strength`; None when every arm is fine-tuned. Comparing against a weaker arm than the best would
    flatter fine-tuning.

    >>> best_prompted_arm([{"name": "a", "kind": "prompted", "accuracy": {"value": 0.6}, "consistency": {"value": 1}},
    ...                    {"name": "b", "kind": "prompted", "accuracy": {"value": 0.6}, "macro_f1": 0.5},
    ...                    {"name": "ft", "kind": "fine-tuned", "accuracy": {"value": 0.9}}])["name"]
    'b'
    """
    prompted = [a for a in arms if a.get("kind") != "fine-tuned"]
    return max(prompted, key=prompted_strength) if prompted else None


def best_prompted(summary: EvalSummary) -> ArmResult:
    """The summary's best prompted arm (`best_prompted_arm`)."""
    best = best_prompted_arm([a.model_dump() for a in summary.arms])
    if best is None:
        raise TunewiseError(
            "the evaluation has no prompted arm",
            hint="evaluate at least one prompted arm: the verdict compares against it",
        )
    return summary.arm(best["name"])


def _cost_options(tuned: ArmResult, prompted: ArmResult, econ: Economics, catalog: Catalog):
    """(prompted options, fine-tuned options, skipped reasons) priced from given costs or measured tokens."""
    if econ.prompted_cost is not None or econ.tuned_cost is not None:
        if econ.prompted_cost is None or econ.tuned_cost is None:
            raise TunewiseError(
                "give both --prompted-cost and --tuned-cost, or neither (then measured tokens are priced)"
            )
        request = econ.cost_request()
    else:
        request = econ.cost_request(
            arms=[
                ArmTokens(
                    a.name, a.kind, a.prompt_tokens or 0.0, a.completion_tokens or 0.0, pricing=a.pricing
                )
                for a in (prompted, tuned)
            ]
        )
    options, skipped, _ = build_options(request, catalog)
    tuned_opts = [o for o in options if o.arm in ("fine-tuned", tuned.name)]
    prompted_opts = [o for o in options if o not in tuned_opts]
    return prompted_opts, tuned_opts, skipped


def decide(summary: EvalSummary, econ: Economics, catalog: Catalog, fine_tuned: str | None = None) -> Verdict:
    """Apply the verdict rules; fine-tuning is recommended only when every applicable rule passes."""
    tuned_arms = [a for a in summary.arms if a.kind == "fine-tuned"]
    if fine_tuned is not None:
        tuned = summary.arm(fine_tuned)
    elif tuned_arms:
        tuned = max(tuned_arms, key=lambda a: a.accuracy.value)
    else:
        raise TunewiseError(
            "the evaluation has no fine-tuned arm",
            hint="train and evaluate a fine-tuned arm, or keep prompting",
        )
    prompted = best_prompted(summary)
    rules: list[RuleRecord] = []

    # 1. A significant gain over the best prompted arm.
    paired = summary.paired_diff(tuned.name, prompted.name, "accuracy")
    if paired is None:
        rules.append(
            _rule(
                "significant gain",
                "quantify the improvement over the base model plus a good system prompt",
                {"fine_tuned": tuned.name, "best_prompted": prompted.name},
                False,
                f"no paired accuracy comparison of {tuned.name} vs {prompted.name} in the summary: the gain is unproven",
            )
        )
    else:
        rules.append(_gain_rule(paired, tuned.name, prompted.name))

    # 2. The accuracy bar.
    acc = tuned.accuracy.value
    rules.append(
        _rule(
            "accuracy bar",
            "task accuracy below 85% means data or task definition needs work",
            {"accuracy": acc, "bar": BARS.accuracy},
            acc >= BARS.accuracy,
            f"{tuned.name} accuracy {_pct(acc)} {'>=' if acc >= BARS.accuracy else '<'} {_pct(BARS.accuracy)}",
        )
    )

    # 3. The consistency bar.
    cons = tuned.consistency.value if tuned.consistency else None
    rules.append(
        _rule(
            "consistency bar",
            "consistency rate: target 95%+",
            {"consistency": cons, "bar": BARS.consistency},
            cons is not None and cons >= BARS.consistency,
            "consistency was not measured"
            if cons is None
            else f"{tuned.name} consistency {_pct(cons)} {'>=' if cons >= BARS.consistency else '<'} {_pct(BARS.consistency)}",
        )
    )

    # 4. Unsupported content must not increase over the best prompted arm.
    tu = tuned.unsupported_rate.value if tuned.unsupported_rate else None
    pu = prompted.unsupported_rate.value if prompted.unsupported_rate else None
    if tu is None and pu is None:
        unsupported = _rule(
            "unsupported-content rate",
            "hallucination rate should not increase vs. base model",
            {"fine_tuned": None, "best_prompted": None},
            None,
            "not measured for either arm (not applicable to this contract)",
        )
    elif tu is None or pu is None:
        unsupported = _rule(
            "unsupported-content rate",
            "hallucination rate should not increase vs. base model",
            {"fine_tuned": tu, "best_prompted": pu},
            False,
            "measured for one arm only: cannot show it did not increase",
        )
    else:
        unsupported = _rule(
            "unsupported-content rate",
            "hallucination rate should not increase vs. base model",
            {"fine_tuned": tu, "best_prompted": pu},
            tu <= pu,
            f"{tuned.name} {_pct(tu)} {'<=' if tu <= pu else '>'} {prompted.name} {_pct(pu)}",
        )
    rules.append(unsupported)

    # 5. Cost at the stated volume, or the value of the gain covers the difference.
    verdict_extra: dict[str, Any] = {}
    try:
        p_opts, t_opts, skipped = _cost_options(tuned, prompted, econ, catalog)
    except TunewiseError as exc:
        p_opts, t_opts, skipped = [], [], [exc.message]
    q = econ.queries_per_day
    if not p_opts or not t_opts:
        rules.append(
            _rule(
                "cost at stated volume",
                "always evaluate performance and economics together",
                {"queries_per_day": q, "skipped": skipped},
                False,
                "cost unknown: "
                + ("; ".join(skipped) if skipped else "no priced option")
                + " (give --prompted-cost/--tuned-cost or a pricing override)",
            )
        )
    else:
        best_p = min(p_opts, key=lambda o: monthly_cost(o, q).total)
        best_t = min(t_opts, key=lambda o: monthly_cost(o, q).total)
        p_month, t_month = monthly_cost(best_p, q).total, monthly_cost(best_t, q).total
        extra = t_month - p_month
        # The gain valued is the paired interval's lower bound: the part of the gain the evidence vouches for.
        gain_points = 100 * paired.low if paired is not None else 0.0
        value = (econ.value_per_accuracy_point or 0.0) * max(gain_points, 0.0)
        ok = extra <= 0 or (econ.value_per_accuracy_point is not None and value >= extra)
        numbers = {
            "queries_per_day": q,
            "prompted_option": best_p.name,
            "prompted_monthly": p_month,
            "fine_tuned_option": best_t.name,
            "fine_tuned_monthly": t_month,
            "extra_monthly": extra,
            "gain_points_lower_bound": gain_points,
            "value_per_accuracy_point": econ.value_per_accuracy_point,
            "value_of_gain_monthly": value,
            "skipped": skipped,
        }
        if extra <= 0:
            detail = f"{best_t.name} ${t_month:,.2f}/month <= {best_p.name} ${p_month:,.2f}/month at {q:,.0f} queries/day"
        elif econ.value_per_accuracy_point is None:
            detail = (
                f"{best_t.name} costs ${extra:,.2f}/month more than {best_p.name} at {q:,.0f} queries/day and no "
                "value per accuracy point was stated (economics.value_per_accuracy_point)"
            )
        else:
            detail = (
                f"{best_t.name} costs ${extra:,.2f}/month more; the gain is worth {gain_points:.1f} points x "
                f"${econ.value_per_accuracy_point:,.2f} = ${value:,.2f}/month: "
                + ("covers it" if ok else "does not cover it")
            )
        rules.append(
            _rule(
                "cost at stated volume",
                "always evaluate performance and economics together",
                numbers,
                ok,
                detail,
            )
        )
        be = break_even(best_p, best_t)
        verdict_extra["cheapest_platform"] = best_t.platform or best_t.name
        verdict_extra["break_even"] = {
            "between": [best_p.name, best_t.name],
            "queries_per_day": be.volume,
            "formula": be.formula,
            "summary": be.summary,
        }

    failed = [r for r in rules if r.passed is False]
    diagnosis = diagnose(summary, tuned, prompted)
    # Why: the failed rules when prompting stays, else the rules that carried the decision.
    reasons = [f"{r.rule}: {r.detail}" for r in (failed or [r for r in rules if r.passed])]
    lead = "Keep prompting" if failed else "Fine-tune"
    return Verdict(
        recommendation="keep prompting" if failed else "fine-tune",
        headline=f"{lead}: {reasons[0]}" if reasons else f"{lead}.",
        fine_tuned_arm=tuned.name,
        best_prompted_arm=prompted.name,
        bars=BARS,
        rules=rules,
        weakest_point=weakest_point(summary, tuned, paired),
        reasons=reasons + [f"diagnosis: {line}" for line in diagnosis],
        diagnosis=diagnosis,
        **verdict_extra,
    )


_VARIANT_WORDS = {"scored": "label scoring", "constrained": "constrained decoding"}


def _gain_rule(paired: Paired, tuned: str, prompted: str) -> RuleRecord:
    """Rule 1 on accuracy, and on the free-text fields' ROUGE-L where the contract has them: a significant gain
    on either measure passes unless the other is significantly worse."""
    numbers: dict[str, Any] = {
        "diff": paired.diff,
        "low": paired.low,
        "high": paired.high,
        "mcnemar_p": paired.mcnemar_p,
        "fine_tuned": tuned,
        "best_prompted": prompted,
    }
    detail = (
        f"{tuned} - {prompted} accuracy = {100 * paired.diff:+.1f} points, 95% interval "
        f"[{100 * paired.low:+.1f}, {100 * paired.high:+.1f}]"
    )
    text = paired.text_similarity_diff
    if text is None or text.low is None or text.high is None:
        ok = paired.low > 0
        detail += ": " + ("excludes zero" if ok else "includes zero or is negative")
    else:
        numbers["text_similarity_diff"] = text.model_dump()
        better = paired.low > 0 or text.low > 0
        worse = paired.high < 0 or text.high < 0
        ok = better and not worse
        detail += (
            f"; text ROUGE-L = {100 * text.value:+.1f} points [{100 * text.low:+.1f}, {100 * text.high:+.1f}]: "
            + (
                "significantly better on one, worse on neither"
                if ok
                else "significantly worse on one"
                if worse
                else "neither interval excludes zero"
            )
        )
    return _rule(
        "significant gain",
        "quantify the improvement over the base model plus a good system prompt",
        numbers,
        ok,
        detail,
    )


def _variant(arm: ArmResult) -> str:
    extra = arm.model_extra or {}
    return str(extra.get("variant") or arm.name.partition("+")[2] or "free")


def _fmt(arm: ArmResult) -> float | None:
    return arm.format_compliance.value if arm.format_compliance else None


def _fixes(format_gain: float | None, accuracy: Paired | None) -> str:
    """Which problem a change fixes, from its format-compliance gain and its paired accuracy difference.

    >>> _fixes(0.5, Paired(a="x", b="y", metric="accuracy", diff=0.02, low=-0.03, high=0.07))
    'fixes format compliance, not task accuracy'
    >>> _fixes(0.0, Paired(a="x", b="y", metric="accuracy", diff=0.2, low=0.1, high=0.3))
    'fixes task accuracy'
    """
    fmt = format_gain is not None and format_gain >= 0.05
    acc = accuracy is not None and accuracy.low > 0
    if fmt and acc:
        return "fixes format compliance and task accuracy"
    if fmt:
        return "fixes format compliance, not task accuracy"
    if acc:
        return "fixes task accuracy"
    if accuracy is not None and accuracy.high < 0:
        return "lowers task accuracy"
    return "no significant change"


def _change(summary: EvalSummary, a: ArmResult, b: ArmResult) -> str:
    """'format 40.0% -> 100.0%, accuracy 30.0% -> 55.0% (+25.0 points [+15.0, +35.0])' for b -> a."""
    parts = []
    if _fmt(a) is not None and _fmt(b) is not None:
        parts.append(f"format {_pct(_fmt(b))} -> {_pct(_fmt(a))}")
    paired = summary.paired_diff(a.name, b.name)
    acc = f"accuracy {_pct(b.accuracy.value)} -> {_pct(a.accuracy.value)}"
    if paired is not None:
        acc += f" ({100 * paired.diff:+.1f} points [{100 * paired.low:+.1f}, {100 * paired.high:+.1f}])"
    parts.append(acc)
    lat_a, lat_b = (a.latency_ms.p50 if a.latency_ms else None), (b.latency_ms.p50 if b.latency_ms else None)
    if lat_a is not None and lat_b:
        parts.append(f"p50 latency x{lat_a / lat_b:.2f}")
    return ", ".join(parts)


def diagnose(summary: EvalSummary, tuned: ArmResult | None, prompted: ArmResult | None) -> list[str]:
    """Which problem each option fixes: every constrained/scored variant against its free arm, then fine-tuning
    against the best prompted arm. A format problem alone is fixed without training (constrained decoding or
    label scoring); fine-tuning earns its cost only by task accuracy the constrained arms do not reach."""
    lines = []
    by_name = {a.name: a for a in summary.arms}
    variants = [a for a in summary.arms if _variant(a) != "free"]
    for arm in variants:
        free = by_name.get(arm.name.partition("+")[0])
        if free is None:
            continue
        gain = None if _fmt(arm) is None or _fmt(free) is None else _fmt(arm) - _fmt(free)
        how = _VARIANT_WORDS.get(_variant(arm), _variant(arm))
        lines.append(
            f"{arm.name} vs {free.name} ({how}): {_change(summary, arm, free)}: "
            f"{_fixes(gain, summary.paired_diff(arm.name, free.name))}"
        )
    if (
        not variants
        and summary.contract in ("label", "json", "regex")
        and any(a.kind == "prompted" for a in summary.arms)
    ):
        lines.append(
            f"no constrained or scored prompted arm was evaluated for this {summary.contract} contract: a format "
            "problem could be fixed without training, so the comparison may favour fine-tuning "
            "(set evaluation.constrained: auto)"
        )
    if tuned is not None and prompted is not None:
        gain = None if _fmt(tuned) is None or _fmt(prompted) is None else _fmt(tuned) - _fmt(prompted)
        verdict = _fixes(gain, summary.paired_diff(tuned.name, prompted.name))
        line = (
            f"{tuned.name} vs {prompted.name} (best prompted): {_change(summary, tuned, prompted)}: {verdict}"
        )
        if _fmt(prompted) is not None and _fmt(prompted) >= BARS.format:
            line += (
                f"; {prompted.name} already meets the format ({_pct(_fmt(prompted))}), so only task accuracy "
                "can justify training"
            )
        elif verdict.startswith("fixes format compliance, not"):
            line += "; a format problem alone: try constrained decoding first"
        lines.append(line)
    return lines


def weakest_point(summary: EvalSummary, tuned: ArmResult, paired: Paired | None) -> str:
    """The weakest point of the evidence: a small held-out set, else the widest interval, else the closest call.

    >>> from tunewise.outputs import Interval
    >>> s = EvalSummary(n_examples=40, arms=[ArmResult(name="a", kind="prompted", accuracy=Interval(value=0.5))])
    >>> weakest_point(s, s.arms[0], None)
    'small held-out set: 40 examples (under 100); intervals are wide and a few examples swing the verdict'
    """
    n = summary.n_examples
    if n < SMALL_EVAL_SET:
        return f"small held-out set: {n} examples (under {SMALL_EVAL_SET}); intervals are wide and a few examples swing the verdict"
    widths = []
    if paired is not None:
        widths.append((paired.high - paired.low, f"paired accuracy difference {tuned.name} vs {paired.b}"))
    for name, iv in (("accuracy", tuned.accuracy), ("consistency", tuned.consistency)):
        if iv is not None and iv.width is not None:
            widths.append((iv.width, f"{tuned.name} {name}"))
    if not widths:
        return f"no confidence intervals in the summary ({n} examples): the numbers are point estimates"
    width, what = max(widths)
    label = "wide interval" if width > WIDE_INTERVAL else "widest interval"
    return f"{label}: {what} spans {100 * width:.1f} points on {n} examples"


__all__ = [
    "BARS",
    "Economics",
    "best_prompted",
    "best_prompted_arm",
    "decide",
    "diagnose",
    "prompted_strength",
    "weakest_point",
]
