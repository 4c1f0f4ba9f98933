"""The blind preference in the verdict of a free-text task: reviewers (enough items), else the judge, else the
reference metrics; an interval that includes 50% reads "could not tell them apart: prompt engineering is
sufficient"."""

from __future__ import annotations

from tests.review_fixtures import eval_project
from tests.test_rag_verdict import CATALOG, ECON, arm, paired
from tunewise.decide.verdict import decide
from tunewise.outputs import EvalSummary
from tunewise.review import stats
from tunewise.review.results import MIN_REVIEWED_ITEMS, preference_for
from tunewise.review.store import ReviewStore


def prose() -> EvalSummary:
    """Both arms meet the bars and the fine-tuned one is cheaper: without a preference, it is 'fine-tune'."""
    return EvalSummary.model_validate(
        {
            "n_examples": 200,
            "contract": "text",
            "arms": [arm("few-shot", 0.90), arm("fine-tuned", 0.95, "fine-tuned")],
            "paired": [paired("fine-tuned", "few-shot", 0.05, 0.03)],
        }
    )


def pref(outcomes: list[str], source: str = "reviewers") -> dict:
    return {"tuned": "fine-tuned", "prompted": "few-shot", "source": source, "measured_by": "test",
            **stats.preference(outcomes)}  # fmt: skip


def test_could_not_tell_apart_is_a_verdict():
    assert decide(prose(), ECON, CATALOG).recommendation == "fine-tune"
    v = decide(prose(), ECON, CATALOG, preference=pref(["a"] * 22 + ["b"] * 18 + ["tie"] * 5))
    assert v.recommendation == "keep prompting"
    assert v.headline.startswith("Keep prompting: reviewers could not tell fine-tuned and few-shot apart")
    assert v.headline.endswith("prompt engineering is sufficient")
    rule = next(r for r in v.rules if r.rule == "blind preference")
    assert rule.passed is False and rule.numbers["source"] == "reviewers" and rule.numbers["decisive"] == 40


def test_a_clear_preference_supports_or_overrides():
    preferred = decide(prose(), ECON, CATALOG, preference=pref(["a"] * 35 + ["b"] * 5, source="the judge"))
    assert preferred.recommendation == "fine-tune"
    assert preferred.reasons[0].startswith("blind preference: the judge preferred fine-tuned")
    against = decide(prose(), ECON, CATALOG, preference=pref(["a"] * 5 + ["b"] * 35))
    assert against.recommendation == "keep prompting" and "reviewers preferred few-shot" in against.headline


def test_preference_for_uses_reviewers_only_with_enough_items(tmp_path):
    project, run_id = eval_project(tmp_path, n=MIN_REVIEWED_ITEMS, arms=("few-shot", "fine-tuned"))
    # No review and no judge: the reference metrics; both arms' answers score the same ROUGE-L: all ties.
    p = preference_for(project, run_id, "fine-tuned", "few-shot", "text")
    assert p["source"] == "the reference metrics" and p["ties"] == MIN_REVIEWED_ITEMS and p["could_not_tell"]
    store = ReviewStore(project)
    review = store.create(["few-shot", "fine-tuned"], run_id)  # arm a is the prompted one
    token = store.join(review["id"], "Ada")["token"]
    for position in range(
        MIN_REVIEWED_ITEMS - 1
    ):  # one short of the minimum: always picks the fine-tuned arm
        left = store.state(review["id"], token)["item"]["left"]
        store.choose(review["id"], token, position, "left" if left.startswith("ANSWER-B") else "right")
    assert (
        preference_for(project, run_id, "fine-tuned", "few-shot", "text")["source"] == "the reference metrics"
    )
    left = store.state(review["id"], token)["item"]["left"]
    store.choose(
        review["id"], token, MIN_REVIEWED_ITEMS - 1, "left" if left.startswith("ANSWER-B") else "right"
    )
    p = preference_for(project, run_id, "fine-tuned", "few-shot", "text")
    assert p["source"] == "reviewers"
    assert (p["wins"], p["losses"], p["could_not_tell"]) == (
        MIN_REVIEWED_ITEMS,
        0,
        False,
    )  # seen from fine-tuned
