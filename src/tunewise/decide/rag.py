"""The verdict, three-way: prompting, RAG, fine-tuning (or RAG + fine-tuning), in the guide's order.

"The practical sequence for most teams: prompt engineering first, RAG second, fine-tuning third. Each step only
makes sense when the previous one hits a ceiling you can clearly document." The closed-book verdict (prompted
arms against the fine-tuned arm, `verdict.decide`) comes first; the retrieval arms then take it through that
order. The arms, by name:

    P   the best closed-book prompted arm          T   the closed-book fine-tuned arm
    R   the best retrieval arm without training     RT  `rag+fine-tuned`, the fine-tuned model with passages
        (`rag`, `rag+scored`, `rag+constrained`)

Every arm faces the same quality bars (`verdict.BARS`); an arm that misses one is never the recommendation. The
primary metric is exact match where the arms have it (a text contract with short answers: SQuAD-normalised,
against any acceptable answer), else `accuracy`: "significantly better/worse" is the paired bootstrap interval of
the difference excluding 0 (the two arms' Wilson intervals not overlapping where the summary has no paired
record). In order:

1. keep prompting     the closed-book verdict is "keep prompting": P meets the bars and fine-tuning did not earn
                      its place; retrieval is not needed either (prompting first)
2. RAG + fine-tuning  RT meets the bars and both help, one of:
                        a. RT is significantly better than R and than T (each adds to the other), or
                        b. knowledge plus behaviour: R is significantly better than its closed-book arm on
                           the primary metric, or on token F1 where the summary has it (retrieval fixes
                           knowledge: the facts reach the answers), T is significantly better than P on format
                           compliance or consistency (fine-tuning fixes behaviour), and RT is significantly worse
                           than neither R nor T, or
                        c. RT meets the bars while neither R nor T does;
                      and RT pays: it costs no more a month than the cheaper of R and T that meet the bars, or the
                      value of its gain over that arm covers the difference (unknown costs never decide)
3. use RAG            R meets the bars, and fine-tuning is not the closed-book verdict, or it is but R is not
                      significantly worse than T and not dearer at the stated volume (an unknown cost never decides:
                      the guide's order does, RAG before fine-tuning)
4. otherwise          the closed-book verdict stands. When it is "fine-tune" and R measured close (not
                      significantly worse than T), the verdict names the guide's mistake 1. When it is "not yet"
                      and a retrieval arm is closer to the bars than every closed-book arm, the sentence says so.

Without a closed-book fine-tuned arm (`tunewise eval --arms zero-shot,rag`), `prompting_or_rag` decides between
prompting and RAG alone (keep prompting, use RAG or not yet) and says that fine-tuning was not evaluated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tunewise.decide import verdict as v
from tunewise.economics.cost import CostOption, break_even, monthly_cost
from tunewise.economics.plan import arm_tokens, build_options, corpus_tokens
from tunewise.economics.pricing import Catalog
from tunewise.economics.retrieval import closed_book, is_rag_arm, is_rag_tuned
from tunewise.economics.settings import Economics
from tunewise.errors import TunewiseError
from tunewise.outputs import ArmResult, EvalSummary, RuleRecord, Verdict

GUIDE_ORDER = (
    "prompt engineering first, RAG second, fine-tuning third. Each step only makes sense when the previous one "
    "hits a ceiling you can clearly document"
)
MISTAKE_1 = (
    'Mistake 1: Fine-tuning when RAG solves the problem. "If the model needs access to your product documentation '
    "or customer data, uploading that information via RAG is faster, cheaper, and does not require retraining "
    'when the data changes. Fine-tuning does not teach the model new facts reliably. It teaches behavior."'
)
BOTH = "If you need knowledge grounding + behavior control, combine RAG with fine-tuning."


def _exact_match(arm: ArmResult) -> Mapping[str, Any] | None:
    em = (arm.model_extra or {}).get("exact_match")
    return em if isinstance(em, Mapping) and isinstance(em.get("value"), (int, float)) else None


def _paired_extra(summary: EvalSummary, a: str, b: str, key: str) -> dict[str, Any] | None:
    """a - b of a knowledge measure (`exact_match_diff`, `token_f1_diff`) from the summary's paired record of the
    two arms (either order), flipped to read a - b; with McNemar's p where the record has it."""
    for p in summary.paired:
        extra = p.model_extra or {}
        d = extra.get(key)
        if p.metric != "accuracy" or not isinstance(d, Mapping) or None in (d.get("low"), d.get("high")):
            continue
        p_value = extra.get(key.replace("_diff", "_mcnemar_p"))
        if (p.a, p.b) == (a, b):
            return {"diff": d["value"], "low": d["low"], "high": d["high"], "p": p_value}
        if (p.a, p.b) == (b, a):
            # 0.0 - x, not -x: a flipped zero reads 0.0, not -0.0
            return {"diff": 0.0 - d["value"], "low": 0.0 - d["high"], "high": 0.0 - d["low"], "p": p_value}
    return None


def _paired_record(measure: str, label: str, a: str, b: str, p: Mapping[str, Any]) -> dict[str, Any]:
    text = (
        f"{a} - {b} {label} = {100 * p['diff']:+.1f} points, 95% interval [{100 * p['low']:+.1f}, "
        f"{100 * p['high']:+.1f}]"
    ) + (f", McNemar p = {p['p']:.2g}" if p.get("p") is not None else "")
    return {
        "measure": measure, "test": "paired", "diff": p["diff"], "low": p["low"], "high": p["high"],
        "mcnemar_p": p.get("p"), "better": p["low"] > 0, "worse": p["high"] < 0, "text": text,
        "short": f"{label} {100 * p['diff']:+.1f} points (paired interval [{100 * p['low']:+.1f}, {100 * p['high']:+.1f}])",
    }  # fmt: skip


def _token_f1(summary: EvalSummary, a: ArmResult, b: ArmResult) -> dict[str, Any] | None:
    """a against b in token F1 (the paired record), None where the summary has none."""
    p = _paired_extra(summary, a.name, b.name, "token_f1_diff")
    return _paired_record("token_f1", "token F1", a.name, b.name, p) if p is not None else None


def knowledge_gain(summary: EvalSummary, rag: ArmResult, closed: ArmResult) -> dict[str, Any] | None:
    """Does retrieval fix knowledge? The retrieval arm against its closed-book arm: significantly better on the
    primary metric, else on token F1 (the facts are in the answers, not yet in the expected form); the primary
    metric's comparison when neither is."""
    primary = _accuracy(summary, rag, closed)
    if primary is not None and primary["better"]:
        return primary
    f1 = _token_f1(summary, rag, closed)
    if f1 is not None and f1["better"]:
        return f1
    return primary or f1


def _accuracy(summary: EvalSummary, a: ArmResult, b: ArmResult) -> dict[str, Any] | None:
    """a against b on the primary metric: exact match where both arms have it (a knowledge task with short
    answers), else accuracy; paired where the summary has the record, else the Wilson intervals."""
    ea, eb = _exact_match(a), _exact_match(b)
    if ea is None or eb is None:
        return v._compare(summary, a, b, "accuracy")
    p = _paired_extra(summary, a.name, b.name, "exact_match_diff")
    if p is not None:
        return _paired_record("exact_match", "exact match", a.name, b.name, p)
    if None in (ea.get("low"), ea.get("high"), eb.get("low"), eb.get("high")):
        return None
    better, worse = ea["low"] > eb["high"], ea["high"] < eb["low"]
    pct = v._pct
    return {
        "measure": "exact_match", "test": "Wilson intervals", "diff": ea["value"] - eb["value"],
        "better": better, "worse": worse,
        "text": f"exact match {pct(ea['value'])} [{pct(ea['low'])}, {pct(ea['high'])}] vs {pct(eb['value'])} "
        f"[{pct(eb['low'])}, {pct(eb['high'])}], Wilson intervals {'do not overlap' if better or worse else 'overlap'}",
        "short": f"exact match {pct(ea['value'])} vs {pct(eb['value'])} (Wilson intervals)",
    }  # fmt: skip


def _short(c: dict[str, Any] | None, a: str, b: str) -> str:
    if c is None:
        return f"no comparison of {a} and {b} in the summary"
    return f"{a} vs {b}: {c['text']}"


def closed_book_summary(summary: EvalSummary) -> EvalSummary:
    """The evaluation without its retrieval arms: what the closed-book verdict (`verdict.decide`) is made on."""
    closed = summary.model_copy(update={"arms": [a for a in summary.arms if not is_rag_arm(a.name)]})
    if not closed.arms:
        raise TunewiseError(
            "the evaluation has only retrieval arms",
            hint="evaluate the closed-book arms beside them: --arms zero-shot,rag,fine-tuned,rag+fine-tuned",
        )
    return closed


def price_arms(
    summary: EvalSummary, arms: Mapping[str, ArmResult | None], econ: Economics, catalog: Catalog
) -> tuple[dict[str, CostOption | None], list[str]]:
    """The cheapest option of each role's arm (P, T, R, RT) at the stated volume, None where it has no price,
    and the reasons. Given per-query costs price the roles (prompted, fine-tuned, rag, rag+fine-tuned)."""
    q = econ.queries_per_day
    direct = {"P": "prompted", "T": "fine-tuned", "R": "rag", "RT": "rag+fine-tuned"}
    flags = {"P": "--prompted-cost", "T": "--tuned-cost", "R": "--rag-cost", "RT": "--rag-tuned-cost"}
    given = any(
        c is not None for c in (econ.prompted_cost, econ.tuned_cost, econ.rag_cost, econ.rag_tuned_cost)
    )
    if econ.corpus_tokens is None:
        econ = econ.model_copy(update={"corpus_tokens": corpus_tokens(summary)})
    names = {a.name for a in arms.values() if a is not None}
    try:
        request = econ.cost_request(() if given else [t for t in arm_tokens(summary) if t.name in names])
        options, skipped, _ = build_options(request, catalog)
    except TunewiseError as exc:
        return {role: None for role in arms}, [exc.message]
    priced: dict[str, CostOption | None] = {}
    for role, arm in arms.items():
        if arm is None:
            priced[role] = None
            continue
        wanted = direct[role] if given else arm.name
        mine = [o for o in options if o.arm == wanted]
        priced[role] = min(mine, key=lambda o: monthly_cost(o, q).total) if mine else None
        if not mine and given:
            skipped.append(f"{arm.name}: no per-query cost given ({flags[role]})")
    return priced, list(dict.fromkeys(skipped))


def _monthly(option: CostOption | None, q: float) -> float | None:
    return monthly_cost(option, q).total if option is not None else None


def three_way(summary: EvalSummary, base: Verdict, econ: Economics, catalog: Catalog) -> Verdict:
    """Take the closed-book verdict `base` through the guide's order with the retrieval arms (module docstring)."""
    rag_free = [a for a in summary.arms if is_rag_arm(a.name) and not is_rag_tuned(a.name)]
    best = v.best_prompted_arm([a.model_dump() for a in rag_free])
    R = summary.arm(best["name"]) if best is not None else None
    rag_tuned = [a for a in summary.arms if is_rag_tuned(a.name)]
    # The fine-tuned model with passages (a variant too): one that meets the bars first, then the strongest.
    RT = max(
        rag_tuned,
        key=lambda a: (v.meets_bars(a.model_dump()), v.prompted_strength(a.model_dump())),
        default=None,
    )
    P = summary.arm(base.best_prompted_arm) if base.best_prompted_arm else None
    T = summary.arm(base.fine_tuned_arm) if base.fine_tuned_arm else None
    meets = {
        role: arm is not None and v.meets_bars(arm.model_dump())
        for role, arm in (("P", P), ("T", T), ("R", R), ("RT", RT))
    }
    # Price on the platforms the platform and team rules leave open, as the closed-book verdict did.
    closed = {p for f in base.platform_rules if f.get("fires") for p in f.get("closes") or ()}
    open_econ = econ.model_copy(update={"platforms": [p for p in econ.platforms if p not in closed]})
    q = econ.queries_per_day
    priced, skipped = price_arms(summary, {"P": P, "T": T, "R": R, "RT": RT}, open_econ, catalog)
    monthly = {role: _monthly(o, q) for role, o in priced.items()}

    rules: list[RuleRecord] = []
    mistakes: list[str] = list(base.mistakes)
    knowledge = None
    if R is not None:
        cb = next(
            (a for a in summary.arms if a.name == closed_book(R.name, summary.arm_info.get(R.name))), None
        )
        knowledge = knowledge_gain(summary, R, cb) if cb is not None else None
    rag_vs_ft = _accuracy(summary, R, T) if R is not None and T is not None else None
    close = rag_vs_ft is not None and not rag_vs_ft["worse"]
    if R is not None and T is not None:
        rules.append(
            v._rule(
                "RAG not significantly worse than fine-tuning",
                GUIDE_ORDER,
                {"rag": R.name, "fine_tuned": T.name, "comparison": _numbers(rag_vs_ft)},
                None if rag_vs_ft is None else close,
                _short(rag_vs_ft, R.name, T.name)
                + (
                    ""
                    if rag_vs_ft is None
                    else (": significantly worse" if not close else ": not significantly worse")
                ),
            )
        )
        cheaper = None if monthly["R"] is None or monthly["T"] is None else monthly["R"] <= monthly["T"]
        if not meets["T"]:
            cheaper = None  # the cost of an option that does not do the job is no alternative
        rules.append(
            v._rule(
                "RAG cheaper than fine-tuning",
                "always evaluate performance and economics together",
                {"queries_per_day": q, "rag_monthly": monthly["R"], "fine_tuned_monthly": monthly["T"],
                 "rag_option": getattr(priced["R"], "name", None), "fine_tuned_option": getattr(priced["T"], "name", None),
                 "skipped": skipped},
                cheaper,
                f"{priced['R'].name} ${monthly['R']:,.2f}/month {'<=' if cheaper else '>'} {priced['T'].name} "
                f"${monthly['T']:,.2f}/month at {q:,.0f} queries/day"
                if cheaper is not None
                else f"not compared: {T.name} misses the quality bars"
                if not meets["T"]
                else "undecided, an option has no price: " + ("; ".join(skipped) or "no priced option"),
            )
        )  # fmt: skip
    both = (
        _both_help(summary, P, T, R, RT, meets, knowledge, priced, monthly, econ) if RT is not None else None
    )
    if both is not None:
        rules.append(both)

    rec, reason = base.recommendation, base.reason
    met = v._met_text
    if rec == "keep prompting":
        reason += f"; prompting comes first ({GUIDE_ORDER}), so retrieval is not needed yet"
    elif both is not None and both.passed:
        rec = "RAG + fine-tuning"
        reason = f"{RT.name} meets the bars ({met(RT)}) and {both.numbers['summary']}"
    elif R is not None and meets["R"]:
        ft_chosen = rec == "fine-tune"
        dearer = rules[1].passed is False if T is not None else False
        if ft_chosen and not close:
            reason += f"; {R.name} meets the bars too but is significantly worse ({rag_vs_ft['short']})"
        elif ft_chosen and dearer:
            reason += (
                f"; {R.name} meets the bars and is not significantly worse, but costs more at the stated volume "
                f"({rules[1].detail})"
            )
        else:
            rec = "use RAG"
            if ft_chosen:
                how = f"is not significantly worse than {T.name} ({rag_vs_ft['short']})"
                how += (
                    f" and costs no more ({rules[1].detail})"
                    if rules[1].passed
                    else f"; {rules[1].detail}, so the guide's order decides"
                )
            elif T is not None and not meets["T"]:
                how = f"{T.name} misses them ({v._missed_text(v.missed_bars(T.model_dump()))})"
            else:
                how = f"fine-tuning does not earn its place ({base.reason})"
            if P is not None and not meets["P"]:
                how += f"; {P.name} misses them too ({v._missed_text(v.missed_bars(P.model_dump()))})"
            reason = f"{R.name} meets the bars ({met(R)}) and {how}: RAG before fine-tuning ({GUIDE_ORDER})"
    elif rec == "not yet":
        reason = _closest_retrieval(summary, base, P, T, R, RT) or reason
    if rec == "fine-tune" and R is not None and close:
        mistakes.append(
            f"{MISTAKE_1} {R.name} measured close to {T.name} (not significantly worse: {rag_vs_ft['short']}): "
            "check that the problem is behaviour, not missing knowledge, before paying for training"
        )

    lead = {"fine-tune": "Fine-tune", "keep prompting": "Keep prompting", "use RAG": "Use RAG",
            "RAG + fine-tuning": "RAG + fine-tuning", "not yet": "Not yet"}[rec]  # fmt: skip
    roles = {"P": P, "T": T, "R": R, "RT": RT}
    passing = [(role, monthly[role]) for role, arm in roles.items() if arm is not None and meets[role]]
    cheapest = base.cheapest
    if passing:
        known = [(role, m) for role, m in passing if m is not None]
        if known:
            role, m = min(known, key=lambda x: x[1])
            cheapest = f"{priced[role].name} at ${m:,.2f}/month for {q:,.0f} queries/day (among the options that meet the bars)"
    update: dict[str, Any] = {
        "recommendation": rec,
        "reason": reason,
        "headline": f"{lead}: {reason}",
        "rules": [*base.rules, *rules],
        "rag_arm": R.name if R is not None else None,
        "rag_fine_tuned_arm": RT.name if RT is not None else None,
        "mistakes": mistakes,
        "cheapest": cheapest,
        "diagnosis": [*base.diagnosis, *_diagnose(summary, R, RT, T)],
        "reasons": [
            *base.reasons,
            *(f"{r.rule}: {r.detail}" for r in rules),
            *(f"mistake: {m}" for m in mistakes),
        ],
    }
    if rec == "use RAG" and priced["R"] is not None and priced["T"] is not None:
        be = break_even(priced["R"], priced["T"])
        update["break_even"] = {"between": [be.a, be.b], "queries_per_day": be.volume, "formula": be.formula,
                                "summary": be.summary}  # fmt: skip
    return base.model_copy(update=update)


def prompting_or_rag(summary: EvalSummary, econ: Economics, catalog: Catalog) -> Verdict:
    """The verdict of an evaluation without a fine-tuned arm (`tunewise eval --arms zero-shot,rag`): keep
    prompting when the best prompted arm meets the bars (prompting first), use RAG when the best retrieval arm
    does, else not yet; fine-tuning is not judged, and the verdict says how to measure it."""
    closed = [a.model_dump() for a in summary.arms if not is_rag_arm(a.name)]
    rag_free = [a.model_dump() for a in summary.arms if is_rag_arm(a.name) and not is_rag_tuned(a.name)]
    best_p, best_r = v.best_prompted_arm(closed), v.best_prompted_arm(rag_free)
    if best_p is None or best_r is None:
        raise TunewiseError(
            "the evaluation needs a closed-book prompted arm and a retrieval arm to compare",
            hint="evaluate both: --arms zero-shot,rag (add fine-tuned and rag+fine-tuned to judge fine-tuning)",
        )
    P, R = summary.arm(best_p["name"]), summary.arm(best_r["name"])
    cb = next((a for a in summary.arms if a.name == closed_book(R.name, summary.arm_info.get(R.name))), P)
    knowledge = knowledge_gain(summary, R, cb)
    q = econ.queries_per_day
    priced, skipped = price_arms(summary, {"P": P, "R": R}, econ, catalog)
    meets_p, meets_r = v.meets_bars(P.model_dump()), v.meets_bars(R.model_dump())
    rules = [
        v._rule(
            "best prompted arm vs the bars",
            "the prompted arm faces the same bars",
            {"arm": P.name, "missed": [m for m, _, _ in v.missed_bars(P.model_dump())]},
            None,
            f"{P.name} meets the bars" if meets_p else f"{P.name} misses them ({v._missed_text(v.missed_bars(P.model_dump()))})",
        ),
        v._rule(
            "retrieval vs closed book",
            "use RAG when the model needs access to private or changing data",
            {"rag": R.name, "closed_book": cb.name, "comparison": _numbers(knowledge)},
            None if knowledge is None else knowledge["better"],
            _short(knowledge, R.name, cb.name),
        ),
    ]  # fmt: skip
    untested = (
        "fine-tuning was not evaluated: add fine-tuned and rag+fine-tuned to evaluation.arms and run `tunewise "
        "run` to judge it"
    )
    if meets_p:
        rec, reason = (
            "keep prompting",
            f"{P.name} meets the bars ({v._met_text(P)}): prompting comes first ({GUIDE_ORDER})",
        )
    elif meets_r:
        rec = "use RAG"
        reason = (
            f"{R.name} meets the bars ({v._met_text(R)}) and {P.name} misses them "
            f"({v._missed_text(v.missed_bars(P.model_dump()))}): RAG before fine-tuning ({GUIDE_ORDER})"
        )
    else:
        rec = "not yet"
        # A tie goes to the retrieval arm when it found the facts (knowledge gain), else to prompting.
        found = knowledge is not None and knowledge["better"]
        closest = min((P, R), key=lambda a: (v._distance(a), not (found and a is R)))
        reason = (
            f"no option meets the bars; {closest.name} is the closest "
            f"({v._missed_text(v.missed_bars(closest.model_dump()))}); {untested}"
        )
    passing = [(role, _monthly(priced[role], q)) for role, ok in (("P", meets_p), ("R", meets_r)) if ok]
    known = [(role, m) for role, m in passing if m is not None]
    if known:
        role, m = min(known, key=lambda x: x[1])
        cheapest = f"{priced[role].name} at ${m:,.2f}/month for {q:,.0f} queries/day (among the options that meet the bars)"
    elif passing:
        cheapest = "not priced: " + ("; ".join(skipped) or "no priced option")
    else:
        cheapest = "none named: no option meets the quality bars"
    lead = {"keep prompting": "Keep prompting", "use RAG": "Use RAG", "not yet": "Not yet"}[rec]
    return Verdict(
        recommendation=rec,  # type: ignore[arg-type]
        headline=f"{lead}: {reason}",
        reason=reason,
        fine_tuned_arm=None,
        best_prompted_arm=P.name,
        bars=v.BARS,
        rules=rules,
        cheapest=cheapest,
        weakest_point=v.weakest_point(summary, R, summary.paired_diff(R.name, cb.name)),
        reasons=[f"{r.rule}: {r.detail}" for r in rules] + [untested],
        diagnosis=_diagnose(summary, R, None, None),
        rag_arm=R.name,
        platform_rules=[f.to_dict() for f in v.platform_rules(econ, catalog)],
    )


def _numbers(c: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if c is None else {k: val for k, val in c.items() if k not in ("text", "short")}


def _both_help(
    summary: EvalSummary,
    P: ArmResult | None,
    T: ArmResult | None,
    R: ArmResult | None,
    RT: ArmResult,
    meets: Mapping[str, bool],
    knowledge: dict[str, Any] | None,
    priced: Mapping[str, CostOption | None],
    monthly: Mapping[str, float | None],
    econ: Economics,
) -> RuleRecord:
    """Rule 2 of the module docstring: does the fine-tuned model with passages earn its place over each alone?"""
    over_r = _accuracy(summary, RT, R) if R is not None else None
    over_t = _accuracy(summary, RT, T) if T is not None else None
    behaviour = []
    if T is not None and P is not None:
        for metric in ("format_compliance", "consistency"):
            c = v._compare(summary, T, P, metric)
            if c is not None and c["better"]:
                behaviour.append(c)
    numbers: dict[str, Any] = {"rag_fine_tuned": RT.name, "over_rag": _numbers(over_r), "over_fine_tuned": _numbers(over_t),
                               "knowledge": _numbers(knowledge), "behaviour": [_numbers(c) for c in behaviour]}  # fmt: skip
    case = None
    if over_r is not None and over_t is not None and over_r["better"] and over_t["better"]:
        case = "each adds to the other"
        why = f"beats both {R.name} ({over_r['short']}) and {T.name} ({over_t['short']})"
    elif (
        knowledge is not None and knowledge["better"] and behaviour
        and not (over_r is not None and over_r["worse"]) and not (over_t is not None and over_t["worse"])
    ):  # fmt: skip
        case = "knowledge plus behaviour"
        why = (
            f"retrieval fixes knowledge ({R.name}: {knowledge['short']}) while fine-tuning fixes behaviour "
            f"({T.name} vs {P.name}: {v._and([c['short'] for c in behaviour])})"
        )
    elif R is not None and T is not None and not meets["R"] and not meets["T"]:
        case = "neither alone meets the bars"
        why = f"neither {R.name} nor {T.name} alone does"
    else:
        why = (
            "it does not beat both rag and fine-tuned significantly, nor fix knowledge and behaviour together"
        )
    numbers["case"] = case
    if not meets["RT"]:
        missed = v._missed_text(v.missed_bars(RT.model_dump()))
        numbers["summary"] = f"misses the bars ({missed})"
        return v._rule(
            "RAG + fine-tuning: both help", BOTH, numbers, False, f"{RT.name} misses the bars ({missed})"
        )
    if case is None:
        numbers["summary"] = why
        return v._rule(
            "RAG + fine-tuning: both help", BOTH, numbers, False, f"{RT.name} meets the bars but {why}"
        )
    # Does it pay against the cheaper of the single steps that do the job?
    alternatives = [(r, monthly[r]) for r in ("R", "T") if meets[r] and monthly[r] is not None]
    pays, cost_text = None, "cost undecided (an option has no price)"
    if monthly["RT"] is not None and alternatives:
        role, alt = min(alternatives, key=lambda x: x[1])
        other = R if role == "R" else T
        extra = monthly["RT"] - alt
        gain = _accuracy(summary, RT, other)
        low = 100 * gain["low"] if gain is not None and "low" in gain else 0.0
        value = (econ.value_per_accuracy_point or 0.0) * max(low, 0.0)
        pays = extra <= 0 or (econ.value_per_accuracy_point is not None and value >= extra)
        cost_text = (
            f"{priced['RT'].name} ${monthly['RT']:,.2f}/month vs {priced[role].name} ${alt:,.2f}/month"
            + ("" if extra <= 0 else f"; the gain is worth {low:.1f} points x ${econ.value_per_accuracy_point or 0:,.2f} = ${value:,.2f}/month")
        )  # fmt: skip
        numbers.update(extra_monthly=extra, value_of_gain_monthly=value)
    elif monthly["RT"] is not None and not alternatives:
        pays, cost_text = True, f"the only one of them that meets the bars (${monthly['RT']:,.2f}/month)"
    numbers["summary"] = f"{why}; {cost_text}"
    return v._rule(
        "RAG + fine-tuning: both help",
        BOTH,
        numbers,
        pays is not False,
        f"{RT.name} ({case}): {why}; {cost_text}",
    )


def _closest_retrieval(
    summary: EvalSummary,
    base: Verdict,
    P: ArmResult | None,
    T: ArmResult | None,
    R: ArmResult | None,
    RT: ArmResult | None,
) -> str | None:
    """A 'not yet' reason naming a retrieval arm when it is closer to the bars than every closed-book arm."""
    closed = [a for a in (P, T) if a is not None]
    rag = [a for a in (R, RT) if a is not None]
    if not closed or not rag:
        return None
    best = min(rag, key=v._distance)
    if v._distance(best) >= min(v._distance(a) for a in closed):
        return None
    return (
        f"no option meets the bars; retrieval is the closest ({best.name}: "
        f"{v._missed_text(v.missed_bars(best.model_dump()))}): check retrieval first (does the passage with the "
        "answer reach the prompt? recall@k in the evaluation), then how the model uses it (rag+fine-tuned "
        "trains on prompts with passages)"
    )


def _knowledge_change(summary: EvalSummary, a: ArmResult, b: ArmResult) -> str | None:
    """'exact match 0.0% -> 40.0% (+40.0 points [+25.0, +55.0]), token F1 1.5% -> 52.0% (...), recall@2 100.0%'
    for b -> a, where the arms have the knowledge measures; None where they do not."""
    parts = []
    for key, label in (("exact_match", "exact match"), ("token_f1", "token F1")):
        ma, mb = (a.model_extra or {}).get(key), (b.model_extra or {}).get(key)
        if not isinstance(ma, Mapping) or not isinstance(mb, Mapping):
            continue
        text = f"{label} {v._pct(mb.get('value'))} -> {v._pct(ma.get('value'))}"
        p = _paired_extra(summary, a.name, b.name, f"{key}_diff")
        if p is not None:
            text += f" ({100 * p['diff']:+.1f} points [{100 * p['low']:+.1f}, {100 * p['high']:+.1f}])"
        parts.append(text)
    recall = (a.model_extra or {}).get("recall_at_k")
    if isinstance(recall, Mapping) and recall.get("value") is not None:
        parts.append(f"recall@{(a.model_extra or {}).get('k', 'k')} {v._pct(recall['value'])}")
    return ", ".join(parts) or None


def _diagnose(
    summary: EvalSummary, R: ArmResult | None, RT: ArmResult | None, T: ArmResult | None
) -> list[str]:
    """Which problem retrieval fixes: each retrieval arm against its closed-book arm, and RT against R. With the
    knowledge measures: better exact match fixes knowledge; better token F1 alone finds the facts but not the
    expected form of the answer (a behaviour problem)."""
    lines = []
    by_name = {a.name: a for a in summary.arms}
    for arm in (a for a in (R, RT) if a is not None):
        cb = by_name.get(closed_book(arm.name, summary.arm_info.get(arm.name)) or "")
        if cb is None:
            continue
        change = _knowledge_change(summary, arm, cb)
        if change is None:
            what = v._fixes(None, summary.paired_diff(arm.name, cb.name))
            change = v._change(summary, arm, cb)
        else:
            gain = knowledge_gain(summary, arm, cb)
            if gain is not None and gain["better"] and gain["measure"] != "token_f1":
                what = "fixes knowledge: the facts the closed-book arm cannot know"
            elif gain is not None and gain["better"]:
                what = (
                    "finds the facts (token F1 up) but not in the expected form (exact match unchanged): the "
                    "answers' form is a behaviour problem, which fine-tuning with passages (rag+fine-tuned) can fix"
                )
            else:
                what = "no significant change"
        lines.append(f"{arm.name} vs {cb.name} (retrieval): {change}: {what}")
    if RT is not None and R is not None:
        change = _knowledge_change(summary, RT, R) or v._change(summary, RT, R)
        gain = _accuracy(summary, RT, R)
        what = (
            "fine-tuning with passages fixes how the model answers from them"
            if gain is not None and gain["better"]
            else "lowers the primary metric"
            if gain is not None and gain["worse"]
            else "no significant change"
        )
        lines.append(f"{RT.name} vs {R.name} (fine-tuning with passages): {change}: {what}")
    return lines


__all__: Sequence[str] = [
    "GUIDE_ORDER",
    "MISTAKE_1",
    "closed_book_summary",
    "price_arms",
    "prompting_or_rag",
    "three_way",
]
