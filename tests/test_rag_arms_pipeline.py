"""`tunewise run` with the rag arms on the tiny random model: rag+fine-tuned gets its own run, trained with the
passages in its prompts; fine-tuned keeps a closed-book run."""

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
knowledge: {docs: docs, top_k: 1}
hyperparameters: {epochs: 1}
evaluation: {arms: [zero-shot, rag, fine-tuned, rag+fine-tuned], consistency_samples: 1, max_new_tokens: 3}
"""


class OnePassage:
    version = "idx-one"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def retrieve(self, query: str, k: int) -> list[Passage]:
        self.calls.append(query)
        return [Passage("handbook.md", 0, f"The answer to {query} is blue.", 1.0)]


def test_rag_fine_tuned_trains_its_own_run_with_passages(tmp_path: Path, monkeypatch):
    from tunewise.evaluate import knowledge
    from tunewise.pipeline.run import Pipeline
    from tunewise.project import Project
    from tunewise.spec import load_spec

    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "handbook.md").write_text("# Handbook\n\nEverything is blue.\n")

    def row(q: str, a: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})

    (root / "data" / "train.jsonl").write_text("".join(row(f"question {i}", "blue") + "\n" for i in range(8)))
    (root / "data" / "test.jsonl").write_text(
        row("question x", "blue") + "\n" + row("question y", "blue") + "\n"
    )
    (root / "tunewise.yaml").write_text(SPEC)
    retriever = OnePassage()
    monkeypatch.setattr(knowledge, "open_knowledge", lambda spec, root, state_dir=None: retriever)
    project = Project(root)
    project.runs_dir.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(project, load_spec(root / "tunewise.yaml"))
    pipeline.run()
    train = pipeline.outputs["train"]
    assert train.run_id and train.rag_run_id and train.run_id != train.rag_run_id
    closed_dir, rag_dir = project.runs_dir / train.run_id, project.runs_dir / train.rag_run_id
    assert not (closed_dir / "retrieval.json").exists()
    assert json.loads((rag_dir / "retrieval.json").read_text()) == {
        "index": "idx-one",
        "top_k": 1,
        "retriever": "hybrid",
    }
    # the rag run read copies of the training examples with the passage in the question's message
    data = json.loads((rag_dir / "config.json").read_text())
    data = data.get("config", data)["data"]
    first = json.loads(Path(data[0]).read_text().splitlines()[0])["messages"][0]["content"]
    assert first.startswith("Answer the question using the passages below.\n\n[1] handbook.md\nThe answer to")
    summary = pipeline.outputs["evaluate"].summary().model_dump()
    arms = {a["name"]: a for a in summary["arms"]}
    assert list(arms) == ["zero-shot", "rag", "fine-tuned", "rag+fine-tuned"]
    assert arms["fine-tuned"]["run"] == train.run_id and arms["rag+fine-tuned"]["run"] == train.rag_run_id
    assert arms["rag+fine-tuned"]["trained_with_retrieval"]["index"] == "idx-one"
    assert arms["rag"]["recall_at_k"] is None  # no gold document named
    # The economics price the passage run from its own size: its prompts carry the passage, so more tokens.
    size = pipeline._rag_training_size(1000.0)
    assert size["rag_training_hours"] > 0 and size["rag_training_tokens"] > 1000.0
    # the 8 training questions once; the 2 held-out ones once per evaluation run (baseline: rag; evaluate:
    # rag+fine-tuned), the same passages both times
    assert sorted(retriever.calls) == sorted(
        [f"question {i}" for i in range(8)] + ["question x", "question y"] * 2
    )
    records = [
        json.loads(line) for line in pipeline.outputs["evaluate"].records_path.read_text().splitlines()
    ]
    passages = {
        r["arm"]: [p["text"] for p in r["passages"]] for r in records if r["id"] == "0" and "passages" in r
    }
    assert passages == {
        "rag": ["The answer to question x is blue."],
        "rag+fine-tuned": ["The answer to question x is blue."],
    }
