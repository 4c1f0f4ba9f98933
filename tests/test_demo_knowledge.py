"""The knowledge demo's data: deterministic, split by document, every answer in its own document and in no
other, meta sidecars in the shape the retrieval metrics read, a spec that loads."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml

from tunewise.data.demo_knowledge import (
    FACTS_PER_DOC,
    knowledge_documents,
    knowledge_spec_yaml,
    knowledge_split,
    write_knowledge_project,
)
from tunewise.spec import BUILTIN_ARMS, KnowledgeSpec, parse_spec


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def mentions(text: str, answer: str) -> bool:
    """The answer as a whole phrase (so '41 hours' is not found inside '141 hours')."""
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None


def test_same_seed_same_bytes(tmp_path):
    a = digest(write_knowledge_project(tmp_path / "a", seed=3))
    b = digest(write_knowledge_project(tmp_path / "b", seed=3))
    c = digest(write_knowledge_project(tmp_path / "c", seed=4))
    assert a == b
    assert a["data/eval.jsonl"] != c["data/eval.jsonl"]
    assert {"tunewise.yaml", "prices.yaml", "data/train.jsonl", "data/train.meta.jsonl", "data/eval.jsonl",
            "data/eval.meta.jsonl"} <= set(a)  # fmt: skip
    assert sum(name.startswith("docs/") and name.endswith(".md") for name in a) == 44


def test_held_out_questions_are_about_documents_no_training_question_touches():
    s = knowledge_split(44, 8, seed=0)
    train_docs = {m["doc"] for m in s.train_meta}
    eval_docs = {m["doc"] for m in s.eval_meta}
    assert len(eval_docs) == 8 and len(train_docs) == 36 and not train_docs & eval_docs
    assert {d.kind for d in s.eval_docs} == {"product", "policy", "person"}  # drawn from each kind in turn
    assert len(s.train) >= 200  # the guide's minimum of validated examples
    for n_docs in range(2, 10):  # any size: exactly the held-out documents asked for
        for n_eval in range(1, n_docs):
            assert len(knowledge_split(n_docs, n_eval, seed=1).eval_docs) == n_eval


def test_every_answer_is_in_its_document_and_in_no_other():
    s = knowledge_split(44, 8, seed=0)
    by_name = {d.name: d for d in s.documents}
    for example, meta in zip(s.eval + s.train, s.eval_meta + s.train_meta, strict=True):
        answer = example["messages"][1]["content"]
        assert meta["answers"][0] == answer
        for accepted in meta["answers"]:
            assert accepted in by_name[meta["doc"]].text, (accepted, meta["doc"])
            others = [d.name for d in s.documents if d.name != meta["doc"] and mentions(d.text, accepted)]
            assert others == [], (accepted, others)
    # so no held-out answer is in a training document, nor a training answer
    train_text = "\n".join(d.text for d in s.train_docs)
    assert not any(mentions(train_text, a) for m in s.eval_meta for a in m["answers"])
    assert not any(m["answers"][0] in (e["messages"][1]["content"] for e in s.train) for m in s.eval_meta)


def test_questions_are_short_answers_about_invented_facts():
    docs = knowledge_documents(9, seed=0)
    assert [d.kind for d in docs[:3]] == ["product", "policy", "person"]
    assert all(len(d.facts) >= FACTS_PER_DOC - 1 for d in docs)  # a repeated role's question is dropped
    for d in docs:
        for f in d.facts:
            assert f.question.endswith("?") and len(f.answer.split()) <= 4
            assert re.search(r"\w", f.answer)


def test_meta_sidecars_are_beside_the_jsonl_in_the_shape_the_metrics_read(tmp_path):
    folder = write_knowledge_project(tmp_path / "k")
    for part in ("train", "eval"):
        examples = lines(folder / "data" / f"{part}.jsonl")
        meta = lines(folder / "data" / f"{part}.meta.jsonl")
        assert len(examples) == len(meta)
        assert all(set(m) == {"doc", "answers", "id"} for m in meta)
        assert all((folder / "docs" / m["doc"]).is_file() for m in meta)
        assert len({m["id"] for m in meta}) == len(meta)
        assert all([r["role"] for r in ex["messages"]] == ["user", "assistant"] for ex in examples)


def test_the_scaffolded_spec_loads(tmp_path):
    folder = write_knowledge_project(tmp_path / "k")
    raw = yaml.safe_load((folder / "tunewise.yaml").read_text(encoding="utf-8"))
    knowledge = KnowledgeSpec.model_validate(raw["knowledge"])
    assert knowledge.docs == ["docs"] and knowledge.top_k == 1
    assert raw["evaluation"]["arms"] == ["zero-shot", "rag", "fine-tuned", "rag+fine-tuned"]
    # Everything but the retrieval arms loads with the spec as it is; the arms load once they are built in.
    closed = dict(raw, evaluation=dict(raw["evaluation"], arms=["zero-shot", "fine-tuned"]))
    spec = parse_spec(yaml.safe_dump(closed))
    assert spec.contract.type == "text" and spec.economics.vector_db == "embedded"
    assert spec.knowledge is not None and spec.knowledge.chunk_tokens == 128
    if "rag" not in BUILTIN_ARMS:
        pytest.skip("the rag arms are not built into this checkout's spec yet")
    assert parse_spec(knowledge_spec_yaml()).evaluation.arms == raw["evaluation"]["arms"]


def test_demo_cli_names_the_tasks(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--task", "knowlege", "--dir", tmp_path / "x")
    assert code == 1
    assert "unknown demo task 'knowlege' (did you mean 'knowledge'?)" in err
    assert not (tmp_path / "x").exists()
