"""The rag arms end to end on the tiny random model: `tunewise eval --arms zero-shot,rag` and run_evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunewise.rag.passages import Passage

pytest.importorskip("torch")

SPEC = """\
task: {name: tiny-qa, target: Answer a question about the handbook in a few words.}
system_prompt: Answer briefly.
data: {train: data/train.jsonl, eval: data/test.jsonl}
model: {base: "tiny:random"}
knowledge: {docs: docs, top_k: 2}
evaluation: {arms: [zero-shot, rag], consistency_samples: 2, max_new_tokens: 4}
"""

QUESTIONS = [
    ("Who founded Zorblat?", "Ada Quill", "founders.md"),
    ("Where is Zorblat?", "Port Vell", "office.md"),
]
PASSAGES = {
    "Who founded Zorblat?": [
        Passage("founders.md", 0, "Zorblat was founded by Ada Quill.", 2.0),
        Passage("office.md", 1, "The office has a red door.", 1.0),
    ],
    # the gold document is second: reciprocal rank 1/2
    "Where is Zorblat?": [
        Passage("founders.md", 1, "Ada Quill likes tea.", 1.5),
        Passage("office.md", 0, "Zorblat is in Port Vell.", 1.2),
    ],
}


class FixedRetriever:
    version = "idx-fixed"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls.append(query)
        return PASSAGES[query][:k]


def _write_project(root: Path) -> None:
    (root / "data").mkdir(parents=True)
    (root / "docs").mkdir()

    def row(q: str, a: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})

    (root / "data" / "train.jsonl").write_text("".join(row(f"q{i}", f"a{i}") + "\n" for i in range(4)))
    (root / "data" / "test.jsonl").write_text("".join(row(q, a) + "\n" for q, a, _ in QUESTIONS))
    (root / "data" / "test.meta.jsonl").write_text(
        "".join(json.dumps({"doc": d, "answers": [a, a.lower()]}) + "\n" for _, a, d in QUESTIONS)
    )
    (root / "tunewise.yaml").write_text(SPEC)


def test_eval_cli_runs_zero_shot_and_rag(tmp_path, run_cli, monkeypatch):
    from tunewise.evaluate import knowledge

    root = tmp_path / "p"
    _write_project(root)
    retriever = FixedRetriever()
    monkeypatch.setattr(knowledge, "open_knowledge", lambda spec, root, state_dir=None: retriever)
    code, out, err = run_cli("eval", "--arms", "zero-shot,rag", "--json", cwd=root)
    assert code == 0, err
    summary = json.loads(out)
    arms = {a["name"]: a for a in summary["arms"]}
    assert list(arms) == ["zero-shot", "rag"]
    # Once per question, although the arm answers each one greedily and twice more sampled.
    assert retriever.calls == [q for q, _, _ in QUESTIONS]
    rag = arms["rag"]
    assert rag["retrieval"] == {"index": "idx-fixed", "top_k": 2, "retriever": "hybrid"}
    assert rag["recall_at_k"]["value"] == 1.0 and rag["k"] == 2
    assert rag["mrr"]["value"] == pytest.approx((1 + 1 / 2) / 2)
    assert "recall_at_k" not in arms["zero-shot"] and arms["zero-shot"]["exact_match"]["n"] == 2
    # the passages cost prompt tokens: measured with the real prompt
    assert rag["prompt_tokens"] > arms["zero-shot"]["prompt_tokens"] + 20
    records = [
        json.loads(line)
        for line in next((root / ".tunewise" / "runs").glob("eval-*/records.jsonl")).read_text().splitlines()
    ]
    rag_records = [r for r in records if r["arm"] == "rag"]
    assert [[p["doc"] for p in r["passages"]] for r in rag_records] == [
        ["founders.md", "office.md"],
        ["founders.md", "office.md"],
    ]
    assert all(r["answers"] and r["gold_doc"] for r in records)
    assert all("passages" not in r for r in records if r["arm"] == "zero-shot")
    # and without --json the knowledge table is printed beside the arms table
    code, out, err = run_cli("eval", "--arms", "zero-shot,rag", "--limit", "1", cwd=root)
    assert code == 0, err
    assert "against the reference and retrieval" in out and "recall@k" in out and "token F1" in out


def test_rag_fine_tuned_reads_the_same_passages_without_a_system_prompt(tmp_path, monkeypatch):
    """rag and rag+fine-tuned share one retrieval per question; rag+fine-tuned is asked as it was trained."""
    from tunewise.evaluate import run as run_module
    from tunewise.models.loading import load_model, load_tokenizer
    from tunewise.project import Project
    from tunewise.spec import load_spec

    root = tmp_path / "p"
    _write_project(root)
    project = Project(root)
    spec = load_spec(root / "tunewise.yaml")
    tok = load_tokenizer("tiny:random")
    # The fine-tuned model's weights do not matter here, only which prompts it gets.
    monkeypatch.setattr(
        run_module,
        "load_fine_tuned",
        lambda project, ref, base=None: (
            load_model("tiny:random", tokenizer=tok).eval(),
            tok,
            {"run_id": ref},
        ),
    )
    from tunewise.evaluate import engine as engine_module

    seen: dict[int, list[list[dict]]] = {}  # engine -> the prompts it answered greedily
    original = engine_module.LocalEngine.generate

    def spy(self, prompts, **kwargs):
        seen.setdefault(id(self), []).extend(prompts)
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(engine_module.LocalEngine, "generate", spy)
    retriever = FixedRetriever()
    from tunewise.data.load import load_examples

    held = load_examples(root / "data" / "test.jsonl")
    result = run_module.run_evaluation(
        spec, project, [], held, ["rag", "rag+fine-tuned"], rag_fine_tuned_run="train-x", retriever=retriever
    )
    assert retriever.calls == [q for q, _, _ in QUESTIONS]
    arms = {a["name"]: a for a in result.summary["arms"]}
    assert arms["rag+fine-tuned"]["kind"] == "fine-tuned" and arms["rag+fine-tuned"]["run"] == "train-x"
    assert arms["rag"]["kind"] == "prompted"
    assert len(seen) == 2  # the base model and the fine-tuned one
    (rag_prompt, *_), (tuned_prompt, *_) = seen.values()
    assert rag_prompt[0] == {"role": "system", "content": "Answer briefly."}
    assert [m["role"] for m in tuned_prompt] == ["user"]
    assert tuned_prompt[0]["content"] == rag_prompt[1]["content"]
    assert tuned_prompt[0]["content"].startswith(
        "Answer the question using the passages below.\n\n[1] founders.md"
    )
    assert result.summary["arm_info"]["rag+fine-tuned"]["retrieval"]["index"] == "idx-fixed"


def test_eval_with_the_real_index_retrieves_the_gold_document(tmp_path, run_cli):
    """The rag arm over the project's own documents (BM25 index, built on first use): the passage that holds the
    answer is in the prompt, so recall@k is 1 and the records name the gold document first."""
    root = tmp_path / "p"
    _write_project(root)
    (root / "docs" / "founders.md").write_text(
        "# Founders\n\nThe company was founded by Ada Quill in a barn.\n"
    )
    (root / "docs" / "office.md").write_text("# Office\n\nZorblat is in Port Vell, behind the harbour.\n")
    (root / "docs" / "menu.md").write_text("# Menu\n\nThe canteen serves soup on Fridays.\n")
    (root / "tunewise.yaml").write_text(
        SPEC.replace(
            "knowledge: {docs: docs, top_k: 2}", "knowledge: {docs: docs, top_k: 2, retriever: bm25}"
        )
    )
    code, out, err = run_cli("eval", "--arms", "rag", "--samples", "1", "--json", cwd=root)
    assert code == 0, err
    rag = json.loads(out)["arms"][0]
    assert rag["recall_at_k"]["value"] == 1.0 and rag["mrr"]["value"] == 1.0
    assert rag["retrieval"]["retriever"] == "bm25" and rag["retrieval"]["index"]
    records = [
        json.loads(line)
        for line in next((root / ".tunewise" / "runs").glob("eval-*/records.jsonl")).read_text().splitlines()
    ]
    assert [r["passages"][0]["doc"] for r in records] == ["founders.md", "office.md"]
    assert "Ada Quill" in records[0]["passages"][0]["text"]


def test_train_with_passages_reads_copies_that_carry_them(tmp_path, run_cli, monkeypatch):
    """`tunewise train --with-passages` trains on recorded copies of the data whose prompts hold the passages."""
    from tunewise.evaluate import knowledge

    root = tmp_path / "p"
    _write_project(root)
    retriever = FixedRetriever()
    for i in range(4):
        monkeypatch.setitem(PASSAGES, f"q{i}", [Passage("founders.md", i, f"passage {i}", 1.0)])
    monkeypatch.setattr(knowledge, "open_knowledge", lambda spec, root, state_dir=None: retriever)
    code, out, err = run_cli("train", "--with-passages", "--dry-run", "--json", cwd=root)
    assert code == 0, err
    assert sorted(set(retriever.calls)) == [
        "Where is Zorblat?",
        "Who founded Zorblat?",
        "q0",
        "q1",
        "q2",
        "q3",
    ]
    copies = sorted((root / ".tunewise").rglob("train-rag.jsonl"))
    assert len(copies) == 1
    first = json.loads(copies[0].read_text().splitlines()[0])["messages"]
    assert first[0]["content"].endswith("[1] founders.md\npassage 0\n\nQuestion: q0")
    assert first[1] == {"role": "assistant", "content": "a0"}
    (root / "tunewise.yaml").write_text(
        SPEC.replace("knowledge: {docs: docs, top_k: 2}\n", "").replace(", rag]", "]")
    )
    code, _, err = run_cli("train", "--with-passages", "--dry-run", cwd=root)
    assert code == 1 and "--with-passages needs the spec's knowledge section" in err
