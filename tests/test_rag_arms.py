"""The rag arms: the prompt layout, retrieval once per question, short-answer and retrieval measures, the spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.errors import ConfigError
from tunewise.evaluate.knowledge import (
    PassageCache,
    exact_match,
    grounded,
    meta_for,
    normalize_answer,
    token_f1,
    with_passages,
)
from tunewise.rag.passages import Passage
from tunewise.spec import parse_spec

BASE = """\
task: {name: qa, target: Answer a question about the documents in a few words.}
system_prompt: Answer briefly.
data: {train: data/train.jsonl}
"""


class FixedRetriever:
    """A retriever with fixed answers per question, counting its calls."""

    version = "idx-test"

    def __init__(self, passages: dict[str, list[Passage]]):
        self.passages = passages
        self.calls: list[tuple[str, int]] = []

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls.append((query, k))
        return self.passages.get(query, [])[:k]


# --- answers ------------------------------------------------------------------------------------------


def test_exact_match_and_f1_by_hand():
    assert normalize_answer("  The Answer: A cat!  ") == "answer cat"
    # Articles and punctuation never decide a match; the best over the acceptable answers counts.
    assert exact_match("An apple.", ["apple"]) is True
    assert exact_match("apples", ["apple", "pear"]) is False
    assert exact_match("Pear", ["apple", "the pear"]) is True
    # "for over 300 years" vs "for over 300": 3 common tokens, P = 3/4, R = 3/3, F1 = 2PR/(P+R) = 6/7
    assert token_f1("for over 300 years", ["for over 300"]) == pytest.approx(6 / 7)
    # vs "about 300 years": common {300, years} = 2, P = 2/4, R = 2/3, F1 = 4/7; the max is 6/7
    assert token_f1("for over 300 years", ["about 300 years", "for over 300"]) == pytest.approx(6 / 7)
    assert token_f1("the a an", ["the"]) == 1.0  # both empty after normalisation
    assert token_f1("x", ["the"]) == 0.0
    # A repeated token counts as often as both sides hold it: "x x y" vs "x y y" share x once and y once,
    # so P = R = 2/3 and F1 = 2/3
    assert token_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)


def test_groundedness_by_hand():
    passages = ["Phosphorylation of CEACAM1 ITIM motifs activates caspase-3."]
    assert grounded("phosphorylation of CEACAM1", passages) is True
    # "caspase3" (punctuation dropped) is in the passage, "9" is not
    assert grounded("Caspase-3 and caspase-9", passages) is False
    assert grounded("It is the", passages) is None  # no content token: not counted
    assert grounded("anything", []) is False


# --- the prompt -----------------------------------------------------------------------------------------


def test_rag_prompt_holds_the_passages_in_order_with_their_documents():
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who found it?"},
    ]
    found = [Passage("b.md", 2, "Bea found it.", 2.0), Passage("a.md", 0, "Ada looked.", 1.0)]
    out = with_passages(messages, found)
    assert out[0] == messages[0] and messages[1]["content"] == "Who found it?"  # input left unchanged
    assert out[1]["content"] == (
        "Answer the question using the passages below.\n\n"
        "[1] b.md\nBea found it.\n\n"
        "[2] a.md\nAda looked.\n\n"
        "Question: Who found it?"
    )


def test_retrieval_runs_once_per_question():
    retriever = FixedRetriever({"q": [Passage("a", 0, "t", 1.0)] * 5})
    cache = PassageCache(retriever, k=3)
    first = cache("q")
    assert cache("q") is first and len(first) == 3
    assert retriever.calls == [("q", 3)] and cache.latency_ms("q") is not None


# --- the spec -------------------------------------------------------------------------------------------


def test_rag_arm_without_knowledge_is_one_spec_error():
    with pytest.raises(ConfigError) as info:
        parse_spec(BASE + "evaluation: {arms: [zero-shot, rag]}\n")
    assert len(info.value.problems) == 1
    assert "'rag' retrieves from documents but the spec has no knowledge section" in info.value.problems[0]
    assert "knowledge: {docs: FOLDER}" in info.value.problems[0]


def test_rag_fine_tuned_parses_as_its_own_arm():
    from tunewise.evaluate.arms import base_arm, is_rag_arm, is_tuned_arm
    from tunewise.evaluate.constrain import split_arm
    from tunewise.evaluate.run import plan_arms

    spec = parse_spec(
        BASE + "knowledge: {docs: docs}\nevaluation: {arms: [zero-shot, rag, fine-tuned, rag+fine-tuned]}\n"
    )
    assert spec.evaluation.arms[-1] == "rag+fine-tuned"
    assert split_arm("rag+fine-tuned") == ("rag+fine-tuned", None)
    assert split_arm("rag+fine-tuned+scored") == ("rag+fine-tuned", "scored")
    assert base_arm("rag+fine-tuned:train-1") == "rag+fine-tuned"
    assert is_tuned_arm("rag+fine-tuned") and is_rag_arm("rag+fine-tuned") and not is_tuned_arm("rag")
    label = {"type": "label", "labels": ["a", "b"]}
    # the prompted rag arm gets its contract variant by default, the fine-tuned one only when asked
    assert plan_arms(["rag", "rag+fine-tuned"], label) == ["rag", "rag+scored", "rag+fine-tuned"]
    assert plan_arms(["rag+fine-tuned"], label, constrained=True) == [
        "rag+fine-tuned",
        "rag+fine-tuned+scored",
    ]
    with pytest.raises(ConfigError, match=r"'rag\+constrained' does not fit a label contract"):
        parse_spec(
            BASE
            + "contract: {type: label, labels: [a, b]}\nknowledge: {docs: d}\nevaluation: {arms: [rag+constrained]}\n"
        )


# --- acceptable answers ---------------------------------------------------------------------------------


def _ex(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def test_sidecar_meta_matched_by_content(tmp_path: Path):
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(_ex(q, a)) + "\n" for q, a in [("q1", "a1"), ("q2", "a2")]))
    (tmp_path / "test.meta.jsonl").write_text(
        '{"doc": "d1.txt", "answers": ["a1", "A one"], "id": "x1"}\n{"doc": "d2.txt", "answers": ["a2"]}\n'
    )
    # a reordered copy (a split, a recorded dataset version) keeps each example's own answers
    held = [_ex("q2", "a2"), _ex("q1", "a1"), _ex("q3", "a3")]
    assert meta_for(held, [data]) == [
        {"answers": ["a2"], "gold_doc": "d2.txt"},
        {"answers": ["a1", "A one"], "gold_doc": "d1.txt"},
        {},
    ]
    (tmp_path / "test.meta.jsonl").write_text('{"doc": "d1.txt", "answers": ["a1"]}\n')
    with pytest.raises(Exception, match="has 1 records but .* has 2 examples"):
        meta_for(held, [data])


# --- the summary ----------------------------------------------------------------------------------------


def _record(arm: str, i: int, output: str, docs: list[str] | None, gold: str = "g") -> dict:
    record = {
        "id": str(i),
        "input": f"question {i}",
        "reference": "red fox",
        "answers": ["red fox", "a fox"],
        "gold_doc": gold,
        "arm": arm,
        "output": output,
    }
    if docs is not None:
        record["passages"] = [
            {"doc": d, "chunk": 0, "score": 1.0, "text": "the quick red fox jumps"} for d in docs
        ]
    return record


def test_summary_measures_answers_and_retrieval_by_hand():
    from tunewise.evaluate.summary import build_summary

    records = [
        # rag: gold at rank 1, 2, absent, 1 -> recall 3/4, MRR (1 + 1/2 + 0 + 1) / 4 = 0.625
        _record("rag", 0, "Red fox.", ["g", "x"]),
        _record("rag", 1, "fox", ["x", "g"]),
        _record("rag", 2, "blue whale", ["x", "y"]),
        _record("rag", 3, "the quick fox", ["g", "g"]),
        _record("zero-shot", 0, "a dog", None),
        _record("zero-shot", 1, "red fox", None),
        _record("zero-shot", 2, "whale", None),
        _record("zero-shot", 3, "no idea", None),
    ]
    summary = build_summary(records, {"type": "text"}, task="qa").model_dump()
    rag, zero = summary["arms"]
    # EM: "Red fox." = "red fox"; "fox" = "a fox" (article dropped); others not -> 2/4
    assert rag["exact_match"]["value"] == 0.5 and rag["exact_match"]["n"] == 4
    # F1 per example: 1, 1, 0, and "quick fox" against the better of "red fox" (P = R = 1/2: 1/2) and
    # "fox" (P = 1/2, R = 1: 2/3) -> 2/3; mean (2 + 2/3) / 4 = 2/3
    assert rag["token_f1"]["value"] == pytest.approx(2 / 3)
    assert rag["recall_at_k"]["value"] == 0.75 and rag["k"] == 2
    assert rag["mrr"]["value"] == pytest.approx(0.625)
    # grounded: red fox yes, fox yes, blue whale no, quick fox yes -> 3/4
    assert rag["grounded_rate"]["value"] == 0.75
    assert 0 < rag["grounded_rate"]["low"] < 0.75 < rag["grounded_rate"]["high"] < 1
    assert zero["exact_match"]["value"] == 0.25 and "recall_at_k" not in zero and "grounded_rate" not in zero
    pair = next(p for p in summary["paired"] if p["a"] == "rag" and p["b"] == "zero-shot")
    assert pair["exact_match_diff"]["value"] == 0.25
    # exact match: both right on example 1, only rag on example 0: one discordant pair, p = min(1, 2 * 1/2)
    assert pair["exact_match_mcnemar_p"] == 1.0
    assert pair["token_f1_diff"]["value"] == pytest.approx(2 / 3 - 1 / 4)


def test_passages_count_as_input_for_unsupported_content():
    from tunewise.evaluate.summary import score_records

    record = {"id": "0", "input": "Where?", "reference": "x", "arm": "rag", "output": "Room B12"}
    closed = score_records([record], {"type": "text"})[0]
    rag = score_records(
        [{**record, "passages": [{"doc": "d", "chunk": 0, "score": 1.0, "text": "It is in room B12."}]}],
        {"type": "text"},
    )[0]
    assert closed["unsupported"] is True and rag["unsupported"] is False


# --- training with passages -----------------------------------------------------------------------------


def test_training_prompts_carry_the_passages_and_train_only_the_reply():
    from tunewise.models.loading import load_tokenizer
    from tunewise.train.data import tokenize_example, with_retrieved_passages

    tok = load_tokenizer("tiny:random")
    retriever = FixedRetriever({"Who founded it?": [Passage("f.md", 0, "Ada Quill founded Zorblat.", 1.0)]})
    cache = PassageCache(retriever, k=4)
    examples = [
        _ex("Who founded it?", "Ada Quill"),
        _ex("Who founded it?", "Ada Quill"),
        {"messages": [{"role": "assistant", "content": "no question"}]},
    ]
    out = with_retrieved_passages(examples, cache)
    assert retriever.calls == [("Who founded it?", 4)]  # once per distinct question
    assert out[2] == examples[2] and examples[0]["messages"][0]["content"] == "Who founded it?"
    # the same layout the rag arms are asked with
    assert out[0]["messages"][:1] == with_passages(examples[0]["messages"][:1], cache("Who founded it?"))
    closed = tokenize_example(tok, examples[0]["messages"])
    rag = tokenize_example(tok, out[0]["messages"])
    trained = lambda e: [t for t, m in zip(e.input_ids, e.mask, strict=True) if m]  # noqa: E731
    assert trained(rag) == trained(closed) and len(rag) > len(closed) + 8
    assert "Ada Quill founded Zorblat." in tok.decode(rag.input_ids)
