"""The advisor: each of the guide's rules flips the recommendation away from a baseline that says fine-tuning."""

from __future__ import annotations

import dataclasses
import json

import pytest

from tunewise.decide.advisor import Answers, advise
from tunewise.errors import TunewiseError

# Every answer favours fine-tuning: behaviour problem, stable rules, a tested few-shot prompt stuck at 80%
# consistency, 2,000 queries/day, 400 validated examples, a reviewer and a team of 30.
READY = Answers(
    problem="behaviour",
    format_only=False,
    facts_change_often=False,
    prompt_tested=True,
    prompt_consistency=0.80,
    queries_per_day=2000,
    validated_examples=400,
    can_judge_quality=True,
    team_size=30,
)


def with_(**changes) -> Answers:
    return dataclasses.replace(READY, **changes)


def reason(advice, rule):
    return next(r for r in advice.reasons if r.rule == rule)


def test_baseline_recommends_fine_tuning():
    advice = advise(READY)
    assert advice.recommendation == "fine-tuning"
    assert all(r.favours_fine_tuning for r in advice.reasons)
    assert any("tunewise decide" in m for m in advice.measure_next)


@pytest.mark.parametrize(
    "changes, expected, rule, guide_words",
    [
        ({"problem": "knowledge"}, "RAG", "problem", "use RAG"),
        ({"problem": "both"}, "RAG + fine-tuning", "problem", "use RAG"),
        ({"facts_change_often": True}, "prompt engineering", "facts_change_often", "change frequently"),
        ({"format_only": True}, "prompt engineering", "format_only", "format, tone, simple rules"),
        ({"prompt_tested": False}, "prompt engineering", "prompt_tested", "few-shot examples first"),
        (
            {"prompt_consistency": 0.96},
            "prompt engineering",
            "prompt_consistency",
            "100+ prompted generations",
        ),
        ({"queries_per_day": 99}, "prompt engineering", "queries_per_day", "under 100 per day"),
        ({"validated_examples": 199}, "not yet", "validated_examples", "200+ validated"),
        ({"can_judge_quality": False}, "not yet", "can_judge_quality", "evaluate training data quality"),
    ],
)
def test_each_rule_flips_the_recommendation(changes, expected, rule, guide_words):
    advice = advise(with_(**changes))
    assert advice.recommendation == expected
    r = reason(advice, rule)
    assert guide_words in r.guide  # every reason is tied to the guide's rule
    if expected not in ("RAG + fine-tuning",):
        assert r.favours_fine_tuning is False


def test_thresholds_sit_exactly_at_the_guides_numbers():
    assert (
        advise(with_(queries_per_day=100)).recommendation == "fine-tuning"
    )  # "under 100" blocks, 100 does not
    assert advise(with_(validated_examples=200)).recommendation == "fine-tuning"  # "200+"
    assert advise(with_(prompt_consistency=0.949)).recommendation == "fine-tuning"
    assert advise(with_(prompt_consistency=0.95)).recommendation == "prompt engineering"  # already at target


def test_format_only_says_try_constrained_decoding_first():
    advice = advise(with_(format_only=True))
    assert any("constrained decoding first" in m for m in advice.measure_next)
    assert "constrained decoding" in reason(advice, "format_only").effect


def test_knowledge_with_changing_facts_stays_rag():
    assert advise(with_(problem="both", facts_change_often=True)).recommendation == "RAG"


def test_mid_volume_asks_for_the_break_even():
    advice = advise(with_(queries_per_day=500))
    assert advice.recommendation == "fine-tuning"
    assert any("tunewise cost --queries-per-day 500" in m for m in advice.measure_next)


def test_unanswered_questions_mean_not_yet_and_become_measurements():
    assert advise(Answers()).recommendation == "not yet"
    advice = advise(with_(queries_per_day=None))
    assert advice.recommendation == "not yet"
    assert reason(advice, "queries_per_day").favours_fine_tuning is None
    assert any("Estimate queries per day" in m for m in advice.measure_next)
    consistency_unknown = advise(with_(prompt_consistency=None))
    assert consistency_unknown.recommendation == "not yet"
    assert any("100+ generations" in m for m in consistency_unknown.measure_next)


def test_prompting_rules_win_over_data_rules():
    # An untested prompt is the first thing to fix even when data is also missing.
    assert advise(with_(prompt_tested=False, validated_examples=10)).recommendation == "prompt engineering"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prompt_consistency": 80}, "fraction from 0 to 1"),
        ({"queries_per_day": -1}, "cannot be negative"),
        ({"problem": "vibes"}, "knowledge, behaviour or both"),
    ],
)
def test_bad_answers_are_refused(changes, message):
    with pytest.raises(TunewiseError, match=message):
        with_(**changes)


# --- CLI -------------------------------------------------------------------------------------------------

READY_FLAGS = [
    "advise", "--problem", "behaviour", "--not-format-only", "--facts-stable", "--prompt-tested",
    "--prompt-consistency", "0.8", "--queries-per-day", "2000", "--validated-examples", "400", "--can-judge-quality",
]  # fmt: skip


def test_cli_advise_fine_tuning(run_cli):
    code, out, _ = run_cli(*READY_FLAGS)
    assert code == 0
    assert out.startswith("recommendation: fine-tuning")
    assert "+ prompt_consistency = 0.8: documented ceiling: 80% < 95%" in out
    assert (
        "from the practitioner's guide (docs/guide.md): Use fine-tuning when you have 200+ validated training examples."
        in out
    )


def test_cli_advise_flag_flips_and_json(run_cli):
    code, out, _ = run_cli(*READY_FLAGS, "--cannot-judge-quality", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["recommendation"] == "not yet"
    assert any(
        r["rule"] == "can_judge_quality" and r["favours_fine_tuning"] is False for r in payload["reasons"]
    )
    code, out, _ = run_cli("advise", "--problem", "knowledge", "--no-input")
    assert code == 0 and out.startswith("recommendation: RAG")


def test_cli_advise_reads_volume_and_examples_from_spec(run_cli, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n' * 150)
    (tmp_path / "tunewise.yaml").write_text(
        "task: {name: t, target: Given a ticket reply with its intent label}\n"
        "data: {train: data/train.jsonl}\neconomics: {queries_per_day: 50}\n"
    )
    code, out, err = run_cli(
        "advise", "--spec", str(tmp_path / "tunewise.yaml"), "--problem", "behaviour", "--prompt-tested",
        "--prompt-consistency", "0.7", "--facts-stable", "--can-judge-quality", "--json",
    )  # fmt: skip
    assert code == 0, err
    payload = json.loads(out)
    answers = {r["rule"]: r["answer"] for r in payload["reasons"]}
    assert answers["queries_per_day"] == 50 and answers["validated_examples"] == 150
    assert payload["recommendation"] == "prompt engineering"  # 50/day < 100
    assert "counted 150 training examples" in err


def test_cli_advise_bad_answer_is_one_error_line(run_cli):
    code, out, err = run_cli("advise", "--prompt-consistency", "80", "--no-input")
    assert code == 1 and out == ""
    assert err.startswith("error: prompt consistency must be a fraction") and "Traceback" not in err


def test_cli_advise_asks_missing_questions_on_a_terminal(run_cli, monkeypatch):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    # Answers in the questionnaire's order for the questions not given as flags: format only? no; facts change
    # often? no; prompt tested? yes; consistency 0.7; 5000 queries/day; 0 classes; a team of 12; platforms: together.
    monkeypatch.setattr(sys, "stdin", Terminal("n\nn\ny\n0.7\n5000\n0\n12\ntogether\n"))
    code, out, err = run_cli(
        "advise", "--problem", "behaviour", "--validated-examples", "300", "--can-judge-quality"
    )
    assert code == 0, err
    assert out.startswith("recommendation: fine-tuning")
    assert "queries_per_day = 5000.0" in out and "prompt_consistency = 0.7" in out
    assert "How consistent was it" in err  # questions go to stderr, results to stdout
    assert "- small-team = " in out and "a team of 12 (under 25)" in out
