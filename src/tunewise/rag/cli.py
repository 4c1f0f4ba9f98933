"""`tunewise knowledge ...`: read the documents of the spec's knowledge section, index them, search them."""

from __future__ import annotations

from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError

knowledge_app = typer.Typer(
    help="The documents the retrieval (rag) arms read: check what is read, build the index, search it.\n\n"
    "Example: tunewise knowledge index && tunewise knowledge search 'refund window'",
    no_args_is_help=True,
)
app.add_typer(knowledge_app, name="knowledge")

_SPEC_HELP = "Task spec (default: the tunewise.yaml found upward)."
SNIPPET_CHARS = 160


def _knowledge(spec_path: Path | None):
    """The knowledge section and the folder its paths are relative to."""
    from tunewise.project import find_project
    from tunewise.spec import load_spec

    project = find_project(spec_path)
    spec = load_spec(spec_path if spec_path is not None and spec_path.is_file() else project.spec_path)
    if spec.knowledge is None:
        raise TunewiseError(
            f"{project.spec_path} has no knowledge section",
            hint="add one naming your documents, e.g.\n  knowledge:\n    docs: docs/",
        )
    return spec.knowledge, project


def _count(n: int, noun: str) -> str:
    """
    >>> _count(1, "chunk"), _count(2, "chunk")
    ('1 chunk', '2 chunks')
    """
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


@knowledge_app.command(
    help="Read the documents of knowledge.docs and report what was read and what was skipped, with "
    "file: reason (binary, empty, undecodable, unsupported type, too large). A bad file is never fatal.\n\n"
    "Example: tunewise knowledge check"
)
def check(
    spec_path: Path | None = typer.Option(None, "--spec", help=_SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from rich.markup import escape

    from tunewise.rag.index import chunk_documents, require_documents
    from tunewise.rag.ingest import ingest

    knowledge, project = _knowledge(spec_path)
    report = ingest(knowledge.docs, project.root)
    chunks, tokenizer = (
        chunk_documents(report, knowledge.chunk_tokens, knowledge.overlap) if report.documents else ([], "-")
    )
    per_doc: dict[str, int] = {}
    for c in chunks:
        per_doc[c.doc] = per_doc.get(c.doc, 0) + 1
    if as_json:
        payload = report.to_json()
        for d in payload["documents"]:
            d["chunks"] = per_doc.get(d["name"], 0)
        print_json({**payload, "chunks": len(chunks), "tokenizer": tokenizer})
    else:
        for d in report.documents:
            out.print(
                f"read     {escape(d.name)} ({d.kind}, {len(d.text):,} characters, "
                f"{_count(per_doc.get(d.name, 0), 'chunk')})",
                highlight=False,
            )
        for s in report.skipped:
            out.print(f"skipped  {escape(str(s))}", highlight=False)
        out.print(
            f"{len(report.documents)} documents read, {len(report.skipped)} skipped; {len(chunks):,} chunks of "
            f"up to {knowledge.chunk_tokens} tokens ({tokenizer}), {knowledge.overlap} shared",
            highlight=False,
        )
    require_documents(report, knowledge.docs)


@knowledge_app.command(
    help="Build the retrieval index over knowledge.docs, or reuse it when the documents and chunking settings "
    "are unchanged (the version is the hash of both). Prints version, documents, chunks and build seconds; "
    "each build is a run of kind index (`tunewise runs --kind index`).\n\n"
    "Example: tunewise knowledge index"
)
def index(
    spec_path: Path | None = typer.Option(None, "--spec", help=_SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the index as JSON."),
) -> None:
    from tunewise.rag.index import build_index

    knowledge, project = _knowledge(spec_path)
    if not as_json:
        err.print("reading and indexing documents (embedding takes a while the first time)", highlight=False)
    retriever, _ = build_index(knowledge, project.root, state_dir=project.state_dir)
    info = retriever.info
    if info.note:
        err.print(f"note: {info.note}", highlight=False)
    if as_json:
        print_json(info.to_json())
        return
    for s in info.skipped:
        err.print(f"skipped  {s}", highlight=False, markup=False)
    out.print(
        f"index {info.version[:16]} ({'built' if info.built else 'reused'}): {info.documents} documents, "
        f"{info.chunks:,} chunks, built in {info.seconds:.1f} s; retriever {info.retriever}, "
        f"vectors in {info.vector_store}",
        highlight=False,
    )
    try:
        shown = info.path.relative_to(project.root)
    except ValueError:
        shown = info.path
    out.print(f"folder {shown}", highlight=False, markup=False)


@knowledge_app.command(
    help="Search the documents with the spec's retriever: the top passages with document, chunk and score "
    "(builds the index first if needed).\n\n"
    "Example: tunewise knowledge search 'How long is the refund window?' -k 3"
)
def search(
    query: str = typer.Argument(..., help="What to look for (a question or keywords)."),
    k: int | None = typer.Option(
        None, "-k", "--top-k", min=1, max=1000, help="Passages to show (default: knowledge.top_k)."
    ),
    spec_path: Path | None = typer.Option(None, "--spec", help=_SPEC_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the passages as JSON (full text)."),
) -> None:
    from rich.table import Table

    from tunewise.rag.index import build_index

    knowledge, project = _knowledge(spec_path)
    retriever, _ = build_index(knowledge, project.root, state_dir=project.state_dir)
    if retriever.info.note:
        err.print(f"note: {retriever.info.note}", highlight=False)
    passages = retriever.retrieve(query, k or knowledge.top_k)
    if as_json:
        print_json([p.__dict__ for p in passages])
        return
    if not passages:
        err.print("no passage matches", highlight=False)
        return
    table = Table("rank", "doc", "chunk", "score", "text", title=f"index {retriever.version[:16]}")
    for rank, p in enumerate(passages, start=1):
        text = " ".join(p.text.split())
        if len(text) > SNIPPET_CHARS:
            text = text[: SNIPPET_CHARS - 3] + "..."
        table.add_row(str(rank), p.doc, str(p.chunk), f"{p.score:.4f}", text)
    out.print(table)
