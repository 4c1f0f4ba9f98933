"""The guide's platform and team rules: each fires on one side of its threshold and not on the other, quotes the
guide exactly with the date it was true, closes platforms in the verdict's pricing, and reaches the advisor."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tunewise.decide.advisor import Answers, advise
from tunewise.decide.rules import AS_OF, RULES, Situation, apply_rules, closed_platforms, hourly_hosting
from tunewise.decide.verdict import Economics, decide
from tunewise.economics.pricing import Catalog, load_builtin
from tunewise.outputs import EvalSummary

GUIDE = Path(__file__).resolve().parents[1] / ".." / "shared" / "seed" / "000_2cd570f3a99e0562.txt"


def fired(situation: Situation) -> dict[str, object]:
    return {f.rule: f for f in apply_rules(situation) if f.fires}


def test_every_rule_quotes_the_guide_exactly_with_its_date():
    if not GUIDE.is_file():
        pytest.skip("the guide's text is not checked out beside the project (../shared/seed)")
    text = GUIDE.read_text(encoding="utf-8")
    for rule in RULES:
        assert rule.source in text, rule.id
        assert rule.as_of == "May 2026" == AS_OF  # the guide: "accessed May 2026"
    assert len({r.id for r in RULES}) == len(RULES) >= 6


AZURE = ("azure-openai", "together")


@pytest.mark.parametrize(
    "rule, fires, stays_quiet",
    [
        # "Avoid Azure if your team is under 10 people and ... fewer than 1,000 queries per day"
        ("azure-small-team", Situation(9, 999, AZURE), Situation(10, 999, AZURE)),
        ("azure-small-team", Situation(9, 999, AZURE), Situation(9, 1000, AZURE)),
        ("azure-small-team", Situation(9, 999, AZURE), Situation(9, 999, ("together",))),
        # "no longer accessible to new users"
        ("openai-closed", Situation(platforms=("openai",)), Situation(platforms=("azure-openai",))),
        # "Anthropic does not currently offer public fine-tuning for Claude models"
        ("claude-no-fine-tuning", Situation(model="claude-3-5-haiku"), Situation(model="Qwen/Qwen2.5-0.5B")),
        ("claude-no-fine-tuning", Situation(platforms=("anthropic",)), Situation(platforms=("bedrock",))),
        # "for teams under 25 people"
        ("small-team", Situation(team_size=24), Situation(team_size=25)),
        # "No, if your volume is under 100 queries daily"
        ("low-volume", Situation(queries_per_day=99), Situation(queries_per_day=100)),
        # "enough volume (1,000+ queries per day) to justify hosting costs", on a platform billed by the hour
        (
            "hourly-hosting",
            Situation(queries_per_day=999, platforms=AZURE, hourly={"azure-openai": 1.7}),
            Situation(queries_per_day=1000, platforms=AZURE, hourly={"azure-openai": 1.7}),
        ),
        (
            "hourly-hosting",
            Situation(queries_per_day=999, platforms=AZURE, hourly={"azure-openai": 1.7}),
            Situation(queries_per_day=999, platforms=AZURE, hourly={}),
        ),
    ],
)
def test_each_rule_flips_at_its_threshold(rule, fires, stays_quiet):
    assert rule in fired(fires)
    assert rule not in fired(stays_quiet)


def test_closing_rules_name_the_platforms_they_close():
    findings = apply_rules(
        Situation(6, 500, ("azure-openai", "openai", "together", "azure-openai/gpt-4o"), "claude-3-haiku")
    )
    assert closed_platforms(findings) == {
        "azure-openai": "azure-small-team",
        "azure-openai/gpt-4o": "azure-small-team",
        "openai": "openai-closed",
        "claude-3-haiku": "claude-no-fine-tuning",
    }
    # warnings close nothing
    assert closed_platforms(apply_rules(Situation(team_size=3, queries_per_day=10))) == {}


def test_an_unstated_team_size_leaves_the_team_rules_undecided():
    findings = {f.rule: f for f in apply_rules(Situation(None, 500, ("azure-openai",)))}
    assert findings["azure-small-team"].fires is None and findings["small-team"].fires is None
    assert "team size not stated" in findings["azure-small-team"].detail
    assert closed_platforms(list(findings.values())) == {}  # unknown never decides


def test_hourly_hosting_states_the_hosting_per_query():
    f = fired(Situation(queries_per_day=500, platforms=("azure-openai",), hourly={"azure-openai": 1.7}))
    # $1.70 x 24 h x 30 days = $1,224/month; $1.70 x 24 / 500 queries = $0.08 per query
    assert "azure-openai $1.70/hour = $1,224/month, $0.08 of hosting per query" in f["hourly-hosting"].detail


def test_hourly_hosting_reads_the_catalog():
    catalog = Catalog.model_validate(
        {
            "entries": [
                {"id": "a/x", "platform": "a", "model_class": "x",
                 "hosting_per_hour": {"value": 2.5, "source": "s", "date": "2026-05"}},
                {"id": "b/x", "platform": "b", "model_class": "x",
                 "hosting_per_month": {"value": 150.0, "source": "s", "date": "2026-05"}},
                {"id": "c/gpu", "platform": "c", "model_class": "gpu", "hosting_applies_to": "all",
                 "hosting_per_hour": {"value": 1.0, "source": "s", "date": "2026-05"}},
            ]
        }
    )  # fmt: skip
    # only a fine-tuned deployment billed by the hour; a flat monthly fee or a GPU every arm pays is not
    assert hourly_hosting(["a", "b", "c", "nowhere"], catalog) == {"a": 2.5}


# --- in the verdict ---------------------------------------------------------------------------------------


def passing_summary() -> EvalSummary:
    """The fine-tuned arm meets the bars and beats few-shot, which misses them."""
    return EvalSummary.model_validate(
        {
            "task": "intent", "n_examples": 200, "contract": "label",
            "arms": [
                {"name": "few-shot", "kind": "prompted", "accuracy": {"value": 0.70, "low": 0.63, "high": 0.76},
                 "consistency": {"value": 0.80, "low": 0.74, "high": 0.85},
                 "unsupported_rate": {"value": 0.05, "low": 0.02, "high": 0.09}},
                {"name": "fine-tuned", "kind": "fine-tuned", "accuracy": {"value": 0.90, "low": 0.85, "high": 0.94},
                 "consistency": {"value": 0.97, "low": 0.94, "high": 0.99},
                 "unsupported_rate": {"value": 0.03, "low": 0.01, "high": 0.06}},
            ],
            "paired": [{"a": "fine-tuned", "b": "few-shot", "metric": "accuracy", "diff": 0.2, "low": 0.12,
                        "high": 0.28, "mcnemar_p": 0.001}],
        }
    )  # fmt: skip


def econ(team: int | None, q: float = 500) -> Economics:
    return Economics(
        queries_per_day=q,
        platforms=["azure-openai", "together"],
        prompted_cost=0.03,
        tuned_cost=0.02,
        team_size=team,
    )


def test_verdict_leaves_a_closed_platform_out_of_the_cheapest_line():
    small = decide(passing_summary(), econ(9), load_builtin())
    assert small.recommendation == "fine-tune"
    azure = next(f for f in small.platform_rules if f["rule"] == "azure-small-team")
    assert azure["fires"] is True and azure["closes"] == ["azure-openai"]
    # Together's $150/month hosting + $0.02 x 500 x 30 = $300: $450; Azure is not priced at all
    assert small.cheapest == (
        "fine-tuned @ together at $450.00/month for 500 queries/day (among the options that meet the bars); "
        "left out by the platform rules: azure-openai (azure-small-team)"
    )
    assert "azure" not in str(next(r for r in small.rules if r.rule == "cost at stated volume").numbers)

    # A team of 10: the rule does not fire and both platforms are priced (Azure: $1,224 + $300 = $1,524/month)
    large = decide(passing_summary(), econ(10), load_builtin())
    assert "azure-small-team" not in {f["rule"] for f in large.platform_rules if f["fires"]}
    assert "left out" not in large.cheapest
    assert [r.numbers.get("fine_tuned_monthly") for r in large.rules if r.rule == "cost at stated volume"]


def test_verdict_carries_each_rules_source_sentence_and_date():
    v = decide(passing_summary(), econ(9, q=50), load_builtin())
    by_rule = {f["rule"]: f for f in v.platform_rules}
    assert set(by_rule) == {"azure-small-team", "small-team", "low-volume", "hourly-hosting"}
    for f in by_rule.values():
        rule = next(r for r in RULES if r.id == f["rule"])
        assert f["source"] == rule.source and f["as_of"] == "May 2026"
        assert f'"{rule.source}" (true as of May 2026)' in f["text"]
    assert by_rule["low-volume"]["detail"] == "low-volume: 50 queries/day (under 100)"


def test_decide_prints_the_rules_after_the_verdict_sentence(run_cli, tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(passing_summary().model_dump(mode="json")))
    code, out, err = run_cli(
        "decide", str(path), "--queries-per-day", "500", "--platform", "azure-openai,together",
        "--prompted-cost", "0.03", "--tuned-cost", "0.02", "--team-size", "6",
    )  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("verdict: fine-tune: ")
    start = lines.index("platform and team rules (docs/rules.md):")
    assert start < lines.index("rules:")
    block = "\n".join(lines[start : lines.index("rules:")])
    assert (
        "  - azure-small-team: azure-openai; 500 queries/day (under 1,000); a team of 6 (under 10)" in block
    )
    assert (
        '"Avoid Azure if your team is under 10 people and the fine-tuned model will handle fewer than 1,000 '
        'queries per day. The hosting economics do not justify the spend at low volume." (true as of May 2026)'
    ) in block
    assert "left out by the platform rules: azure-openai (azure-small-team)" in out

    code, out, _ = run_cli(
        "decide", str(path), "--queries-per-day", "500", "--platform", "together",
        "--prompted-cost", "0.03", "--tuned-cost", "0.02",
    )  # fmt: skip
    assert code == 0
    assert (
        "platform and team rules undecided without a team size (small-team): set economics.team_size" in out
    )


def test_team_size_comes_from_the_spec(tmp_path):
    from tunewise.economics.settings import economics_settings
    from tunewise.spec import parse_spec

    spec = parse_spec(
        "task: {name: t, target: Classify a ticket by intent.}\ndata: {train: x}\neconomics: {team_size: 7}\n"
    )
    assert spec.economics.team_size == 7
    assert economics_settings(spec.economics).team_size == 7
    assert economics_settings(spec.economics, team_size=30).team_size == 30  # the flag wins
    with pytest.raises(Exception, match="team_size"):
        parse_spec("task: {name: t, target: x y z w}\ndata: {train: x}\neconomics: {team_size: 0}\n")


# --- in the advisor ---------------------------------------------------------------------------------------

READY = Answers(
    problem="behaviour", format_only=False, facts_change_often=False, prompt_tested=True, prompt_consistency=0.8,
    queries_per_day=2000, validated_examples=400, can_judge_quality=True, team_size=30,
)  # fmt: skip


def with_(**changes) -> Answers:
    return dataclasses.replace(READY, **changes)


def rules_of(advice) -> dict:
    return {r.rule: r for r in advice.reasons}


def test_advisor_applies_the_azure_rule_at_its_thresholds():
    advice = advise(with_(team_size=9, queries_per_day=999, platforms=["azure-openai", "together"]))
    r = rules_of(advice)["azure-small-team"]
    assert r.favours_fine_tuning is False
    assert r.guide.startswith('"Avoid Azure if your team is under 10 people') and r.guide.endswith(
        "(true as of May 2026)"
    )
    assert any(
        m.startswith(
            "Leave out azure-openai (azure-small-team); price the rest: `tunewise cost --platform together`"
        )
        for m in advice.measure_next
    )
    assert "azure-small-team" not in rules_of(
        advise(with_(team_size=10, queries_per_day=999, platforms=["azure-openai"]))
    )
    assert "azure-small-team" not in rules_of(
        advise(with_(team_size=9, queries_per_day=1000, platforms=["azure-openai"]))
    )


def test_advisor_closes_openai_and_claude_and_warns_small_teams():
    r = rules_of(advise(with_(platforms=["openai"], model="claude-3-haiku", team_size=24)))
    assert "no longer accessible to new users" in r["openai-closed"].guide
    assert "public fine-tuning for Claude" in r["claude-no-fine-tuning"].guide
    assert "teams under 25 people" in r["small-team"].guide
    quiet = rules_of(advise(with_(platforms=["together"], model="Qwen/Qwen2.5-0.5B", team_size=25)))
    assert not {"openai-closed", "claude-no-fine-tuning", "small-team"} & quiet.keys()
    assert quiet["team_size"].favours_fine_tuning is True


def test_advisor_unanswered_team_size_decides_nothing():
    advice = advise(with_(team_size=None, platforms=["azure-openai"], queries_per_day=500))
    assert advice.recommendation == "fine-tuning"
    assert rules_of(advice)["team_size"].favours_fine_tuning is None
    assert "azure-small-team" not in rules_of(advice)


@pytest.mark.parametrize("classes, expected", [(9, "prompt engineering"), (10, "not yet")])
def test_fewer_than_10_classes_sends_an_untested_prompt_to_few_shot_first(classes, expected):
    advice = advise(
        with_(prompt_tested=None, prompt_consistency=None, classes=classes, validated_examples=500)
    )
    assert advice.recommendation == expected
    if classes < 10:
        assert rules_of(advice)["classes"].favours_fine_tuning is False
        # 9 classes: 9 examples, one per class (the few-shot arm's default)
        assert advice.measure_next[0].startswith(
            "Try few-shot first: a structured system prompt with 9 examples (1 per class)"
        )


def test_few_classes_with_a_tested_prompt_leave_the_decision_to_its_ceiling():
    advice = advise(with_(classes=3))
    assert advice.recommendation == "fine-tuning"
    assert rules_of(advice)["classes"].favours_fine_tuning is None


@pytest.mark.parametrize("examples, expected", [(599, "not yet"), (600, "fine-tuning")])
def test_ten_or_more_classes_need_50_examples_per_class(examples, expected):
    advice = advise(with_(classes=12, validated_examples=examples))
    assert advice.recommendation == expected
    if expected == "not yet":
        assert "12 classes: 599 validated examples < 600" in rules_of(advice)["classes"].effect


def test_cli_advise_reads_team_classes_and_platforms_from_the_spec(run_cli, tmp_path):
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: t, target: Classify a support ticket by its intent}\n"
        "contract: {type: label, labels: [billing, bug, other]}\n"
        "data: {train: data/train.jsonl}\n"
        "economics: {queries_per_day: 500, team_size: 6, platforms: [azure-openai, together]}\n"
    )
    code, out, err = run_cli(
        "advise", "--spec", str(tmp_path / "tunewise.yaml"), "--problem", "behaviour", "--not-format-only",
        "--facts-stable", "--prompt-not-tested", "--validated-examples", "300", "--can-judge-quality", "--no-input",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("recommendation: prompt engineering")
    assert "- classes = 3: 3 classes (fewer than 10)" in out
    assert "- azure-small-team = " in out and "(true as of May 2026)" in out
    assert "Try few-shot first: a structured system prompt with 6 examples (2 per class)" in out
