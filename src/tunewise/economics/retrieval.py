"""What retrieval adds to an arm's bill: pure arithmetic over recorded measurements, no I/O, no torch.

A retrieval arm (`rag`, `rag+scored`, `rag+constrained`, `rag+fine-tuned`) is its closed-book counterpart
(`zero-shot`, `zero-shot+scored`, `zero-shot+constrained`, `fine-tuned`) with retrieved passages in the prompt.
It costs what the counterpart costs, plus:

    passages          (rag prompt tokens - closed-book prompt tokens) x input price   per query (measured)
    query embedding   query tokens x embedding price per M / 1e6                      per query
    corpus embedding  corpus tokens x embedding price per M / 1e6                     one-off, amortised like
                                                                                      training (re-indexed
                                                                                      every cycle)
    vector database   per month: $0 for the embedded index (it runs on the serving machine), or a server's
                      monthly bill (the practitioner's guide: "$50 to $200/month (vector DB)")

The passages are already in the measured prompt tokens, so they are part of the per-query inference cost; they
are shown apart so that a reader sees what retrieval adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunewise.errors import TunewiseError

# Which vector index is priced: the embedded index (FAISS inside the serving process, the default) or a vector
# database server. Each is a catalog entry (`vector-db/embedded`, `vector-db/managed`) with its source.
VECTOR_DBS = ("embedded", "managed")
VECTOR_DB_PLATFORM = "vector-db"


RAG_TUNED = "rag+fine-tuned"  # one arm, not `rag` with a variant


def _split(name: str) -> tuple[str, str]:
    """(base arm, variant) of a retrieval arm's name, its training run (`:RUN`) left out.

    >>> _split("rag+fine-tuned+scored:train-1"), _split("rag+constrained"), _split("rag")
    (('rag+fine-tuned', 'scored'), ('rag', 'constrained'), ('rag', ''))
    """
    name = name.split(":", 1)[0]
    if name == RAG_TUNED or name.startswith(RAG_TUNED + "+"):
        return RAG_TUNED, name[len(RAG_TUNED) + 1 :]
    base, _, variant = name.partition("+")
    return base, variant


def is_rag_arm(name: str) -> bool:
    """Whether an evaluated arm puts retrieved passages in its prompt: `rag`, `rag+fine-tuned` and their variants.

    >>> is_rag_arm("rag"), is_rag_arm("rag+fine-tuned"), is_rag_arm("retrieved"), is_rag_arm("few-shot")
    (True, True, False, False)
    """
    return _split(name)[0] in ("rag", RAG_TUNED)


def is_rag_tuned(name: str) -> bool:
    """Whether a retrieval arm is the fine-tuned model with passages (`rag+fine-tuned`, or a variant of it).

    >>> is_rag_tuned("rag+fine-tuned"), is_rag_tuned("rag+fine-tuned+scored"), is_rag_tuned("rag+scored")
    (True, True, False)
    """
    return _split(name)[0] == RAG_TUNED


def closed_book(name: str, info: Mapping[str, Any] | None = None) -> str | None:
    """The arm that is `name` without its passages: the evaluation's record (`arm_info[name]["closed_book"]`)
    where it names one, else by name (`rag` -> `zero-shot`, `rag+X` -> `zero-shot+X`, `rag+fine-tuned[+X]` ->
    `fine-tuned[+X]`); None for an arm that is not a retrieval arm.

    >>> closed_book("rag"), closed_book("rag+constrained"), closed_book("rag+fine-tuned"), closed_book("few-shot")
    ('zero-shot', 'zero-shot+constrained', 'fine-tuned', None)
    >>> closed_book("rag+fine-tuned+scored"), closed_book("rag", {"closed_book": "few-shot"})
    ('fine-tuned+scored', 'few-shot')
    """
    if not is_rag_arm(name):
        return None
    recorded = (info or {}).get("closed_book")
    if isinstance(recorded, str) and recorded:
        return recorded
    base, variant = _split(name)
    return ("fine-tuned" if base == RAG_TUNED else "zero-shot") + (f"+{variant}" if variant else "")


def passage_tokens(rag_prompt_tokens: float | None, closed_prompt_tokens: float | None) -> float | None:
    """The extra prompt tokens per query that the passages add (measured: the retrieval arm's mean prompt
    length minus its closed-book counterpart's); None when either is unmeasured. Never below 0.

    >>> passage_tokens(1412.5, 212.5), passage_tokens(None, 200)
    (1200.0, None)
    """
    if rag_prompt_tokens is None or closed_prompt_tokens is None:
        return None
    return max(0.0, float(rag_prompt_tokens) - float(closed_prompt_tokens))


@dataclass(frozen=True)
class RetrievalPrices:
    """What retrieval costs besides the passages' tokens. Dollars."""

    vector_db: str = "embedded"  # which index is priced (VECTOR_DBS)
    vector_db_per_month: float = 0.0
    vector_db_source: str = ""  # where the monthly figure comes from (a catalog figure or the user's setting)
    embedding_per_million_tokens: float = 0.0  # 0: a self-hosted embedder
    corpus_tokens: float | None = None  # the indexed documents' tokens, when known

    def __post_init__(self) -> None:
        if self.vector_db not in VECTOR_DBS:
            raise TunewiseError(
                f"unknown vector database '{self.vector_db}'",
                hint=f"economics.vector_db is one of: {', '.join(VECTOR_DBS)}",
            )
        for label, value in (
            ("vector database per month", self.vector_db_per_month),
            ("embedding price per million tokens", self.embedding_per_million_tokens),
            ("corpus tokens", self.corpus_tokens or 0.0),
        ):
            if not value >= 0:
                raise TunewiseError(f"{label} must be 0 or more (got {value})")

    @property
    def corpus_embedding(self) -> float:
        """One-off: embedding the whole corpus once (0 with a self-hosted embedder or an unknown corpus size).

        >>> RetrievalPrices(embedding_per_million_tokens=0.02, corpus_tokens=5_000_000).corpus_embedding
        0.1
        """
        return round((self.corpus_tokens or 0.0) * self.embedding_per_million_tokens / 1e6, 12)

    def query_embedding(self, query_tokens: float) -> float:
        """Per query: embedding the question to search the index.

        >>> RetrievalPrices(embedding_per_million_tokens=0.02).query_embedding(50)
        1e-06
        """
        return round(query_tokens * self.embedding_per_million_tokens / 1e6, 12)


__all__ = [
    "RAG_TUNED",
    "RetrievalPrices",
    "VECTOR_DBS",
    "VECTOR_DB_PLATFORM",
    "closed_book",
    "is_rag_arm",
    "is_rag_tuned",
    "passage_tokens",
]
