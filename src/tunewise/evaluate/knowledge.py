"""Knowledge tasks: the retrieval (rag) arms' prompt, and the measures of short answers and of retrieval.

The rag prompt (`with_passages`): the question's user message is replaced by the top-k passages, each headed by
its number and document, then the question; every other message (the system prompt, earlier turns) is kept:

    Answer the question using the passages below.

    [1] covidqa-1689.txt
    <passage text>

    [2] covidqa-0630.txt
    <passage text>

    Question: how long has Ae. aegypti been established in North America?

Passages come in the retriever's order, best first. `rag+fine-tuned` and training with retrieval use the same
layout, so a model fine-tuned on it is asked exactly as it was trained.

Measures (all per example; `evaluate.summary` aggregates them with 95% intervals):
- **exact match / token F1** against any acceptable answer, after SQuAD's normalisation (lowercase, punctuation
  and the articles a/an/the removed, whitespace collapsed); the best over the answers counts.
- **recall@k**: the gold document is among the documents of the k passages put in the prompt; **MRR**: 1 / the
  rank of the first passage from the gold document (0 when none is).
- **groundedness**: an answer is grounded when every content token of its normalised form (stop words left
  out) occurs among the normalised tokens of the passages it was given; an answer with no content token is not
  counted. A lexical check, not a judge: a grounded answer can still be wrong, and a paraphrase is not grounded.

Acceptable answers and the gold document come from the held-out data: keys `answers` / `doc` on an example, or a
sidecar `NAME.meta.jsonl` beside `NAME.jsonl` with `{"doc", "answers", "id"}` per line, in the same order.
Without them the reference reply is the one acceptable answer and retrieval is not scored.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError
from tunewise.rag.metrics import first_hit

__all__ = [
    "PassageCache",
    "exact_match",
    "grounded",
    "normalize_answer",
    "read_meta",
    "reciprocal_rank",
    "token_f1",
    "with_passages",
]

RAG_INSTRUCTION = "Answer the question using the passages below."

# Content tokens exclude these when judging groundedness: "the cause is X" is grounded when X is in a passage.
_STOP = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being it its this that these "
    "those as into than then there their they he she we you i not no do does did has have had can could will "
    "would may might should shall what which who whom whose when where why how".split()
)


# --- the prompt ---------------------------------------------------------------------------------------


def passages_block(passages: Sequence[Any]) -> str:
    """The numbered passages, each headed by its document.

    >>> from tunewise.rag.passages import Passage
    >>> print(passages_block([Passage("a.md", 0, "Alpha.", 1.0), Passage("b.md", 3, "Beta.", 0.5)]))
    [1] a.md
    Alpha.
    <BLANKLINE>
    [2] b.md
    Beta.
    """
    return "\n\n".join(f"[{i}] {p.doc}\n{p.text.strip()}" for i, p in enumerate(passages, 1))


def with_passages(messages: list[dict], passages: Sequence[Any]) -> list[dict]:
    """The conversation with its last user message rewritten to carry the passages (layout in the module
    docstring). Other messages are copied unchanged.

    >>> from tunewise.rag.passages import Passage
    >>> m = with_passages([{"role": "user", "content": "Who?"}], [Passage("a.md", 0, "Ada did.", 1.0)])
    >>> print(m[0]["content"])
    Answer the question using the passages below.
    <BLANKLINE>
    [1] a.md
    Ada did.
    <BLANKLINE>
    Question: Who?
    """
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return [dict(m) for m in messages]
    last = users[-1]
    out = [dict(m) for m in messages]
    block = passages_block(passages) if passages else "(no passage found)"
    out[last]["content"] = f"{RAG_INSTRUCTION}\n\n{block}\n\nQuestion: {messages[last]['content']}"
    return out


def question_of(messages: list[dict]) -> str:
    """What is retrieved for: the last user message before the reply.

    >>> question_of([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "?"},
    ...              {"role": "user", "content": "Who won?"}, {"role": "assistant", "content": "Ada"}])
    'Who won?'
    """
    last_reply = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages))
    users = [m["content"] for m in messages[:last_reply] if m["role"] == "user"]
    return users[-1] if users else ""


class PassageCache:
    """Retrieval once per question: every rag arm (and its consistency samples) reads the same passages.

    `retriever` is anything with `version` and `retrieve(query, k)` (`tunewise.rag.passages.Retriever`).
    `latency_ms(question)` is the wall time of that question's one retrieval."""

    def __init__(self, retriever: Any, k: int):
        self.retriever = retriever
        self.k = k
        self.version = str(getattr(retriever, "version", ""))
        self._cache: dict[str, tuple[list[Any], float]] = {}

    def __call__(self, question: str) -> list[Any]:
        if question not in self._cache:
            import time

            start = time.perf_counter()
            found = list(self.retriever.retrieve(question, self.k))[: self.k]
            self._cache[question] = (found, (time.perf_counter() - start) * 1000)
        return self._cache[question][0]

    def latency_ms(self, question: str) -> float | None:
        return self._cache[question][1] if question in self._cache else None


def passage_records(passages: Iterable[Any]) -> list[dict[str, Any]]:
    """Passages as the per-example record stores them (text included, so groundedness can be recomputed)."""
    return [{"doc": p.doc, "chunk": p.chunk, "score": p.score, "text": p.text} for p in passages]


# --- answers ------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lowercase, punctuation removed, articles a/an/the removed, whitespace collapsed.

    >>> normalize_answer("The  Cat, sat on a MAT!")
    'cat sat on mat'
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalised prediction equals a normalised acceptable answer.

    >>> exact_match("The Eiffel tower.", ["eiffel tower", "Paris"])
    True
    """
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:
        return float(pred == gold)  # both empty: 1; one empty: 0 (SQuAD's rule)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Token F1 of the normalised prediction against the best-matching acceptable answer.

    >>> round(token_f1("for over 300 years", ["for over 300"]), 4)  # P 3/4, R 3/3
    0.8571
    >>> token_f1("no", ["yes", "no"])
    1.0
    """
    return max((_f1(prediction, a) for a in answers), default=0.0)


def grounded(answer: str, passages: Iterable[str]) -> bool | None:
    """Whether every content token of the normalised answer occurs in the normalised passages; None when the
    answer has no content token (nothing to ground).

    >>> grounded("The virus spreads by droplets.", ["Spread is by respiratory droplets and contact."])
    False
    >>> grounded("respiratory droplets", ["Spread is by respiratory droplets and contact."])
    True
    >>> grounded("the", ["anything"]) is None
    True
    """
    content = [t for t in normalize_answer(answer).split() if t not in _STOP]
    if not content:
        return None
    seen = {t for text in passages for t in normalize_answer(text).split()}
    return all(t in seen for t in content)


def reciprocal_rank(docs: Sequence[str], gold: str) -> float:
    """1 / the rank of the first retrieved passage from the gold document; 0 when none is.

    >>> reciprocal_rank(["a", "b", "c"], "b"), reciprocal_rank(["a"], "z")
    (0.5, 0.0)
    """
    rank = first_hit(docs, gold)
    return 1.0 / rank if rank else 0.0


# --- where acceptable answers come from ---------------------------------------------------------------


def meta_path(data_path: Path) -> Path:
    """The sidecar beside a data file: `test.jsonl` -> `test.meta.jsonl`.

    >>> meta_path(Path("d/test.jsonl")).as_posix()
    'd/test.meta.jsonl'
    """
    return data_path.with_name(data_path.name.rsplit(".", 1)[0] + ".meta.jsonl")


def read_meta(path: Path) -> list[dict[str, Any]]:
    """The sidecar's records, one per non-empty line: `doc` (a document path relative to the knowledge folder)
    and `answers` (a list of acceptable answers), each optional."""
    out: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunewiseError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        answers = record.get("answers") if isinstance(record, dict) else None
        if not isinstance(record, dict) or (
            answers is not None
            and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers))
        ):
            raise TunewiseError(
                f'{path}:{number}: expected {{"doc": "...", "answers": ["..."]}}',
                hint="answers is a list of acceptable answer strings",
            )
        out.append(record)
    return out


def _key(messages: list[dict]) -> str:
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def meta_for(examples: Sequence[dict], data_files: Iterable[Path]) -> list[dict[str, Any]]:
    """For each example `{"answers": [...], "gold_doc": "..."}` (either left out when unknown): keys on the example
    itself, else the line of a data file's sidecar whose example has the same messages (matched by content, so a
    split or a recorded copy of the data keeps them)."""
    from tunewise.data.load import load_examples

    known: dict[str, dict[str, Any]] = {}
    for path in data_files:
        side = meta_path(path)
        if not side.is_file():
            continue
        rows = load_examples(path)
        metas = read_meta(side)
        if len(rows) != len(metas):
            raise TunewiseError(
                f"{side} has {len(metas)} records but {path} has {len(rows)} examples",
                hint="the sidecar holds one line per example, in the same order",
            )
        for row, meta in zip(rows, metas, strict=True):
            known.setdefault(_key(row["messages"]), meta)
    out = []
    for ex in examples:
        meta = dict(known.get(_key(ex["messages"]), {}))
        for field in ("answers", "doc"):
            if field in ex:
                meta[field] = ex[field]
        found = {"answers": meta.get("answers"), "gold_doc": meta.get("doc")}
        out.append({k: v for k, v in found.items() if v})
    return out


def open_knowledge(spec: Any, root: Path, state_dir: Path | None = None) -> Any:
    """The retriever over the spec's `knowledge` documents (`tunewise.rag.index.open_retriever`)."""
    if spec.knowledge is None:
        raise TunewiseError(
            "the rag arms need a knowledge section",
            hint="add `knowledge: {docs: DOCS_FOLDER}` to tunewise.yaml",
        )
    from tunewise.rag.index import open_retriever

    return open_retriever(spec.knowledge, root, state_dir=state_dir)
