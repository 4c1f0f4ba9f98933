"""The verdict, three-way: prompting first, RAG second, fine-tuning third. Each rule is flipped by a test: the
same summary with one number changed gives the other outcome."""

from __future__ import annotations

import pytest

from tunewise.decide.rag import MISTAKE_1
from tunewise.decide.verdict import RECOMMENDATIONS, Economics, decide
from tunewise.economics.pricing import load_builtin
from tunewise.errors import TunewiseError
from tunewise.outputs import EvalSummary

CATALOG = load_builtin()
# Given costs: prompted and rag $0.08/query; fine-tuned and rag+fine-tuned $0.02/query on Together ($150/month).
ECON = Economics(
    queries_per_day=500, prompted_cost=0.08, rag_cost=0.08, tuned_cost=0.02, rag_tuned_cost=0.02,
    platforms=["together"],
)  # fmt: skip


def arm(name: str, acc: float, kind: str = "prompted", cons: float = 0.97, **extra) -> dict:
    return {
        "name": name, "kind": kind, "accuracy": {"value": acc, "low": acc - 0.04, "high": acc + 0.04},
        "consistency": {"value": cons, "low": cons - 0.02, "high": min(1.0, cons + 0.02)},
        "prompt_tokens": 1000.0 if name.startswith("rag") else 200.0, "completion_tokens": 8.0, **extra,
    }  # fmt: skip


def paired(a: str, b: str, diff: float, half: float = 0.04) -> dict:
    return {"a": a, "b": b, "metric": "accuracy", "diff": diff, "low": diff - half, "high": diff + half}


def knowledge() -> dict:
    """A knowledge task: closed-book arms cannot know the facts (30-35%), retrieval can (90%)."""
    return {
        "n_examples": 200,
        "contract": "text",
        "arms": [
            arm("zero-shot", 0.30),
            arm("fine-tuned", 0.35, "fine-tuned"),
            arm("rag", 0.90),
            arm("rag+fine-tuned", 0.91, "fine-tuned"),
        ],
        "paired": [
            paired("fine-tuned", "zero-shot", 0.05, 0.06),
            paired("rag", "zero-shot", 0.60),
            paired("rag", "fine-tuned", 0.55),
            paired("rag+fine-tuned", "rag", 0.01),
            paired("rag+fine-tuned", "fine-tuned", 0.56),
        ],
    }


def run(raw: dict, econ: Economics = ECON):
    return decide(EvalSummary.model_validate(raw), econ, CATALOG)


def rule(verdict, name):
    return next(r for r in verdict.rules if r.rule == name)


def set_arm(raw: dict, name: str, **values) -> dict:
    a = next(a for a in raw["arms"] if a["name"] == name)
    for key, v in values.items():
        a[key] = {"value": v, "low": v - 0.04, "high": min(1.0, v + 0.04)} if isinstance(v, float) else v
    return raw


def set_pair(raw: dict, a: str, b: str, diff: float, half: float = 0.04) -> dict:
    raw["paired"] = [p for p in raw["paired"] if {p["a"], p["b"]} != {a, b}] + [paired(a, b, diff, half)]
    return raw


def test_outcomes_are_the_verdict_type():
    assert {"use RAG", "RAG + fine-tuning"} <= set(RECOMMENDATIONS)


def test_knowledge_task_use_rag():
    v = run(knowledge())
    assert v.recommendation == "use RAG"
    assert v.rag_arm == "rag" and v.rag_fine_tuned_arm == "rag+fine-tuned"
    assert v.headline.startswith("Use RAG: rag meets the bars")
    assert "fine-tuned misses them (accuracy 35.0% is under the 85% bar)" in v.reason
    assert "prompt engineering first, RAG second, fine-tuning third" in v.reason
    both = rule(v, "RAG + fine-tuning: both help")
    assert both.passed is False and both.numbers["case"] is None
    assert any(
        line.startswith("rag vs zero-shot (retrieval)") and "fixes task accuracy" in line
        for line in v.diagnosis
    )
    assert v.mistakes == []


def test_prompting_first_keeps_prompting_even_when_rag_meets_the_bars():
    raw = set_arm(knowledge(), "zero-shot", accuracy=0.88)
    set_pair(raw, "rag", "zero-shot", 0.02)
    set_pair(raw, "fine-tuned", "zero-shot", -0.53)
    v = run(raw)
    assert v.recommendation == "keep prompting"
    assert "prompting comes first" in v.reason
    # flipped: the prompt misses the bars again -> RAG
    assert run(set_arm(raw, "zero-shot", accuracy=0.80)).recommendation == "use RAG"


def ft_meets() -> dict:
    """Fine-tuning meets the bars and beats prompting; RAG measures close to it (not significantly worse)."""
    raw = knowledge()
    set_arm(raw, "fine-tuned", accuracy=0.90)
    set_arm(raw, "rag", accuracy=0.89)
    set_pair(raw, "fine-tuned", "zero-shot", 0.60)
    set_pair(raw, "rag", "fine-tuned", -0.01)
    return raw


def test_rag_close_but_dearer_fine_tune_names_mistake_1():
    # 500/day: rag 0.08 x 15,000 = $1,200/month; fine-tuned 0.02 x 15,000 + $150 = $450/month
    v = run(ft_meets())
    assert v.recommendation == "fine-tune"
    cheaper = rule(v, "RAG cheaper than fine-tuning")
    assert cheaper.passed is False
    assert cheaper.numbers["rag_monthly"] == pytest.approx(1200.0)
    assert cheaper.numbers["fine_tuned_monthly"] == pytest.approx(450.0)
    assert rule(v, "RAG not significantly worse than fine-tuning").passed is True
    assert len(v.mistakes) == 1 and v.mistakes[0].startswith(MISTAKE_1)
    assert "Fine-tuning does not teach the model new facts reliably. It teaches behavior." in v.mistakes[0]


def test_rag_close_and_cheaper_use_rag():
    # flipped by the volume: at 50/day rag costs 0.08 x 1,500 = $120/month, fine-tuned 30 + 150 = $180
    v = run(ft_meets(), ECON.model_copy(update={"queries_per_day": 50}))
    assert v.recommendation == "use RAG"
    assert rule(v, "RAG cheaper than fine-tuning").passed is True
    assert "is not significantly worse than fine-tuned" in v.reason and v.mistakes == []
    assert v.break_even["between"] == ["rag", "fine-tuned @ together"]


def test_rag_significantly_worse_fine_tune_without_mistake_1():
    raw = set_pair(ft_meets(), "rag", "fine-tuned", -0.08)
    v = run(raw, ECON.model_copy(update={"queries_per_day": 50}))  # cheaper, but significantly worse
    assert v.recommendation == "fine-tune"
    assert rule(v, "RAG not significantly worse than fine-tuning").passed is False
    assert v.mistakes == [] and "significantly worse" in v.reason


def test_unknown_rag_cost_never_decides_the_order_does():
    econ = ECON.model_copy(update={"rag_cost": None, "rag_tuned_cost": None})
    v = run(ft_meets(), econ)
    assert rule(v, "RAG cheaper than fine-tuning").passed is None
    assert "--rag-cost" in rule(v, "RAG cheaper than fine-tuning").detail
    assert v.recommendation == "use RAG" and "the guide's order decides" in v.reason


def both_beat() -> dict:
    """rag+fine-tuned significantly beats both rag and fine-tuned, which both meet the bars."""
    raw = ft_meets()
    set_arm(raw, "rag+fine-tuned", accuracy=0.97)
    set_pair(raw, "rag+fine-tuned", "rag", 0.08)
    set_pair(raw, "rag+fine-tuned", "fine-tuned", 0.07)
    return raw


def test_rag_plus_fine_tuning_when_it_beats_both():
    v = run(both_beat())
    assert v.recommendation == "RAG + fine-tuning"
    both = rule(v, "RAG + fine-tuning: both help")
    assert both.passed is True and both.numbers["case"] == "each adds to the other"
    assert v.headline.startswith("RAG + fine-tuning: rag+fine-tuned meets the bars")
    # flipped: not significantly better than rag
    raw = set_pair(both_beat(), "rag+fine-tuned", "rag", 0.02)
    assert run(raw).recommendation != "RAG + fine-tuning"


def test_rag_plus_fine_tuning_must_pay():
    # rag+fine-tuned at $0.05/query: 750 + 150 = $900/month vs fine-tuned's $450, no value per point stated
    v = run(both_beat(), ECON.model_copy(update={"rag_tuned_cost": 0.05}))
    assert rule(v, "RAG + fine-tuning: both help").passed is False
    assert v.recommendation == "fine-tune"
    # the gain's lower bound (7 - 4 = 3 points) x $200 = $600/month covers the $450 more
    econ = ECON.model_copy(update={"rag_tuned_cost": 0.05, "value_per_accuracy_point": 200.0})
    assert run(both_beat(), econ).recommendation == "RAG + fine-tuning"


def knowledge_plus_behaviour() -> dict:
    """Retrieval fixes knowledge (rag >> zero-shot), fine-tuning fixes format (fine-tuned's format compliance far
    above zero-shot's), and rag+fine-tuned, which meets the bars, is significantly worse than neither; it does not
    beat rag significantly, so only this case can carry it."""
    raw = knowledge()
    set_arm(raw, "rag", accuracy=0.88)
    set_arm(raw, "rag+fine-tuned", accuracy=0.90)
    set_arm(raw, "zero-shot", format_compliance={"value": 0.55, "low": 0.48, "high": 0.62})
    set_arm(raw, "fine-tuned", format_compliance={"value": 0.99, "low": 0.96, "high": 1.0})
    set_pair(raw, "rag+fine-tuned", "rag", 0.02)  # not significant
    return raw


def test_rag_plus_fine_tuning_for_knowledge_plus_behaviour():
    v = run(knowledge_plus_behaviour())
    assert v.recommendation == "RAG + fine-tuning"
    both = rule(v, "RAG + fine-tuning: both help")
    assert both.numbers["case"] == "knowledge plus behaviour"
    assert "retrieval fixes knowledge" in v.reason and "fine-tuning fixes behaviour" in v.reason
    # flipped: fine-tuning does not fix the format (its interval overlaps zero-shot's) -> RAG alone
    raw = set_arm(
        knowledge_plus_behaviour(), "fine-tuned", format_compliance={"value": 0.6, "low": 0.53, "high": 0.67}
    )
    assert run(raw).recommendation == "use RAG"
    # flipped: retrieval does not fix knowledge (rag vs zero-shot not significant) -> RAG alone still meets the bars
    raw = set_pair(knowledge_plus_behaviour(), "rag", "zero-shot", 0.03)
    assert rule(run(raw), "RAG + fine-tuning: both help").passed is False


def test_rag_plus_fine_tuning_when_neither_alone_meets_the_bars():
    raw = set_arm(knowledge(), "rag", accuracy=0.80)
    set_arm(raw, "rag+fine-tuned", accuracy=0.87)
    set_pair(raw, "rag+fine-tuned", "rag", 0.07, 0.08)
    v = run(raw)
    assert v.recommendation == "RAG + fine-tuning"
    assert rule(v, "RAG + fine-tuning: both help").numbers["case"] == "neither alone meets the bars"
    # flipped: rag meets the bars on its own -> RAG, the earlier step
    assert run(set_arm(raw, "rag", accuracy=0.86)).recommendation == "use RAG"


def test_a_rag_arm_that_misses_a_bar_is_not_the_one_recommended():
    raw = knowledge()
    set_arm(raw, "rag", accuracy=0.95, consistency=0.90)  # misses consistency
    raw["arms"].append(arm("rag+scored", 0.88))
    set_pair(raw, "rag+scored", "zero-shot", 0.58)
    set_pair(raw, "rag+scored", "fine-tuned", 0.53)
    v = run(raw)
    assert v.recommendation == "use RAG" and v.rag_arm == "rag+scored"
    # flipped: no retrieval arm meets the bars -> not yet, retrieval named as the closest
    set_arm(raw, "rag+scored", accuracy=0.80)
    set_arm(raw, "rag+fine-tuned", accuracy=0.80)
    v = run(raw)
    assert v.recommendation == "not yet"
    assert "retrieval is the closest" in v.reason


def test_cheapest_names_the_rag_option_when_it_is():
    v = run(knowledge())  # rag is the only arm meeting the bars besides rag+fine-tuned
    assert v.cheapest.startswith("rag+fine-tuned @ together at $450.00/month")


def test_only_retrieval_arms_is_an_error():
    raw = knowledge()
    raw["arms"] = [a for a in raw["arms"] if a["name"].startswith("rag")]
    with pytest.raises(TunewiseError, match="only retrieval arms"):
        run(raw)


def test_decide_cli_prints_the_mistake(run_cli, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(EvalSummary.model_validate(ft_meets()).model_dump_json())
    code, out, _ = run_cli(
        "decide", path, "--prompted-cost", "0.08", "--rag-cost", "0.08", "--tuned-cost", "0.02",
        "--platform", "together", "--queries-per-day", "500",
    )  # fmt: skip
    assert code == 0, out
    assert out.startswith("verdict: fine-tune:")
    assert "rag arm: rag" in out
    assert "mistake: Mistake 1: Fine-tuning when RAG solves the problem." in out


def prompt_vs_rag() -> dict:
    """`tunewise eval --arms zero-shot,rag`: no fine-tuned arm."""
    raw = knowledge()
    raw["arms"] = [a for a in raw["arms"] if a["name"] in ("zero-shot", "rag")]
    raw["paired"] = [p for p in raw["paired"] if {p["a"], p["b"]} == {"rag", "zero-shot"}]
    return raw


def test_without_fine_tuning_prompting_or_rag():
    v = run(prompt_vs_rag())
    assert v.recommendation == "use RAG" and v.fine_tuned_arm is None and v.rag_arm == "rag"
    assert rule(v, "retrieval vs closed book").passed is True
    assert any(r.startswith("fine-tuning was not evaluated") for r in v.reasons)
    assert v.cheapest == "rag at $1,200.00/month for 500 queries/day (among the options that meet the bars)"
    # flipped: the prompt meets the bars -> prompting first
    assert run(set_arm(prompt_vs_rag(), "zero-shot", accuracy=0.86)).recommendation == "keep prompting"
    # flipped: rag misses them too -> not yet, naming the closest
    v = run(set_arm(prompt_vs_rag(), "rag", accuracy=0.70))
    assert v.recommendation == "not yet" and "rag is the closest" in v.reason


def test_exact_match_is_the_primary_metric_where_the_arms_have_it():
    # accuracy says rag is close to fine-tuned (-1 point, not significant); exact match, recorded as
    # fine-tuned - rag = +10 points [+5, +15], says it is significantly worse: exact match decides.
    raw = ft_meets()
    for a in raw["arms"]:
        a["exact_match"] = dict(a["accuracy"], n=200)
    set_pair(raw, "rag", "fine-tuned", -0.01)
    raw["paired"] = [p for p in raw["paired"] if {p["a"], p["b"]} != {"rag", "fine-tuned"}] + [
        {**paired("fine-tuned", "rag", 0.01), "exact_match_diff": {"value": 0.10, "low": 0.05, "high": 0.15},
         "exact_match_mcnemar_p": 0.002}
    ]  # fmt: skip
    v = run(raw, ECON.model_copy(update={"queries_per_day": 50}))  # rag is the cheaper one here
    close = rule(v, "RAG not significantly worse than fine-tuning")
    assert close.passed is False
    assert close.numbers["comparison"]["measure"] == "exact_match"
    assert close.numbers["comparison"]["low"] == pytest.approx(-0.15)  # flipped to rag - fine-tuned
    assert (
        "rag - fine-tuned exact match = -10.0 points" in close.detail and "McNemar p = 0.002" in close.detail
    )
    assert v.recommendation == "fine-tune" and v.mistakes == []
    # flipped: without the exact-match record, the arms' exact-match intervals overlap -> close, cheaper: RAG
    raw["paired"][-1].pop("exact_match_diff")
    assert run(raw, ECON.model_copy(update={"queries_per_day": 50})).recommendation == "use RAG"


def measured_knowledge_demo() -> dict:
    """The knowledge demo's first 12 held-out questions, measured (SmolLM2-135M, `tunewise eval --arms
    zero-shot,rag --limit 12`): retrieval finds every gold document, but the prompted model answers in sentences,
    so exact match stays at 0 while token F1 rises."""
    wilson12 = {"value": 0.0, "low": 0.0, "high": 0.2424940066552408, "n": 12}
    return {
        "task": "company-knowledge", "n_examples": 12, "contract": "text",
        "arms": [
            {"name": "zero-shot", "kind": "prompted", "accuracy": wilson12, "exact_match": wilson12,
             "token_f1": {"value": 0.01515, "low": 0.0, "high": 0.04545, "n": 12},
             "prompt_tokens": 81.0, "completion_tokens": 16.0},
            {"name": "rag", "kind": "prompted", "accuracy": wilson12, "exact_match": wilson12,
             "token_f1": {"value": 0.14564, "low": 0.05411, "high": 0.24832, "n": 12},
             "recall_at_k": {"value": 1.0, "low": 0.7575, "high": 1.0, "n": 12}, "k": 2,
             "prompt_tokens": 330.0, "completion_tokens": 15.9},
        ],
        "paired": [
            {"a": "zero-shot", "b": "rag", "metric": "accuracy", "diff": 0.0, "low": 0.0, "high": 0.0,
             "mcnemar_p": 1.0, "exact_match_diff": {"value": 0.0, "low": 0.0, "high": 0.0},
             "exact_match_mcnemar_p": 1.0,
             "token_f1_diff": {"value": -0.13049, "low": -0.23611, "high": -0.03896}},
        ],
    }  # fmt: skip


def test_measured_demo_retrieval_finds_the_facts_but_not_the_form():
    v = run(measured_knowledge_demo())
    assert v.recommendation == "not yet" and v.fine_tuned_arm is None
    knowledge = rule(v, "retrieval vs closed book")
    # exact match is not significantly better (0 vs 0); token F1 is: rag - zero-shot = +13.0 [+3.9, +23.6]
    assert knowledge.passed is True and knowledge.numbers["comparison"]["measure"] == "token_f1"
    assert knowledge.numbers["comparison"]["low"] == pytest.approx(0.03896)
    line = next(d for d in v.diagnosis if d.startswith("rag vs zero-shot (retrieval)"))
    assert "exact match 0.0% -> 0.0% (+0.0 points [+0.0, +0.0])" in line
    assert "token F1 1.5% -> 14.6% (+13.0 points [+3.9, +23.6])" in line and "recall@2 100.0%" in line
    assert line.endswith("which fine-tuning with passages (rag+fine-tuned) can fix")
    # a tie on the bars goes to the arm that found the facts
    assert v.reason.startswith("no option meets the bars; rag is the closest")
