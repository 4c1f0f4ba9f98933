"""The verdict, after evaluation: fine-tune, keep prompting, use RAG, RAG + fine-tuning, or not yet, and why.

This module decides among the closed-book arms (prompted against fine-tuned); when the evaluation has retrieval
arms (`rag`, `rag+fine-tuned`), `tunewise.decide.rag` then takes that verdict through the guide's order
(prompting first, RAG second, fine-tuning third) and adds the outcomes use RAG and RAG + fine-tuning.

Reads an evaluation summary (the evaluation stage writes it) and applies the guide's rules, every one returned
as a record with the numbers it used. Every arm faces the same quality bars (`BARS`):

    accuracy bar      task accuracy >= 85% ("below 85% means data or task definition needs work")
    consistency bar   consistency >= 95% ("target 95%+"); unmeasured consistency does not meet it

The rules, fine-tuned arm against the best prompted arm (an arm that meets the bars ranks above one that does
not, then the strongest; constrained variants and endpoints included):

1. gain                the fine-tuned arm is significantly better on accuracy, consistency or format compliance
                       and significantly worse on none ("use fine-tuning when prompt engineering hits a ceiling
                       on consistency"). Each measure uses the summary's paired comparison where it has one
                       (accuracy: paired bootstrap interval, McNemar p; a JSON contract's free-text fields: paired
                       ROUGE-L), else the two arms' 95% Wilson intervals not overlapping; the record names the
                       test. Equal quality (no significant difference) at a lower monthly cost and latency counts
                       as a gain too.
2. accuracy bar        the fine-tuned arm's accuracy
3. consistency bar     the fine-tuned arm's consistency
4. best prompted arm   whether it meets the bars (informational: it neither blocks nor supports fine-tuning)
5. unsupported rate    not above the best prompted arm's ("should not increase vs. base model")
6. cost                compared only when both arms meet the bars: the fine-tuned option's monthly cost at the
                       stated volume is lower, or the stated value of the gain covers the difference. When an
                       option cannot be priced the rule is undecided (it neither blocks nor supports) and names
                       the figures to set.

The outcome (`Verdict.recommendation`), one of `RECOMMENDATIONS`:

    fine-tune        the fine-tuned arm meets the bars, the gain rule passes, unsupported content did not rise
                     and the cost rule did not fail (an undecided cost rule is said, not counted)
    keep prompting   otherwise, when the best prompted arm meets the bars
    not yet          otherwise: no arm is ready; the verdict names the closest option and what to fix first
    use RAG, RAG + fine-tuning    with retrieval arms only (`tunewise.decide.rag`)

The guide's platform and team rules (`tunewise.decide.rules`: Azure for small teams at low volume, OpenAI closed
to new users, no public fine-tuning for Claude, the small-team and low-volume warnings, hourly hosting at low
volume) are applied to the settings and recorded in `Verdict.platform_rules`, each with its source sentence and
the date it was true; a platform a rule closes is left out of the pricing, and the cheapest line says why.

A prompted arm that misses a bar is never the recommendation. The verdict also names the cheapest option among
the arms that meet the bars (never one that misses them), the break-even volume and the weakest point of the
evidence, and diagnoses which problem each option fixes (`diagnose`): a constrained or scored variant that lifts
format compliance but not accuracy fixed a format problem, which needs no training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tunewise.decide.rules import Finding, Situation, apply_rules, closed_platforms, hourly_hosting
from tunewise.economics.cost import break_even, monthly_cost
from tunewise.economics.plan import ArmTokens, CostRequest, build_options
from tunewise.economics.pricing import Catalog
from tunewise.economics.retrieval import is_rag_arm
from tunewise.economics.settings import Economics
from tunewise.errors import TunewiseError
from tunewise.evaluate.curve import learning_curve_advice
from tunewise.outputs import ArmResult, Bars, EvalSummary, LearningCurve, Paired, RuleRecord, Verdict

# The quality bars of "How to Measure Fine-Tuning Success", defined once: the verdict applies them, records them
# in its output, and the report reads them from there.
BARS = Bars(
    accuracy=0.85,  # "Task Accuracy ... Below 85% means data or task definition needs work"
    consistency=0.95,  # "Consistency Rate ... Target 95%+"
    format=0.95,  # "95%+ format compliance": at or above it, format is not the problem
)
# The outcomes, as `Verdict.recommendation` spells them.
RECOMMENDATIONS = ("fine-tune", "keep prompting", "use RAG", "RAG + fine-tuning", "not yet")
SMALL_EVAL_SET = 100  # a consistency gap "that persists across 100+ prompted generations"
WIDE_INTERVAL = 0.10  # a 95% interval wider than 10 accuracy points cannot separate close arms

# --- the rules ------------------------------------------------------------------------------------------


def _rule(rule: str, guide: str, numbers: dict[str, Any], passed: bool | None, detail: str) -> RuleRecord:
    return RuleRecord(rule=rule, guide=guide, numbers=numbers, passed=passed, detail=detail)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _value(arm: Mapping[str, Any], key: str) -> float | None:
    iv = arm.get(key)
    v = iv.get("value") if isinstance(iv, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def prompted_strength(arm: Mapping[str, Any]) -> tuple[float, ...]:
    """How strong a prompted arm is, as a sort key: accuracy, then (to break ties, e.g. when every prompted arm
    scores 0% exact) lenient accuracy, field/macro F1, format compliance and consistency; -1 where unmeasured.

    >>> prompted_strength({"accuracy": {"value": 0.5}, "accuracy_lenient": {"value": 0.7}, "macro_f1": 0.6})
    (0.5, 0.7, 0.6, -1.0, -1.0)
    """

    def value(key: str) -> float:
        v = _value(arm, key)
        return -1.0 if v is None else v

    f1 = arm.get("field_f1") if arm.get("field_f1") is not None else arm.get("macro_f1")
    return (
        value("accuracy"),
        value("accuracy_lenient"),
        float(f1) if isinstance(f1, (int, float)) else -1.0,
        value("format_compliance"),
        value("consistency"),
    )


def missed_bars(arm: Mapping[str, Any]) -> list[tuple[str, float | None, float]]:
    """The quality bars an arm (`ArmResult.model_dump()` shape) misses: (measure, its value or None when
    unmeasured, the bar). Unmeasured consistency misses its bar: nothing shows it is met.

    >>> missed_bars({"accuracy": {"value": 0.7}, "consistency": {"value": 0.42}})
    [('accuracy', 0.7, 0.85), ('consistency', 0.42, 0.95)]
    >>> missed_bars({"accuracy": {"value": 0.9}, "consistency": {"value": 0.97}})
    []
    """
    missed = []
    for measure, bar in (("accuracy", BARS.accuracy), ("consistency", BARS.consistency)):
        v = _value(arm, measure)
        if v is None or v < bar:
            missed.append((measure, v, bar))
    return missed


def meets_bars(arm: Mapping[str, Any]) -> bool:
    """Whether an arm meets every quality bar (`missed_bars` is empty)."""
    return not missed_bars(arm)


def best_prompted_arm(arms: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best arm that is not fine-tuned (constrained variants and endpoints included): one that meets the
    quality bars ranks above one that does not (a prompted arm that misses a bar is never the one to keep while
    another meets them), then by `prompted_strength`; None when every arm is fine-tuned. Comparing against a
    weaker arm than the best would flatter fine-tuning.

    >>> best_prompted_arm([{"name": "a", "kind": "prompted", "accuracy": {"value": 0.6}, "consistency": {"value": 1}},
    ...                    {"name": "b", "kind": "prompted", "accuracy": {"value": 0.6}, "macro_f1": 0.5},
    ...                    {"name": "ft", "kind": "fine-tuned", "accuracy": {"value": 0.9}}])["name"]
    'b'
    >>> best_prompted_arm([{"name": "a", "kind": "prompted", "accuracy": {"value": 0.93}, "consistency": {"value": 0.36}},
    ...                    {"name": "b", "kind": "prompted", "accuracy": {"value": 0.88}, "consistency": {"value": 0.97}}])["name"]
    'b'
    """
    prompted = [a for a in arms if a.get("kind") != "fine-tuned"]
    return max(prompted, key=lambda a: (meets_bars(a), prompted_strength(a))) if prompted else None


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


def decide(
    summary: EvalSummary,
    econ: Economics,
    catalog: Catalog,
    fine_tuned: str | None = None,
    learning_curve: LearningCurve | None = None,
    preference: Mapping[str, Any] | None = None,
) -> Verdict:
    """Apply the verdict rules: fine-tune, keep prompting or not yet (see the module docstring). A learning curve
    (`evaluate.curve`) tells a "not yet" whether more labelled data is likely to pay. `preference`: for free-text
    tasks, the blind win rate of the fine-tuned arm over the best prompted one (`review.results.preference_for`),
    applied by `with_preference`."""
    tuned_arms = [a for a in summary.arms if a.kind == "fine-tuned"]
    if any(is_rag_arm(a.name) for a in summary.arms):
        # With retrieval arms, the closed-book verdict is taken through the guide's order. decide.rag builds on
        # this module's rules and bars, so it is imported here rather than at the top.
        from tunewise.decide import rag

        closed = rag.closed_book_summary(summary)
        if fine_tuned is None and not any(a.kind == "fine-tuned" for a in closed.arms):
            return rag.prompting_or_rag(summary, econ, catalog)
        return rag.three_way(
            summary, decide(closed, econ, catalog, fine_tuned, learning_curve), econ, catalog
        )
    if fine_tuned is not None:
        tuned = summary.arm(fine_tuned)
    elif tuned_arms:
        tuned = max(tuned_arms, key=lambda a: (meets_bars(a.model_dump()), a.accuracy.value))
    else:
        raise TunewiseError(
            "the evaluation has no fine-tuned arm",
            hint="train and evaluate a fine-tuned arm, or keep prompting",
        )
    prompted = best_prompted(summary)
    tuned_missed, prompted_missed = missed_bars(tuned.model_dump()), missed_bars(prompted.model_dump())
    paired = summary.paired_diff(tuned.name, prompted.name, "accuracy")
    # The platform and team rules first: a platform they close is never priced as the way to go.
    findings = platform_rules(econ, catalog, _tuned_model(summary, tuned))
    closed = closed_platforms(findings)
    open_econ = econ.model_copy(update={"platforms": [p for p in econ.platforms if p not in closed]})
    costs = _costs(tuned, prompted, open_econ, catalog)

    rules: list[RuleRecord] = [_gain_rule(summary, tuned, prompted, costs)]
    for measure, guide in (
        ("accuracy", "task accuracy below 85% means data or task definition needs work"),
        ("consistency", "consistency rate: target 95%+"),
    ):
        v, bar = _value(tuned.model_dump(), measure), getattr(BARS, measure)
        rules.append(
            _rule(
                f"{measure} bar",
                guide,
                {measure: v, "bar": bar},
                v is not None and v >= bar,
                f"{measure} was not measured"
                if v is None
                else f"{tuned.name} {measure} {_pct(v)} {'>=' if v >= bar else '<'} {_pct(bar)}",
            )
        )
    rules.append(
        _rule(
            "best prompted arm vs the bars",
            "the prompted arm faces the same bars",
            {"arm": prompted.name, "missed": [m for m, _, _ in prompted_missed]},
            None,
            f"{prompted.name} meets the bars"
            if not prompted_missed
            else f"{prompted.name} misses them ({_missed_text(prompted_missed)}): it cannot be the recommendation",
        )
    )
    rules.append(_unsupported_rule(tuned, prompted))
    rules.append(_cost_rule(costs, econ, paired, tuned, prompted, tuned_missed, prompted_missed))

    by_rule = {r.rule: r for r in rules}
    gain, unsupported, cost = by_rule["significant gain"], by_rule["unsupported-content rate"], rules[-1]
    if not tuned_missed and gain.passed and unsupported.passed is not False and cost.passed is not False:
        recommendation = "fine-tune"
        reason = f"{tuned.name} meets the bars ({_met_text(tuned)}) and {gain.numbers['summary']}"
        if prompted_missed:
            reason += f", while {prompted.name} misses them ({_missed_text(prompted_missed)})"
        if costs["tuned"] is None or (costs["prompted"] is None and not prompted_missed):
            reason += f"; {_undecided(costs)}"
    elif not prompted_missed:
        recommendation = "keep prompting"
        if tuned_missed:
            why = f"{tuned.name} misses them ({_missed_text(tuned_missed)})"
        elif not gain.passed:
            why = f"{tuned.name} {gain.numbers['summary']}"
        elif unsupported.passed is False:
            why = f"{tuned.name} raises unsupported content ({unsupported.detail})"
        else:
            why = f"fine-tuning does not pay at the stated volume ({cost.detail})"
        reason = f"{prompted.name} meets the bars ({_met_text(prompted)}) and {why}"
    else:
        recommendation = "not yet"
        reason = _not_yet(
            summary, tuned, prompted, tuned_missed, prompted_missed, gain, unsupported,
            curve=learning_curve, data_cost=econ.data_preparation_cost,
        )  # fmt: skip
        if tuned_missed and min((prompted, tuned), key=_distance) is tuned:
            reason += _larger_model(summary, tuned, open_econ, catalog)

    failed = [r for r in rules if r.passed is False]
    diagnosis = diagnose(summary, tuned, prompted)
    # Why: the failed rules when fine-tuning is not recommended, else the rules that carried the decision.
    carried = failed if recommendation != "fine-tune" else [r for r in rules if r.passed]
    reasons = [f"{r.rule}: {r.detail}" for r in carried]
    lead = {"fine-tune": "Fine-tune", "keep prompting": "Keep prompting", "not yet": "Not yet"}[
        recommendation
    ]
    cheapest_line = _cheapest_line(costs, econ, tuned, prompted, tuned_missed, prompted_missed)
    if closed:
        cheapest_line += "; left out by the platform rules: " + ", ".join(
            f"{p} ({rule})" for p, rule in closed.items()
        )
    extra: dict[str, Any] = {"cheapest": cheapest_line}
    if costs["tuned"] is not None and not tuned_missed:
        extra["cheapest_platform"] = costs["tuned"].platform or costs["tuned"].name
    if (
        costs["tuned"] is not None
        and costs["prompted"] is not None
        and not tuned_missed
        and not prompted_missed
    ):
        be = break_even(costs["prompted"], costs["tuned"])
        extra["break_even"] = {
            "between": [costs["prompted"].name, costs["tuned"].name],
            "queries_per_day": be.volume,
            "formula": be.formula,
            "summary": be.summary,
        }
    verdict = Verdict(
        recommendation=recommendation,
        headline=f"{lead}: {reason}",
        reason=reason,
        fine_tuned_arm=tuned.name,
        best_prompted_arm=prompted.name,
        bars=BARS,
        rules=rules,
        weakest_point=weakest_point(summary, tuned, paired),
        reasons=reasons + [f"diagnosis: {line}" for line in diagnosis],
        diagnosis=diagnosis,
        platform_rules=[f.to_dict() for f in findings],
        **extra,
    )
    return with_preference(verdict, preference) if preference else verdict


def with_preference(verdict: Verdict, preference: Mapping[str, Any]) -> Verdict:
    """The blind preference as the quality rule of a free-text task ("run blind A/B comparisons: if reviewers
    cannot tell the difference, prompt engineering is sufficient"). `preference` (`review.results.preference_for`)
    names its source: reviewers (enough reviewed items), else the judge, else the reference metrics. When its
    interval includes 50% the verdict is to keep prompting, as it is when the prompted arm is preferred; a
    preferred fine-tuned arm supports the other rules' verdict without overriding it."""
    who, tuned, prompted = preference["source"], preference["tuned"], preference["prompted"]
    rate = preference.get("win_rate")
    shown = "no decisive item" if not rate else (
        f"{tuned} won {_pct(rate['value'])} [{_pct(rate['low'])}, {_pct(rate['high'])}] of "
        f"{preference['decisive']} decisive items, {preference['ties']} ties"
    )  # fmt: skip
    numbers = {
        k: preference.get(k) for k in ("source", "win_rate", "decisive", "ties", "n", "min_reviewed_items")
    }
    guide = (
        "run blind A/B comparisons: if reviewers cannot tell the difference, prompt engineering is sufficient"
    )
    if preference["could_not_tell"]:
        passed = False
        reason = (
            f"{who} could not tell {tuned} and {prompted} apart ({shown}): prompt engineering is sufficient"
        )
    elif rate["value"] > 0.5:
        passed = True
        reason = f"{who} preferred {tuned} ({shown})"
    else:
        passed = False
        reason = f"{who} preferred {prompted} ({shown})"
    rule = _rule(
        "blind preference", guide, numbers, passed, f"{reason}; measured by {preference['measured_by']}"
    )
    update: dict[str, Any] = {"rules": [*verdict.rules, rule], "preference": dict(preference)}
    if passed:
        update["reasons"] = [f"blind preference: {rule.detail}", *verdict.reasons]
    else:
        update.update(
            recommendation="keep prompting",
            reason=reason,
            headline=f"Keep prompting: {reason}",
            reasons=[f"blind preference: {rule.detail}", *verdict.reasons],
        )
    return verdict.model_copy(update=update)


# --- the pieces of the verdict ---------------------------------------------------------------------------


def _bar_pct(bar: float) -> str:
    return f"{100 * bar:.0f}%"


def _missed_text(missed: Sequence[tuple[str, float | None, float]]) -> str:
    """'accuracy 70.0% is under the 85% bar and consistency 42.0% under the 95% bar'.

    >>> _missed_text([("accuracy", 0.7, 0.85), ("consistency", None, 0.95)])
    'accuracy 70.0% is under the 85% bar and consistency is unmeasured'
    """
    parts = []
    for i, (measure, v, bar) in enumerate(missed):
        if v is None:
            parts.append(f"{measure} is unmeasured")
        else:
            parts.append(f"{measure} {_pct(v)} {'is ' if i == 0 else ''}under the {_bar_pct(bar)} bar")
    return " and ".join(parts)


def _met_text(arm: ArmResult) -> str:
    cons = arm.consistency.value if arm.consistency else None
    return f"accuracy {_pct(arm.accuracy.value)}, consistency {_pct(cons)}"


def _costs(tuned: ArmResult, prompted: ArmResult, econ: Economics, catalog: Catalog) -> dict[str, Any]:
    """The cheapest option of each arm at the stated volume and its monthly cost (None where unpriced), and why
    an option could not be priced."""
    try:
        p_opts, t_opts, skipped = _cost_options(tuned, prompted, econ, catalog)
    except TunewiseError as exc:
        p_opts, t_opts, skipped = [], [], [exc.message]
    q = econ.queries_per_day
    best_p = min(p_opts, key=lambda o: monthly_cost(o, q).total) if p_opts else None
    best_t = min(t_opts, key=lambda o: monthly_cost(o, q).total) if t_opts else None
    return {
        "prompted": best_p,
        "tuned": best_t,
        "prompted_monthly": monthly_cost(best_p, q).total if best_p else None,
        "tuned_monthly": monthly_cost(best_t, q).total if best_t else None,
        "skipped": skipped,
    }


def _figures_to_set(skipped: Sequence[str]) -> list[str]:
    """The pricing figures the skipped reasons name, as 'key of entry' (a pricing override file's entry id).

    >>> _figures_to_set(["p @ azure-openai: pricing entry 'azure-openai/gpt-4o-mini': "
    ...                  "inference_input_per_million_tokens is unknown (...)"])
    ['inference_input_per_million_tokens of azure-openai/gpt-4o-mini']
    """
    found = []
    for text in skipped:
        for entry, key in re.findall(r"pricing entry '([^']+)': (\w+) is unknown", text):
            if f"{key} of {entry}" not in found:
                found.append(f"{key} of {entry}")
    return found


def _what_to_set(costs: Mapping[str, Any]) -> str:
    """The figures that would price every option, named as a pricing override file spells them."""
    figures = _figures_to_set(costs["skipped"])
    what = (
        "set " + _and(figures) + " in the pricing file (economics.pricing_file, or --pricing FILE)"
        if figures
        else "; ".join(costs["skipped"]) or "no priced option"
    )
    return f"{what}, or give --prompted-cost and --tuned-cost"


def _undecided(costs: Mapping[str, Any]) -> str:
    return f"the cost rule is undecided, an option has no price: {_what_to_set(costs)}"


def _cost_rule(
    costs: Mapping[str, Any],
    econ: Economics,
    paired: Paired | None,
    tuned: ArmResult,
    prompted: ArmResult,
    tuned_missed: list,
    prompted_missed: list,
) -> RuleRecord:
    """Cost at the stated volume, compared only between arms that meet the bars; undecided when unpriced."""
    guide = "always evaluate performance and economics together"
    q = econ.queries_per_day
    failing = [a.name for a, m in ((tuned, tuned_missed), (prompted, prompted_missed)) if m]
    if failing:
        detail = (
            f"not compared: {' and '.join(failing)} {'misses' if len(failing) == 1 else 'miss'} the quality bars, "
            "and the cost of an option that does not do the job is no alternative"
        )
        if not tuned_missed:
            detail += (
                f"; {costs['tuned'].name} costs ${costs['tuned_monthly']:,.2f}/month at {q:,.0f} queries/day"
                if costs["tuned"] is not None
                else f"; {_undecided(costs)}"
            )
        return _rule(
            "cost at stated volume",
            guide,
            {"queries_per_day": q, "misses_bars": failing, "skipped": costs["skipped"],
             "fine_tuned_monthly": costs["tuned_monthly"], "figures_to_set": _figures_to_set(costs["skipped"])},
            None,
            detail,
        )  # fmt: skip
    best_p, best_t = costs["prompted"], costs["tuned"]
    if best_p is None or best_t is None:
        return _rule(
            "cost at stated volume",
            guide,
            {
                "queries_per_day": q,
                "skipped": costs["skipped"],
                "figures_to_set": _figures_to_set(costs["skipped"]),
            },
            None,
            _undecided(costs),
        )
    p_month, t_month = costs["prompted_monthly"], costs["tuned_monthly"]
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
        "skipped": costs["skipped"],
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
    return _rule("cost at stated volume", guide, numbers, ok, detail)


def _cheapest_line(
    costs: Mapping[str, Any],
    econ: Economics,
    tuned: ArmResult,
    prompted: ArmResult,
    tuned_missed: list,
    prompted_missed: list,
) -> str:
    """The cheapest option at the stated volume among the arms that meet the bars; never one that misses them."""
    q = econ.queries_per_day
    passing = [
        (costs[key], costs[f"{key}_monthly"], arm.name)
        for key, arm, missed in (("prompted", prompted, prompted_missed), ("tuned", tuned, tuned_missed))
        if not missed
    ]
    if not passing:
        return "none named: no option meets the quality bars"
    priced = [(opt, month) for opt, month, _ in passing if opt is not None]
    if not priced:
        names = " and ".join(name for _, _, name in passing)
        return (
            f"not priced: {names} {'meet' if len(passing) > 1 else 'meets'} the bars; {_what_to_set(costs)}"
        )
    opt, month = min(priced, key=lambda x: x[1])
    return (
        f"{opt.name} at ${month:,.2f}/month for {q:,.0f} queries/day (among the options that meet the bars)"
    )


def _unsupported_rule(tuned: ArmResult, prompted: ArmResult) -> RuleRecord:
    """Unsupported content must not increase over the best prompted arm."""
    guide = "hallucination rate should not increase vs. base model"
    tu = tuned.unsupported_rate.value if tuned.unsupported_rate else None
    pu = prompted.unsupported_rate.value if prompted.unsupported_rate else None
    if tu is None and pu is None:
        return _rule(
            "unsupported-content rate",
            guide,
            {"fine_tuned": None, "best_prompted": None},
            None,
            "not measured for either arm (not applicable to this contract)",
        )
    if tu is None or pu is None:
        return _rule(
            "unsupported-content rate",
            guide,
            {"fine_tuned": tu, "best_prompted": pu},
            False,
            "measured for one arm only: cannot show it did not increase",
        )
    return _rule(
        "unsupported-content rate",
        guide,
        {"fine_tuned": tu, "best_prompted": pu},
        tu <= pu,
        f"{tuned.name} {_pct(tu)} {'<=' if tu <= pu else '>'} {prompted.name} {_pct(pu)}",
    )


def _and(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]


_MEASURES = {"accuracy": "accuracy", "consistency": "consistency", "format_compliance": "format compliance"}


def _compare(
    summary: EvalSummary, tuned: ArmResult, prompted: ArmResult, metric: str
) -> dict[str, Any] | None:
    """One measure of the gain rule: the paired comparison where the summary has one, else the two arms' 95%
    Wilson intervals (significant only when they do not overlap); None when either arm lacks the measure."""
    label = _MEASURES[metric]
    p = summary.paired_diff(tuned.name, prompted.name, metric)
    if p is not None:
        text = (
            f"{tuned.name} - {prompted.name} {label} = {100 * p.diff:+.1f} points, 95% interval "
            f"[{100 * p.low:+.1f}, {100 * p.high:+.1f}]"
        )
        if p.mcnemar_p is not None:
            text += f", McNemar p = {p.mcnemar_p:.2g}"
        return {
            "measure": metric, "test": "paired", "diff": p.diff, "low": p.low, "high": p.high,
            "mcnemar_p": p.mcnemar_p, "better": p.low > 0, "worse": p.high < 0, "text": text,
            "short": f"{label} {100 * p.diff:+.1f} points (paired interval [{100 * p.low:+.1f}, {100 * p.high:+.1f}])",
        }  # fmt: skip
    a, b = getattr(tuned, metric), getattr(prompted, metric)
    if a is None or b is None or None in (a.low, a.high, b.low, b.high):
        return None
    better, worse = a.low > b.high, a.high < b.low
    text = (
        f"{label} {_pct(a.value)} [{_pct(a.low)}, {_pct(a.high)}] vs {_pct(b.value)} [{_pct(b.low)}, "
        f"{_pct(b.high)}], Wilson intervals {'do not overlap' if better or worse else 'overlap'}"
    )
    return {
        "measure": metric, "test": "Wilson intervals", "fine_tuned": [a.value, a.low, a.high],
        "prompted": [b.value, b.low, b.high], "diff": a.value - b.value, "better": better, "worse": worse,
        "text": text, "short": f"{label} {_pct(a.value)} vs {_pct(b.value)} (Wilson intervals)",
    }  # fmt: skip


def _gain_rule(
    summary: EvalSummary, tuned: ArmResult, prompted: ArmResult, costs: Mapping[str, Any]
) -> RuleRecord:
    """Rule 1: significantly better on accuracy (or a JSON contract's free-text fields), consistency or format
    compliance and significantly worse on none; or no significant difference at a lower cost and latency."""
    comparisons = [c for m in _MEASURES if (c := _compare(summary, tuned, prompted, m)) is not None]
    paired = summary.paired_diff(tuned.name, prompted.name, "accuracy")
    text = paired.text_similarity_diff if paired is not None else None
    if text is not None and text.low is not None and text.high is not None:
        comparisons.insert(1, {
            "measure": "text_similarity", "test": "paired", "diff": text.value, "low": text.low, "high": text.high,
            "better": text.low > 0, "worse": text.high < 0,
            "text": f"text ROUGE-L = {100 * text.value:+.1f} points [{100 * text.low:+.1f}, {100 * text.high:+.1f}]",
            "short": f"text ROUGE-L {100 * text.value:+.1f} points (paired)",
        })  # fmt: skip
    better = [c for c in comparisons if c["better"]]
    worse = [c for c in comparisons if c["worse"]]
    numbers: dict[str, Any] = {"fine_tuned": tuned.name, "best_prompted": prompted.name}
    if paired is not None:
        numbers.update(diff=paired.diff, low=paired.low, high=paired.high, mcnemar_p=paired.mcnemar_p)
        if text is not None and text.low is not None and text.high is not None:
            numbers["text_similarity_diff"] = text.model_dump()
    numbers["comparisons"] = [{k: v for k, v in c.items() if k not in ("text", "short")} for c in comparisons]
    # Equal quality at a lower cost and latency: every known one of the two lower, at least one known.
    lat_t = tuned.latency_ms.p50 if tuned.latency_ms else None
    lat_p = prompted.latency_ms.p50 if prompted.latency_ms else None
    cheaper = None
    if costs["tuned_monthly"] is not None and costs["prompted_monthly"] is not None:
        cheaper = costs["tuned_monthly"] < costs["prompted_monthly"]
    faster = lat_t < lat_p if lat_t is not None and lat_p is not None else None
    known = [x for x in (cheaper, faster) if x is not None]
    equal_but_cheaper = bool(comparisons) and not better and not worse and bool(known) and all(known)
    numbers.update(better=[c["measure"] for c in better], worse=[c["measure"] for c in worse])
    numbers.update(cheaper=cheaper, faster=faster, p50_latency_ms=[lat_t, lat_p])
    if not comparisons:
        detail = f"no comparison of {tuned.name} vs {prompted.name} in the summary: the gain is unproven"
        ok = False
        summary_text = f"has no comparison with {prompted.name} in the summary: the gain is unproven"
    else:
        ok = (bool(better) and not worse) or equal_but_cheaper
        detail = "; ".join(c["text"] for c in comparisons) + ": "
        if worse:
            detail += "significantly worse on " + _and(
                [_MEASURES.get(c["measure"], "text ROUGE-L") for c in worse]
            )
            summary_text = "is significantly worse on " + _and([c["short"] for c in worse])
        elif better:
            detail += (
                "significantly better on "
                + _and([_MEASURES.get(c["measure"], "text ROUGE-L") for c in better])
                + ", worse on none"
            )
            summary_text = f"beats {prompted.name} significantly on " + _and([c["short"] for c in better])
        else:
            detail += "no significant difference"
            if equal_but_cheaper:
                ways = ["cheaper at the stated volume"] if cheaper else []
                if faster:
                    ways.append(f"faster (p50 latency {lat_t:,.0f} vs {lat_p:,.0f} ms)")
                how = " and ".join(ways)
                detail += f", and {tuned.name} is {how}"
                summary_text = f"matches {prompted.name} on quality while {how}"
            else:
                summary_text = f"is not significantly better ({_and([c['short'] for c in comparisons])})"
    numbers["summary"] = summary_text
    return _rule(
        "significant gain",
        "quantify the improvement over the base model plus a good system prompt; use fine-tuning when prompt "
        "engineering hits a ceiling on consistency",
        numbers,
        ok,
        detail,
    )


def _distance(arm: ArmResult) -> tuple[int, float]:
    """How far an arm is from the bars: bars missed, then the total shortfall (a whole bar when unmeasured)."""
    missed = missed_bars(arm.model_dump())
    return len(missed), sum(bar - (v or 0.0) for _, v, bar in missed)


def error_split(arm: ArmResult, n_examples: int) -> dict[str, int] | None:
    """An arm's wrong answers by kind: `format` (violations of the contract; `format_right_answer` of them hold
    the right answer, the form alone is wrong) and `content` (well-formed but wrong). Taken from the summary's
    per-example counts (`errors`) where it has them, else from the rates: a format violation is never strictly
    correct, so wrong = n x (1 - accuracy), format = n x (1 - format compliance). None for a contract without a
    format (text).

    >>> from tunewise.outputs import Interval
    >>> a = ArmResult(name="a", kind="prompted", accuracy=Interval(value=0.6), accuracy_lenient=Interval(value=0.75),
    ...               format_compliance=Interval(value=0.8))
    >>> error_split(a, 40)
    {'wrong': 16, 'format': 8, 'format_right_answer': 6, 'content': 8}
    """
    counted = (arm.model_extra or {}).get("errors")
    if isinstance(counted, Mapping) and {"wrong", "format", "content"} <= counted.keys():
        return {k: int(counted.get(k) or 0) for k in ("wrong", "format", "format_right_answer", "content")}
    fmt = _fmt(arm)
    if fmt is None:
        return None
    n = arm.n or n_examples
    wrong = round(n * (1 - arm.accuracy.value))
    malformed = min(round(n * (1 - fmt)), wrong)
    lenient = _value(arm.model_dump(), "accuracy_lenient")
    right_inside = round(n * (lenient - arm.accuracy.value)) if lenient is not None else 0
    return {
        "wrong": wrong,
        "format": malformed,
        "format_right_answer": max(0, min(right_inside, malformed)),
        "content": wrong - malformed,
    }


def _split_text(split: Mapping[str, int]) -> str:
    """The wrong answers by kind, in words.

    >>> _split_text({"wrong": 16, "format": 8, "format_right_answer": 6, "content": 8})
    'of 16 wrong answers, 8 break the format (6 of them with the right answer inside) and 8 are well-formed but wrong'
    >>> _split_text({"wrong": 15, "format": 0, "format_right_answer": 0, "content": 15})
    'all 15 wrong answers are well-formed: content errors, not format'
    """
    fmt = f"{split['format']} break the format"
    if split.get("format_right_answer"):
        fmt += f" ({split['format_right_answer']} of them with the right answer inside)"
    if not split["format"]:
        return f"all {split['wrong']} wrong answers are well-formed: content errors, not format"
    if not split["content"]:
        return f"all {split['wrong']} wrong answers {fmt.partition(' ')[2]}"
    return f"of {split['wrong']} wrong answers, {fmt} and {split['content']} are well-formed but wrong"


def _fix_first(
    arm: ArmResult, missed: Sequence[tuple[str, float | None, float]], tuned: bool, n_examples: int = 0
) -> str:
    """What to fix first on the arm closest to the bars: the format when format violations are under the format
    bar and make up at least half of the wrong answers, else the content (accuracy), then consistency. The split
    of the wrong answers is said where it is known."""
    fmt = _fmt(arm)
    measures = [m for m, _, _ in missed]
    split = error_split(arm, n_examples) if "accuracy" in measures else None
    why = f"; {_split_text(split)}" if split and split["wrong"] else ""
    format_remedy = (
        "more training examples in the exact format, or constrained decoding, and retrain" if tuned
        else "constrained decoding (evaluation.constrained: auto) or clearer format instructions"
    )  # fmt: skip
    if fmt is not None and fmt < BARS.format and (split is None or split["format"] >= split["content"]):
        return (
            f"fix the format first ({_pct(fmt)} format compliance, under {_bar_pct(BARS.format)}{why}): "
            + format_remedy
        )
    if "accuracy" in measures:
        content = (
            "improve the training data or the task definition and retrain"
            if tuned
            else "improve the prompt or the task definition"
        )
        if split and split["wrong"]:
            content = f"fix the content first ({_split_text(split)}): {content}"
            if split["format"] and fmt is not None and fmt < BARS.format:
                content += f", then the format ({format_remedy})"
        return content
    if any(m == "consistency" and v is None for m, v, _ in missed):
        return "measure consistency (evaluation.consistency_samples: 3)"
    return (
        "make the training answers consistent (one answer for one kind of input) and retrain"
        if tuned
        else "improve the prompt's instructions and examples; prompting may have hit its ceiling on consistency"
    )


def _not_yet(
    summary: EvalSummary,
    tuned: ArmResult,
    prompted: ArmResult,
    tuned_missed: list,
    prompted_missed: list,
    gain: RuleRecord,
    unsupported: RuleRecord,
    curve: LearningCurve | None = None,
    data_cost: float | None = None,
) -> str:
    """The reason of a 'not yet': which option is closest to the bars and what to fix first."""
    if not tuned_missed:
        # The fine-tuned arm meets the bars, the prompted one does not, and something else stands in the way.
        if not gain.passed:
            return (
                f"{tuned.name} meets the bars ({_met_text(tuned)}) and {prompted.name} misses them "
                f"({_missed_text(prompted_missed)}), but {tuned.name} {gain.numbers['summary']}: evaluate on "
                f"more held-out examples ({summary.n_examples} now) to settle it"
            )
        return (
            f"{tuned.name} meets the bars ({_met_text(tuned)}) but raises unsupported content "
            f"({unsupported.detail}): check the training answers for content not in the input and retrain"
        )
    closest = min((prompted, tuned), key=_distance)  # a tie goes to prompting: no training to pay for
    if closest is tuned:
        acc = next((c for c in gain.numbers.get("comparisons", []) if c["measure"] == "accuracy"), None)
        how = (
            f"{100 * acc['diff']:+.1f} accuracy points over {prompted.name}"
            if acc
            else f"against {prompted.name}"
        )
        how += ", significant" if gain.passed else ", not significant"
        way = "fine-tuning is the way" if gain.passed else "fine-tuning is the closest"
        fix = _fix_first(tuned, tuned_missed, tuned=True, n_examples=summary.n_examples)
        split = error_split(tuned, summary.n_examples)
        if split is None or split["content"] >= split["format"]:
            # More data teaches content; a format problem is fixed by constraining or cleaning the targets first.
            fix = learning_curve_advice(curve, data_cost, BARS.accuracy, then=fix) or fix
        return f"no option meets the bars; {way} ({how}) but {_missed_text(tuned_missed)}: {fix}"
    return (
        f"no option meets the bars; prompting is the closest ({prompted.name}: {_missed_text(prompted_missed)}; "
        f"{tuned.name}: {_missed_text(tuned_missed)}): "
        f"{_fix_first(prompted, prompted_missed, tuned=False, n_examples=summary.n_examples)}"
    )


def platform_rules(econ: Economics, catalog: Catalog, model: str | None = None) -> list[Finding]:
    """The guide's platform and team rules (`tunewise.decide.rules`) for these settings: the team size, the
    stated volume, the platforms priced (with their hourly hosting from the catalog) and the model fine-tuned."""
    situation = Situation(
        team_size=econ.team_size,
        queries_per_day=econ.queries_per_day,
        platforms=tuple(econ.platforms),
        model=model,
        hourly=hourly_hosting(econ.platforms, catalog),
    )
    return apply_rules(situation)


def _tuned_model(summary: EvalSummary, tuned: ArmResult) -> str | None:
    """The model the fine-tuned arm was trained from, where the summary records it."""
    info = {**summary.arm_info.get(tuned.name, {}), **(tuned.model_extra or {})}
    found = info.get("base") or info.get("model")
    return str(found) if found else None


def _larger_model(summary: EvalSummary, tuned: ArmResult, econ: Economics, catalog: Catalog) -> str:
    """'; a larger base model, where content errors dominate: ...' with each larger model's estimated cost on the
    platforms priced (a same-platform catalog entry with a higher training price per token), or '' when the
    wrong answers are mostly format, or the catalog has no larger model there."""
    split = error_split(tuned, summary.n_examples)
    if split is not None and split["content"] < split["format"]:
        return ""
    q, estimates = econ.queries_per_day, []
    for name in econ.platforms:
        try:
            base = catalog.get(name)
        except TunewiseError:
            continue
        if not base.training_per_million_tokens.known:
            continue
        base_rate = float(base.training_per_million_tokens.value)  # type: ignore[arg-type]
        for entry in catalog.entries:
            rate = entry.training_per_million_tokens
            if entry.platform != base.platform or not rate.known or float(rate.value) <= base_rate:  # type: ignore[arg-type]
                continue
            text = (
                f"{entry.id} trains at ${float(rate.value):,.2f} vs ${base_rate:,.2f} per 1M tokens "  # type: ignore[arg-type]
                f"(x{float(rate.value) / base_rate:.1f})"  # type: ignore[arg-type]
            )
            request = CostRequest(
                queries_per_day=q,
                platforms=[entry.id],
                arms=[
                    ArmTokens(
                        tuned.name, "fine-tuned", tuned.prompt_tokens or 0.0, tuned.completion_tokens or 0.0
                    )
                ],
                retrain_every_days=econ.retrain_every_days,
            )
            try:
                options, _, _ = build_options(request, catalog)
                text += f", about ${monthly_cost(options[0], q).total:,.2f}/month at {q:,.0f} queries/day"
            except TunewiseError as exc:
                text += f"; its monthly cost is unknown ({exc.message})"
            estimates.append(text)
    if not estimates:
        return ""
    return "; the wrong answers are mostly content, which a larger base model may fix: " + "; ".join(
        estimates
    )


_VARIANT_WORDS = {"scored": "label scoring", "constrained": "constrained decoding"}


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
                "or consistency can justify training"
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
    "RECOMMENDATIONS",
    "Economics",
    "best_prompted",
    "best_prompted_arm",
    "decide",
    "diagnose",
    "error_split",
    "meets_bars",
    "missed_bars",
    "platform_rules",
    "prompted_strength",
    "weakest_point",
]
