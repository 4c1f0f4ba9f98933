"""Qdrant as the vector store, for teams that already run one (or whose corpus outgrows one machine).

    knowledge:
      docs: docs/
      vector_store: qdrant
      qdrant_url: http://localhost:6333      # ':memory:' runs an in-process store (tests)

The embeddings are still computed locally and kept in the index folder (dense.faiss), so the index version and
the BM25 half do not change; Qdrant holds a copy of the vectors in one collection per index version,
`tunewise-<version[:16]>`, uploaded the first time that version is opened against that server and reused after.
Points carry the chunk's document and position as payload, so the collection can be read without tunewise. The
API key, when the server wants one, comes from the QDRANT_API_KEY environment variable (secrets stay out of
tunewise.yaml). Needs `pip install qdrant-client`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.rag.ingest import Chunk

UPLOAD_BATCH = 256
_CLIENTS: dict[
    str, Any
] = {}  # one client per URL and process: an in-memory store lives as long as its client


def collection_name(version: str) -> str:
    """
    >>> collection_name("0123456789abcdef0123")
    'tunewise-0123456789abcdef'
    """
    return f"tunewise-{version[:16]}"


def _client(url: str) -> Any:
    try:
        from qdrant_client import QdrantClient
    except ImportError as exc:
        raise TunewiseError(
            "knowledge.vector_store is qdrant but qdrant-client is not installed",
            hint="pip install qdrant-client, or set knowledge.vector_store to faiss",
        ) from exc
    if url not in _CLIENTS:
        if url == ":memory:":
            _CLIENTS[url] = QdrantClient(location=":memory:")
        else:
            _CLIENTS[url] = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None)
    return _CLIENTS[url]


class QdrantStore:
    """A Qdrant collection searched by cosine similarity; point ids are chunk indexes."""

    def __init__(self, client: Any, collection: str):
        self.client = client
        self.collection = collection

    @classmethod
    def connect(
        cls, url: str | None, version: str, vectors: np.ndarray, chunks: Sequence[Chunk]
    ) -> QdrantStore:
        """The collection of this index version, created and filled when missing or incomplete."""
        if not url:
            raise TunewiseError(
                "knowledge.vector_store is qdrant but knowledge.qdrant_url is missing",
                hint="set knowledge.qdrant_url: http://localhost:6333",
            )
        client = _client(url)
        name = collection_name(version)
        try:
            store = cls(client, name)
            if not store._complete(len(chunks)):
                store._fill(vectors, chunks)
        except TunewiseError:
            raise
        except Exception as exc:  # connection refused, timeouts, auth: the client raises many types
            raise TunewiseError(
                f"cannot use the Qdrant server at {url}: {type(exc).__name__}: {exc}",
                hint="check that it runs and knowledge.qdrant_url is right (and QDRANT_API_KEY if it needs one)",
            ) from exc
        return store

    def _complete(self, n: int) -> bool:
        if not self.client.collection_exists(self.collection):
            return False
        return self.client.count(self.collection, exact=True).count == n

    def _fill(self, vectors: np.ndarray, chunks: Sequence[Chunk]) -> None:
        from qdrant_client import models

        if self.client.collection_exists(self.collection):
            self.client.delete_collection(self.collection)  # a half-uploaded copy: start again
        self.client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=int(vectors.shape[1]), distance=models.Distance.COSINE),
        )
        for start in range(0, len(chunks), UPLOAD_BATCH):
            part = range(start, min(start + UPLOAD_BATCH, len(chunks)))
            self.client.upsert(
                self.collection,
                points=[
                    models.PointStruct(
                        id=i,
                        vector=vectors[i].tolist(),
                        payload={"doc": chunks[i].doc, "chunk": chunks[i].chunk},
                    )
                    for i in part
                ],
                wait=True,
            )

    def search(self, vector: np.ndarray, depth: int) -> list[tuple[int, float]]:
        hits = self.client.query_points(
            self.collection, query=np.asarray(vector, dtype=np.float32).tolist(), limit=depth
        ).points
        return [(int(h.id), float(h.score)) for h in hits]


__all__ = ["QdrantStore", "collection_name"]
