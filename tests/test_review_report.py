"""The report's free-text section: the preference the verdict used, the judge's agreement with people (said
plainly when low), the items where they disagree, and ROUGE-L and chrF beside exact match."""

from __future__ import annotations

from tests.test_rag_verdict import CATALOG, ECON
from tests.test_review_verdict import pref, prose
from tunewise.decide.verdict import decide
from tunewise.report.build import build_report


def test_the_report_shows_the_preference_the_judge_agreement_and_the_metrics(tmp_path):
    preference = pref(["a"] * 22 + ["b"] * 18 + ["tie"] * 5)
    preference["judge"] = {
        "judge": ["local:embedded:smollm2-135m-instruct"],
        "preference": {"win_rate": {"value": 0.8, "low": 0.6, "high": 0.9}},
        "agreement_with_people": {"kappa": 0.12, "reading": "slight", "items": 45, "low": True},
        "disagreements": [{"example_id": "ex-7", "people": "b", "judge": "a"}],
    }
    summary = prose().model_dump(mode="json")
    for arm, (r, c) in zip(summary["arms"], ((0.41, 0.52), (0.47, 0.58))):
        arm["rouge_l"] = {"value": r, "low": r - 0.03, "high": r + 0.03}
        arm["chrf"] = {"value": c, "low": c - 0.03, "high": c + 0.03}
    verdict = decide(prose(), ECON, CATALOG, preference=preference).to_dict()
    state = {"project": "p", "evaluation": summary, "verdict": verdict}
    html_path, json_path = build_report(state, tmp_path)
    html = html_path.read_text()
    assert "Reviewers could not tell fine-tuned and few-shot apart: prompt engineering is sufficient" in html
    assert "too low for the judge to stand in for people on this task" in html
    assert "kappa 0.12 (slight, 45 items)" in html
    assert '<td class="mono">ex-7</td>' in html
    assert "47.0% [44.0%, 50.0%]" in html and "58.0% [55.0%, 61.0%]" in html  # ROUGE-L, chrF of fine-tuned
    assert "judge" in json_path.read_text()  # report.json keeps the preference with the verdict
