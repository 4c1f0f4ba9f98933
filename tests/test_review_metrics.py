"""Reference-based text metrics beside exact match: ROUGE-L and chrF for text contracts and json text fields."""

from __future__ import annotations

import pytest

from tunewise.evaluate.scorers import score, text_chrf
from tunewise.evaluate.summary import build_summary


def test_text_contracts_get_rouge_l_and_chrf_beside_exact_match():
    s = score("the cat sat", "the cat sat down", "text")
    # LCS 3 words: precision 3/3, recall 3/4, F1 = 2 * 1 * 0.75 / 1.75.
    assert s.rouge_l == pytest.approx(round(2 * 0.75 / 1.75, 4))
    assert s.correct is False
    assert score("same words", "same words", "text").text_chrf == 1.0
    assert text_chrf("xyz", "abc") == 0.0
    records = [
        {"id": 0, "input": "q", "reference": "the cat sat down", "arm": "few-shot", "output": "the cat sat"},
        {"id": 1, "input": "q", "reference": "a dog", "arm": "few-shot", "output": "a dog"},
    ]
    arm = build_summary(records, "text", task="t").arms[0].model_dump()
    assert arm["rouge_l"]["value"] == pytest.approx((round(2 * 0.75 / 1.75, 4) + 1.0) / 2)
    assert 0 < arm["chrf"]["value"] < 1
    assert arm["exact_match"]["value"] == 0.5


def test_json_text_fields_get_chrf_beside_rouge_l():
    contract = {"type": "json", "text_fields": ["reply"]}
    s = score(
        '{"intent": "x", "reply": "we will refund"}', '{"intent": "x", "reply": "we will refund"}', contract
    )
    assert (s.correct, s.text_similarity, s.text_chrf) == (True, 1.0, 1.0)
    s = score('{"intent": "x"}', '{"intent": "x", "reply": "we will refund"}', contract)
    assert s.text_chrf == 0.0  # the reply is missing
