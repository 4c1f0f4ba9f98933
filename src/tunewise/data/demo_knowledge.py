"""The built-in knowledge demo: questions about a fictional company whose facts no model can know.

The guide's point, made measurable: "Fine-tuning does not teach the model new facts reliably. It teaches
behavior. For knowledge grounding, RAG is the correct approach." The company (Quillmere Instruments) has product
sheets, policies and staff profiles; every name, number and date in them is drawn from a seeded
`random.Random`, so no pretrained model has seen them. Each document states six facts; each fact has a question
with a short answer (a name, a number with its unit, or a date) that appears verbatim in the document.

The split is by document: held-out questions ask about documents that no training question touches, and every
value is unique across the corpus, so a model fine-tuned closed-book on the training questions cannot have seen
a held-out answer. Retrieval over the documents can find it. Beside the held-out file, `eval.meta.jsonl` holds
one line per question, `{"doc", "answers", "id"}`: the document that answers it (a file name under `docs/`) and
every acceptable answer (the document's words first; a number also without its unit), which the retrieval
metrics (recall@k, exact match, F1) read.

The same seed gives the same bytes on every machine.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunewise.fileio import atomic_write_text
from tunewise.project import SPEC_NAME

COMPANY = "Quillmere Instruments"
KINDS = ("product", "policy", "person")
FACTS_PER_DOC = 6

KNOWLEDGE_SYSTEM_PROMPT = f"""\
You answer questions about {COMPANY}, a maker of field instruments.
Answer with the short answer only: a name, a number with its unit, or a date, exactly as the company's documents
write it. No sentence, no explanation."""

# --- invented words: names no model has seen ---------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gl", "k", "kr", "l", "m", "n", "p", "pr", "r", "s", "st", "t", "tr",
           "v", "z", "th", "sh", "qu")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u", "ae", "io", "ou")
_CODAS = ("", "n", "r", "l", "s", "x", "th", "nd", "rk", "m")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")  # fmt: skip
_ROLES = ("Head of Calibration", "Director of Field Operations", "Chief Metrologist", "Quality Lead",
          "Head of Procurement", "Regional Sales Director", "Principal Firmware Engineer", "Logistics Manager")  # fmt: skip
_DEVICES = ("hygrometer", "anemometer", "flow sensor", "pressure logger", "soil probe", "spectrometer",
            "tide gauge", "seismograph")  # fmt: skip
_POLICIES = ("travel", "equipment loan", "remote work", "returns", "warranty", "training budget")


@dataclass
class Fact:
    question: str
    answer: str  # as the document writes it; the training target
    answers: list[str] = field(default_factory=list)  # every acceptable answer, the document's words first


def _variants(answer: str) -> list[str]:
    """A number without its unit is the same fact: '41 hours' -> '41', 'every 11 months' -> '11 months'.

    >>> _variants("41 hours"), _variants("every 11 months"), _variants("EMP-4966")
    (['41'], ['11 months'], [])
    """
    match = re.fullmatch(r"(every )?(\d+) (\w+)", answer)
    if match is None:
        return []
    return [f"{match[2]} {match[3]}" if match[1] else match[2]]


def _mentions(text: str, phrase: str) -> bool:
    """The phrase as a whole (so '41' is not found inside '141' or 'EMP-4166')."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


@dataclass
class Document:
    """One Markdown document: its file name under docs/, its text and the facts it states."""

    name: str
    kind: str
    title: str
    text: str = ""
    facts: list[Fact] = field(default_factory=list)


class _Unique:
    """Draws values no other document repeats: invented words and numbers, each used once in the corpus."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: set[str] = set()

    def _take(self, make) -> str:
        for _ in range(10_000):
            value = make()
            if value.lower() not in self.seen:
                self.seen.add(value.lower())
                return value
        raise RuntimeError("the demo generator ran out of unique values")  # a bug: the spaces are large

    def word(self, syllables: int = 2) -> str:
        r = self.rng

        def make() -> str:
            w = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(syllables)) + r.choice(_CODAS)
            return w.capitalize()

        return self._take(make)

    def person(self) -> str:
        return f"{self.word(2)} {self.word(3)}"

    def number(self, low: int, high: int) -> int:
        # Numbers are unique across the corpus too, so "41 hours" in one document is never an answer in another.
        return int(self._take(lambda: str(self.rng.randint(low, high))))

    def date(self) -> str:
        r = self.rng
        return self._take(lambda: f"{r.randint(1, 28)} {r.choice(_MONTHS)} {r.randint(2009, 2024)}")

    def code(self, prefix: str) -> str:
        return self._take(lambda: f"{prefix}-{self.rng.randint(1000, 9999)}")


def _money(n: int) -> str:
    return f"${n:,}"


def _product(u: _Unique, rng: random.Random) -> Document:
    name = f"{u.word(2)} {rng.choice('KMRTVX')}{rng.randint(2, 9)}"
    device = rng.choice(_DEVICES)
    title = f"the {name} {device}"
    code, launch = u.code(name[:2].upper()), u.date()
    weight, battery, price = u.number(120, 980), u.number(12, 400), u.number(1100, 9800)
    plant, engineer = u.word(3), u.person()
    facts = [
        Fact(f"What is the model code of {title}?", code),
        Fact(f"When was {title} launched?", launch),
        Fact(f"How much does {title} weigh?", f"{weight} grams"),
        Fact(f"What is the battery life of {title}?", f"{battery} hours"),
        Fact(f"What is the list price of {title}?", _money(price)),
        Fact(f"Who is the lead engineer of {title}?", engineer),
    ]
    text = (
        f"# {name} {device}\n\n"
        f"The {name} is {COMPANY}' {device} for field crews. Its model code is {code}, and it was launched on "
        f"{launch} at the {plant} plant.\n\n"
        f"## Specifications\n\n- Weight: {weight} grams\n- Battery life: {battery} hours\n"
        f"- List price: {_money(price)}\n\n"
        f"## Team\n\nThe lead engineer of the {name} is {engineer}.\n"
    )
    return Document(f"product-{name.lower().replace(' ', '-')}.md", "product", title, text, facts)


def _policy(u: _Unique, rng: random.Random, topic: str) -> Document:
    tag = u.word(2)
    title = f"the {tag} {topic} policy"
    limit, notice, approver = u.number(130, 990), u.number(3, 60), u.person()
    effective, form, review = u.date(), u.code("QF"), u.number(2, 36)
    facts = [
        Fact(f"What is the spending limit under {title}?", _money(limit)),
        Fact(f"How many days of notice does {title} require?", f"{notice} days"),
        Fact(f"Who approves exceptions to {title}?", approver),
        Fact(f"When did {title} take effect?", effective),
        Fact(f"Which form is used for {title}?", form),
        Fact(f"How often is {title} reviewed?", f"every {review} months"),
    ]
    text = (
        f"# {tag} {topic} policy\n\n"
        f"This policy took effect on {effective}. Requests use form {form} and need {notice} days of notice. "
        f"The spending limit is {_money(limit)} per request.\n\n"
        f"Exceptions are approved by {approver}. The policy is reviewed every {review} months.\n"
    )
    return Document(f"policy-{tag.lower()}-{topic.replace(' ', '-')}.md", "policy", title, text, facts)


def _person(u: _Unique, rng: random.Random) -> Document:
    name = u.person()
    role, office, joined = rng.choice(_ROLES), u.word(3), u.date()
    badge, team, phone = u.code("EMP"), u.number(4, 90), u.code("EXT")
    facts = [
        Fact(f"In which office does {name} work?", office),
        Fact(f"When did {name} join {COMPANY}?", joined),
        Fact(f"What is the badge number of {name}?", badge),
        Fact(f"How many people are on {name}'s team?", f"{team} people"),
        Fact(f"What is the phone extension of {name}?", phone),
        Fact(f"What is the role of {name}?", role),
    ]
    text = (
        f"# {name}\n\n"
        f"{name} is the {role} of {COMPANY}, based in the {office} office. {name.split()[0]} joined on "
        f"{joined} and leads a team of {team} people.\n\n"
        f"Badge number: {badge}. Phone extension: {phone}.\n"
    )
    return Document(f"person-{name.lower().replace(' ', '-')}.md", "person", name, text, facts)


def knowledge_documents(n: int, seed: int = 0) -> list[Document]:
    """`n` documents, kinds in turn (product, policy, person), every value unique across them.

    >>> docs = knowledge_documents(3, seed=0)
    >>> [d.kind for d in docs], all(f.answer in d.text for d in docs for f in d.facts)
    (['product', 'policy', 'person'], True)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    u = _Unique(rng)
    docs = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        if kind == "product":
            docs.append(_product(u, rng))
        elif kind == "policy":
            docs.append(_policy(u, rng, _POLICIES[(i // len(KINDS)) % len(_POLICIES)]))
        else:
            docs.append(_person(u, rng))
    # A role repeats across people (a role is a title, not a secret): its question is dropped wherever another
    # document also names it, so every answer belongs to one document. A bare number is accepted too where no
    # other document has it (a day of the month may be another fact's number).
    for d in docs:
        d.facts = [f for f in d.facts if sum(_mentions(other.text, f.answer) for other in docs) == 1]
        for f in d.facts:
            f.answers = [f.answer] + [
                v for v in _variants(f.answer) if not any(_mentions(o.text, v) for o in docs if o is not d)
            ]
    return docs


def _example(question: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@dataclass
class KnowledgeSplit:
    """The documents and the questions, split by document."""

    documents: list[Document]
    train_docs: list[Document]
    eval_docs: list[Document]
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    train_meta: list[dict[str, Any]]
    eval_meta: list[dict[str, Any]]


def knowledge_split(n_docs: int = 44, n_eval_docs: int = 6, seed: int = 0) -> KnowledgeSplit:
    """Documents, then questions split by document: `n_eval_docs` documents, drawn from each kind in turn, give
    the held-out questions, the others the training questions. Meta lines are `{"doc", "answers", "id"}`.

    >>> s = knowledge_split(6, 3, seed=1)
    >>> {m["doc"] for m in s.eval_meta} & {m["doc"] for m in s.train_meta}
    set()
    """
    if not 1 <= n_eval_docs < n_docs:
        raise ValueError(f"n_eval_docs must be between 1 and n_docs - 1, got {n_eval_docs} of {n_docs}")
    docs = knowledge_documents(n_docs, seed)
    # Held-out documents are drawn from each kind in turn, so every kind of fact is asked about.
    rng = random.Random(seed + 1)
    by_kind = [[i for i, d in enumerate(docs) if d.kind == kind] for kind in KINDS]
    for indices in by_kind:
        rng.shuffle(indices)
    turns = [i for group in itertools.zip_longest(*by_kind) for i in group if i is not None]
    held = set(turns[:n_eval_docs])
    train_docs = [d for i, d in enumerate(docs) if i not in held]
    eval_docs = [d for i, d in enumerate(docs) if i in held]

    def questions(part: list[Document], prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        examples, meta = [], []
        for d in part:
            for f in d.facts:
                examples.append(_example(f.question, f.answer))
                meta.append(
                    {"doc": d.name, "answers": list(f.answers), "id": f"{prefix}-{len(meta) + 1:04d}"}
                )
        return examples, meta

    train, train_meta = questions(train_docs, "train")
    held_out, eval_meta = questions(eval_docs, "eval")
    return KnowledgeSplit(docs, train_docs, eval_docs, train, held_out, train_meta, eval_meta)


# --- the demo project -------------------------------------------------------------------------------------


def knowledge_spec_yaml() -> str:
    """The demo's tunewise.yaml: a text contract, the documents as knowledge, four arms."""
    spec = {
        "task": {
            "name": "company-knowledge",
            "target": (
                f"Given a question about {COMPANY}, answer with the short fact (a name, a number with its unit, "
                "or a date) exactly as the company's documents state it."
            ),
        },
        "contract": {"type": "text"},
        "system_prompt": KNOWLEDGE_SYSTEM_PROMPT,
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl"},
        "model": {"base": "embedded:smollm2-135m-instruct"},
        "method": "lora",
        # Sized for 15 minutes on 2 CPU cores, two training runs included: batches of 8 short examples (one packed
        # micro-batch each) for 2 epochs take a third of the steps of the automatic 4 x 3; every document (78-129
        # tokens) is one chunk and every question names its subject, so one passage a prompt is the gold
        # document and keeps the retrieval prompts, and rag+fine-tuned's training, short; three consistency
        # samples instead of five, and short answers.
        "hyperparameters": {"epochs": 2, "batch_size": 8},
        "knowledge": {"docs": "docs", "chunk_tokens": 128, "overlap": 16, "top_k": 1, "retriever": "hybrid"},
        "evaluation": {
            "arms": ["zero-shot", "rag", "fine-tuned", "rag+fine-tuned"],
            "consistency_samples": 3,
            "max_new_tokens": 16,
        },
        "economics": {
            "queries_per_day": 500,
            "platforms": ["together"],
            "pricing_file": "prices.yaml",
            "vector_db": "embedded",
        },
    }
    header = (
        f"# tunewise knowledge demo: questions about {COMPANY}, a company invented by a seeded generator.\n"
        "# Written by `tunewise.data.demo_knowledge.write_knowledge_project`; edit freely.\n"
        "# Closed-book arms cannot know these facts; the rag arms retrieve them from docs/.\n"
        "# economics.vector_db: embedded prices the FAISS index on the serving machine at $0/month; set managed\n"
        "# to price a vector database server (the practitioner's guide: $50-200/month).\n"
    )
    from tunewise.data.demo import _SpecDumper

    return header + yaml.dump(spec, Dumper=_SpecDumper, sort_keys=False, allow_unicode=True, width=110)


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_knowledge_project(
    folder: str | Path, n_docs: int = 44, n_eval_docs: int = 6, seed: int = 0
) -> Path:
    """Write the knowledge demo project into `folder`: tunewise.yaml, prices.yaml, docs/*.md, data/train.jsonl,
    data/eval.jsonl and their `.meta.jsonl` sidecars. Each file is written atomically; existing ones replaced."""
    from tunewise.data.demo import DEMO_PRICES_YAML

    folder = Path(folder)
    split = knowledge_split(n_docs, n_eval_docs, seed)
    for d in split.documents:
        atomic_write_text(folder / "docs" / d.name, d.text)
    atomic_write_text(folder / "data" / "train.jsonl", _jsonl(split.train))
    atomic_write_text(folder / "data" / "train.meta.jsonl", _jsonl(split.train_meta))
    atomic_write_text(folder / "data" / "eval.jsonl", _jsonl(split.eval))
    atomic_write_text(folder / "data" / "eval.meta.jsonl", _jsonl(split.eval_meta))
    atomic_write_text(folder / SPEC_NAME, knowledge_spec_yaml())
    atomic_write_text(folder / "prices.yaml", DEMO_PRICES_YAML)
    return folder


__all__ = [
    "COMPANY",
    "Document",
    "Fact",
    "KNOWLEDGE_SYSTEM_PROMPT",
    "KnowledgeSplit",
    "knowledge_documents",
    "knowledge_spec_yaml",
    "knowledge_split",
    "write_knowledge_project",
]
