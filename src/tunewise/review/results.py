"""A review's results: the human win rate, agreement between reviewers, position bias, and the model judge's
agreement with people on the same pair.

    win rate         arm a's wins over the decisive items (each item's outcome by majority), Wilson interval
    agreement        Cohen's kappa for two reviewers (items both reviewed), Fleiss' for more (items all reviewed)
    position bias    how often "Left" won among the choices that picked a side
    judge            the judge's win rate on the pair, and Cohen's kappa between its outcome and the reviewers'
                     majority on the items both judged ("both bad" counts as a tie: the judge has no such answer)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tunewise.project import Project
from tunewise.review import stats
from tunewise.review.store import ReviewStore, item_outcomes

# Below this many reviewed items the verdict reads the judge (or the reference metrics) instead of people.
MIN_REVIEWED_ITEMS = 30
# Agreement below "moderate" (Landis and Koch): the judge does not stand in for people on this task.
LOW_AGREEMENT = 0.4


def review_results(project: Project, review_id: str | None = None) -> dict[str, Any]:
    store = ReviewStore(project)
    review = store.get(review_id) if review_id else store.latest()
    choices = store.choices(review["id"])
    per_item = item_outcomes(choices)
    by_reviewer: dict[str, dict[str, str]] = {}
    for c in choices:
        by_reviewer.setdefault(c["reviewer"], {})[str(c["example_id"])] = c["outcome"]
    a, b = review["arms"]
    out: dict[str, Any] = {
        "review": review["id"],
        "eval_run": review["eval_run"],
        "arms": review["arms"],
        "n_items": review["n_items"],
        "reviewed_items": len(per_item),
        "reviewers": {name: len(v) for name, v in sorted(by_reviewer.items())},
        "choices": len(choices),
        "preference": stats.preference(list(per_item.values())),
        "position_bias": stats.position_bias([c["choice"] for c in choices]),
        "agreement": _agreement(by_reviewer),
        "min_reviewed_items": MIN_REVIEWED_ITEMS,
    }
    out["reading"] = _reading(out["preference"], a, b, "reviewers")
    out["judge"] = judge_comparison(project, review["eval_run"], a, b, per_item)
    return out


def _agreement(by_reviewer: dict[str, dict[str, str]]) -> dict[str, Any] | None:
    names = sorted(by_reviewer)
    if len(names) < 2:
        return None
    if len(names) == 2:
        x, y = by_reviewer[names[0]], by_reviewer[names[1]]
        common = sorted(set(x) & set(y))
        kappa = stats.cohen_kappa([x[i] for i in common], [y[i] for i in common])
        return {
            "measure": "cohen",
            "kappa": kappa,
            "items": len(common),
            "reading": stats.kappa_reading(kappa),
        }
    common = sorted(set.intersection(*(set(v) for v in by_reviewer.values())))
    table = [Counter(by_reviewer[n][i] for n in names) for i in common]
    kappa = stats.fleiss_kappa(table) if table else None
    return {"measure": "fleiss", "kappa": kappa, "items": len(common), "reading": stats.kappa_reading(kappa)}


def _reading(pref: dict[str, Any], a: str, b: str, who: str) -> str:
    if not pref["decisive"]:
        return f"{who} preferred neither answer on any item: they could not tell {a} and {b} apart"
    rate = pref["win_rate"]
    shown = f"{rate['value']:.0%} [{rate['low']:.0%}, {rate['high']:.0%}]"
    if pref["could_not_tell"]:
        return f"{who} could not tell {a} and {b} apart: {a} won {shown} of the decisive items"
    better = a if rate["value"] > 0.5 else b
    return f"{who} preferred {better}: {a} won {shown} of the decisive items"


def judgement_outcomes(project: Project, eval_run: str, a: str, b: str) -> dict[str, dict[str, Any]]:
    """The judge's outcomes on a pair, by example id, from the newest judge that judged it (either order of the
    pair's names: outcomes are turned to `a`'s point of view)."""
    with project.registry() as registry:
        rows = registry.conn.execute(
            "SELECT * FROM judgements WHERE eval_run = ? AND ((arm_a = ? AND arm_b = ?) OR (arm_a = ? AND arm_b = ?))"
            " ORDER BY created_at",
            (eval_run, a, b, b, a),
        ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        outcome = r["outcome"]
        if r["arm_a"] != a and outcome in ("a", "b"):
            outcome = "b" if outcome == "a" else "a"
        out[str(r["example_id"])] = {"outcome": outcome, "judge": r["judge"]}
    return out


def judge_comparison(
    project: Project, eval_run: str, a: str, b: str, human: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The judge's win rate for `a` over `b`, and its agreement with the reviewers' majority where both exist."""
    judged = judgement_outcomes(project, eval_run, a, b)
    if not judged:
        return None
    usable = {i: j["outcome"] for i, j in judged.items() if j["outcome"] is not None}
    out: dict[str, Any] = {
        "judge": sorted({j["judge"] for j in judged.values()}),
        "judged": len(judged),
        "unusable": len(judged) - len(usable),
        "preference": stats.preference(list(usable.values())),
    }
    out["reading"] = _reading(out["preference"], a, b, "the judge")
    if human:
        common = sorted(set(usable) & set(human))
        people = ["tie" if human[i] == "both_bad" else human[i] for i in common]
        model = [usable[i] for i in common]
        kappa = stats.cohen_kappa(people, model)
        out["agreement_with_people"] = {
            "kappa": kappa,
            "items": len(common),
            "reading": stats.kappa_reading(kappa),
            "low": kappa is None or kappa < LOW_AGREEMENT,
        }
        out["disagreements"] = [
            {"example_id": i, "people": p, "judge": m} for i, p, m in zip(common, people, model) if p != m
        ]
    return out


def preference_for(
    project: Project, eval_run: str, tuned: str, prompted: str, contract: Any = None
) -> dict[str, Any] | None:
    """The fine-tuned arm's blind win rate over the prompted arm, from the best source there is: the reviewers
    when a review of the pair holds at least `MIN_REVIEWED_ITEMS` reviewed items, else the model judge, else the
    reference metrics (per example, the arm whose answer scores the higher ROUGE-L against the reference wins;
    for a json contract, over its free-text fields). None when the evaluation has no such answers."""
    base = {"tuned": tuned, "prompted": prompted, "min_reviewed_items": MIN_REVIEWED_ITEMS}
    store = ReviewStore(project)
    best: tuple[int, dict[str, str]] | None = None
    for review in store.list():
        if review["eval_run"] != eval_run or set(review["arms"]) != {tuned, prompted}:
            continue
        outcomes = item_outcomes(store.choices(review["id"]))
        if review["arms"][0] != tuned:  # seen from the fine-tuned arm's side
            outcomes = {i: {"a": "b", "b": "a"}.get(o, o) for i, o in outcomes.items()}
        if best is None or len(outcomes) > best[0]:
            best = (len(outcomes), outcomes)
    judged = judge_comparison(project, eval_run, tuned, prompted, best[1] if best else None)
    if best is not None and best[0] >= MIN_REVIEWED_ITEMS:
        return {
            **base,
            "source": "reviewers",
            "measured_by": f"{best[0]} blindly reviewed items (majority of their reviewers)",
            **stats.preference(list(best[1].values())),
            "judge": judged,
        }
    if judged is not None and judged["preference"]["n"]:
        return {
            **base,
            "source": "the judge",
            "measured_by": f"the model judge ({', '.join(judged['judge'])}) on {judged['preference']['n']} items, "
            f"both orders; {best[0] if best else 0} reviewed items, fewer than the {MIN_REVIEWED_ITEMS} needed",
            **judged["preference"],
            "judge": judged,
        }
    outcomes = _metric_outcomes(project, eval_run, tuned, prompted, contract)
    if not outcomes:
        return None
    return {
        **base,
        "source": "the reference metrics",
        "measured_by": "ROUGE-L against the reference, per example (no review or judge of the pair yet)",
        **stats.preference(outcomes),
    }


def _metric_outcomes(project: Project, eval_run: str, tuned: str, prompted: str, contract: Any) -> list[str]:
    from tunewise.evaluate.scorers import as_contract, score
    from tunewise.fileio import read_jsonl
    from tunewise.registry.runs import RunStore

    path = RunStore(project).get(eval_run, kinds=("eval",)).path / "records.jsonl"
    if not path.is_file():
        return []
    c = as_contract(contract or "text")
    by_arm: dict[str, dict[str, Any]] = {}
    for r in read_jsonl(path):
        if r["arm"] in (tuned, prompted):
            s = score(r["output"], r["reference"], c)
            by_arm.setdefault(r["arm"], {})[str(r["id"])] = (
                s.rouge_l if c.type == "text" else s.text_similarity
            )
    common = [i for i in by_arm.get(tuned, {}) if i in by_arm.get(prompted, {})]
    out = []
    for i in common:
        x, y = by_arm[tuned][i], by_arm[prompted][i]
        if x is None or y is None:
            continue
        out.append("a" if x > y else "b" if y > x else "tie")
    return out


def applies_to(spec: Any) -> bool:
    """Whether the blind preference is a free-text task's quality rule: a text contract that is not short answers
    over documents (those keep exact match), or any spec that names a judge (`evaluation.judge`).

    >>> from types import SimpleNamespace as S
    >>> applies_to(S(contract=S(type="text"), knowledge=None, evaluation=S(judge=None)))
    True
    >>> applies_to(S(contract=S(type="json"), knowledge=None, evaluation=S(judge=None)))
    False
    """
    if spec.evaluation.judge is not None:
        return True
    return spec.contract.type == "text" and spec.knowledge is None
