"""What retrieval hands to the arms: passages, and the one method a retriever must have."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk. `doc` is the document's path relative to the knowledge folder it came from."""

    doc: str
    chunk: int  # the chunk's position in its document
    text: str
    score: float  # higher is better; fused scores are comparable only within one query


class Retriever(Protocol):
    """Anything that ranks passages for a query. `version` names the index content (documents and chunking)."""

    version: str

    def retrieve(self, query: str, k: int) -> list[Passage]: ...


__all__ = ["Passage", "Retriever"]
