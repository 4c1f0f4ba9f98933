"""Retrieval quality when the held-out data names each question's gold document.

The input per question is the ranked list of documents the retriever's passages came from (passage order,
repeats kept: two passages of one document are two ranks) and the gold document's name. Then

    recall@k   the share of questions whose gold document is among the documents of the top k passages, with
               a 95% Wilson interval (evaluate/stats.py)
    MRR        the mean over questions of 1 / rank of the first passage from the gold document (0 when none
               of the retrieved passages is)

so recall@k with k = knowledge.top_k says how often the prompt holds at least one passage of the right document.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tunewise.evaluate.stats import Interval, wilson


def first_hit(ranked: Sequence[str], gold: str) -> int | None:
    """The 1-based rank of the first passage from the gold document, or None.

    >>> first_hit(["b.txt", "a.txt", "a.txt"], "a.txt"), first_hit(["b.txt"], "a.txt")
    (2, None)
    """
    for rank, doc in enumerate(ranked, start=1):
        if doc == gold:
            return rank
    return None


def recall_at_k(ranked: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> Interval:
    """Share of questions with the gold document in the top k, and its 95% Wilson interval.

    >>> iv = recall_at_k([["a", "b"], ["c", "a"], ["b", "c"]], ["a", "a", "a"], k=2)
    >>> round(iv.value, 4), round(iv.low, 4), round(iv.high, 4)
    (0.6667, 0.2077, 0.9385)
    """
    _same_length(ranked, gold)
    hits = sum(1 for docs, g in zip(ranked, gold) if g in list(docs)[:k])
    return wilson(hits, len(gold))


def mrr(ranked: Sequence[Sequence[str]], gold: Sequence[str]) -> float:
    """Mean reciprocal rank of the gold document (0 for a question whose passages miss it).

    >>> mrr([["a", "b"], ["c", "a"], ["b", "c"]], ["a", "a", "a"])  # (1 + 1/2 + 0) / 3
    0.5
    """
    _same_length(ranked, gold)
    ranks = [first_hit(docs, g) for docs, g in zip(ranked, gold)]
    return sum(1.0 / r for r in ranks if r) / len(ranks)


@dataclass(frozen=True)
class RetrievalScores:
    n: int
    recall: dict[int, Interval]  # k -> recall@k
    mrr: float

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "recall": {str(k): iv.as_dict() for k, iv in self.recall.items()},
            "mrr": self.mrr,
        }


def score_retrieval(
    ranked: Sequence[Sequence[str]], gold: Sequence[str], ks: Sequence[int] = (1, 5)
) -> RetrievalScores:
    """recall@k for each k, and MRR over the whole ranked lists."""
    return RetrievalScores(
        n=len(gold), recall={k: recall_at_k(ranked, gold, k) for k in ks}, mrr=mrr(ranked, gold)
    )


def _same_length(ranked: Sequence[Any], gold: Sequence[Any]) -> None:
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} rankings but {len(gold)} gold documents")
    if not gold:
        raise ValueError("no questions to score")


__all__ = ["RetrievalScores", "first_hit", "mrr", "recall_at_k", "score_retrieval"]
