"""Documents -> text -> chunks, with what was read and what was skipped and why.

    resolve   the spec's `knowledge.docs` (folders, files, globs relative to tunewise.yaml) -> files
    read      one file -> its text: Markdown and plain text as they are, HTML as its visible text (scripts and
              styles dropped), PDF when pypdf is installed
    chunk     a text -> windows of `chunk_tokens` tokens, neighbours sharing `overlap` tokens

A bad file is never fatal: it is reported as `file: reason` (binary, empty, undecodable, unsupported type, too
large), like `tunewise data check` reports a bad line, and the other files are read.

Tokens are counted by the embedding model's own WordPiece tokenizer when its package is installed (the dense
retriever then sees each chunk whole: all-MiniLM-L6-v2 truncates at 256 tokens), else by words.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_DOC_BYTES = 32 * 1024 * 1024  # a bigger "document" is almost always a data dump or an archive
TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "text"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
BLOCK_TAGS = [
    *("p", "div", "section", "article", "main", "header", "footer", "aside", "nav", "blockquote", "pre"),
    *("h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "br", "hr", "table", "ul", "ol", "dl"),
]
SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a binary file, as git decides


@dataclass(frozen=True)
class Document:
    """One document read: `name` is its path relative to the knowledge entry it came from (what passages and
    the held-out data's gold `doc` name), `sha256` the hash of its bytes."""

    name: str
    path: Path
    kind: str  # markdown, text, html or pdf
    text: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class IngestReport:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "documents": [
                {"name": d.name, "path": str(d.path), "kind": d.kind, "bytes": d.bytes, "chars": len(d.text)}
                for d in self.documents
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


# --- finding the files -------------------------------------------------------------------------------------


def _is_glob(entry: str) -> bool:
    return any(c in entry for c in "*?[")


def _glob_base(entry: str) -> str:
    """The folder a glob's matches are named relative to: its parts before the first wildcard.

    >>> _glob_base("docs/**/*.md"), _glob_base("*.txt"), _glob_base("a/b/c?.html")
    ('docs', '', 'a/b')
    """
    parts = Path(entry).parts
    fixed = []
    for part in parts:
        if _is_glob(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else ""


def resolve(entries: Sequence[str], root: Path) -> tuple[list[tuple[str, Path]], list[Skipped]]:
    """The files the entries name, each with its document name, in a stable order, and the entries that name
    nothing. Hidden files and folders (`.git`, `.DS_Store`) inside a folder are not documents and are passed
    over silently. A file named by two entries is read once."""
    found: list[tuple[str, Path]] = []
    missing: list[Skipped] = []
    seen: set[Path] = set()
    for entry in entries:
        base_and_files: list[tuple[Path, list[Path]]] = []
        target = root / entry
        if _is_glob(entry):
            base = root / _glob_base(entry)
            matches = sorted(Path(p) for p in glob.glob(str(root / entry), recursive=True))
            base_and_files.append((base, [p for p in matches if p.is_file()]))
            if not base_and_files[0][1]:
                missing.append(Skipped(entry, "the pattern matches no file"))
        elif target.is_dir():
            files = sorted(
                p
                for p in target.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(target).parts)
            )
            base_and_files.append((target, files))
            if not files:
                missing.append(Skipped(entry, "the folder holds no file"))
        elif target.is_file():
            base_and_files.append((target.parent, [target]))
        else:
            missing.append(Skipped(entry, "no such file or folder"))
        for base, files in base_and_files:
            for path in files:
                key = path.resolve()
                if key in seen:
                    continue
                seen.add(key)
                found.append((path.relative_to(base).as_posix(), path))
    # Two entries can hold files of the same relative name (a/README.md, b/README.md): name those by their
    # path from the spec folder instead, so that every document has one name.
    counts: dict[str, int] = {}
    for name, _ in found:
        counts[name] = counts.get(name, 0) + 1
    named = [(name if counts[name] == 1 else _relative(path, root), path) for name, path in found]
    return named, missing


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# --- reading one file --------------------------------------------------------------------------------------


def html_text(markup: str) -> str:
    """The visible text of an HTML page: scripts, styles and other non-content elements dropped, one block per
    line, runs of blank lines collapsed.

    >>> html_text("<html><head><style>p {color: red}</style><script>var x = 1;</script></head>"
    ...           "<body><h1>Refunds</h1><p>Within <b>30</b> days.</p></body></html>")
    'Refunds\\nWithin 30 days.'
    """
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
        tag.decompose()
    # Inline elements (<b>, <a>) stay inside their line; block elements end one.
    for tag in soup.find_all(BLOCK_TAGS):
        tag.append("\n")
    for tag in soup.find_all(["td", "th"]):
        tag.append(" ")
    lines = (re.sub(r"\s+", " ", line).strip() for line in soup.get_text().splitlines())
    return "\n".join(x for x in lines if x)


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return "\n\n".join((page.extract_text() or "") for page in PdfReader(str(path)).pages)


def _pdf_available() -> bool:
    try:
        import pypdf  # noqa: F401
    except ImportError:
        return False
    return True


def _html_available() -> bool:
    try:
        import bs4  # noqa: F401
    except ImportError:
        return False
    return True


def read_document(name: str, path: Path, shown: str | None = None) -> Document | Skipped:
    """One file as a Document, or Skipped (reported as `shown`, default its path) with the reason."""
    shown = shown or str(path)
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        kind = TEXT_SUFFIXES[suffix]
    elif suffix in HTML_SUFFIXES:
        kind = "html"
        if not _html_available():
            return Skipped(shown, "HTML needs beautifulsoup4 (pip install 'tunewise[rag]')")
    elif suffix == ".pdf":
        kind = "pdf"
        if not _pdf_available():
            return Skipped(shown, "PDF needs pypdf, which is not installed (pip install pypdf)")
    else:
        return Skipped(
            shown,
            f"unsupported type '{suffix or '(no extension)'}' (read: .md, .txt, .rst, .html, .htm, .pdf)",
        )
    try:
        size = path.stat().st_size
        if size > MAX_DOC_BYTES:
            return Skipped(shown, f"too large ({size:,} bytes; at most {MAX_DOC_BYTES:,})")
        data = path.read_bytes()
    except OSError as exc:
        return Skipped(shown, f"cannot be read ({exc.strerror or exc})")
    digest = hashlib.sha256(data).hexdigest()
    if kind == "pdf":
        try:
            text = pdf_text(path)
        except (
            Exception
        ) as exc:  # pypdf raises many types on a damaged file; any of them skips that file only
            return Skipped(shown, f"unreadable PDF ({type(exc).__name__}: {exc})")
    else:
        if b"\x00" in data[:SNIFF_BYTES]:
            return Skipped(shown, "binary (a NUL byte in its first 8 KiB)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return Skipped(shown, f"undecodable: not UTF-8 (byte {exc.start})")
        if kind == "html":
            text = html_text(text)
    if not text.strip():
        return Skipped(shown, "empty" if not data else "empty (no text)")
    return Document(name=name, path=path, kind=kind, text=text, sha256=digest, bytes=len(data))


def ingest(entries: Sequence[str], root: Path) -> IngestReport:
    """Read every document the entries name (relative to `root`, the spec folder)."""
    files, missing = resolve(entries, root)
    report = IngestReport(skipped=list(missing))
    for name, path in files:
        got = read_document(name, path, _relative(path, root))
        if isinstance(got, Document):
            report.documents.append(got)
        else:
            report.skipped.append(got)
    return report


# --- chunking ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """A window of one document: its text, its position (`chunk`, 0-based, and the characters it spans) and
    how many tokens it holds."""

    doc: str
    chunk: int
    text: str
    start: int
    end: int
    tokens: int


# A token splitter: a text -> the (start, end) character span of each token.
Spans = Callable[[str], list[tuple[int, int]]]


def word_spans(text: str) -> list[tuple[int, int]]:
    """Words (runs of non-space characters) as character spans: the fallback token counter.

    >>> word_spans("two  words")
    [(0, 3), (5, 10)]
    """
    return [m.span() for m in re.finditer(r"\S+", text)]


def windows(n: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows [start, end) over n tokens: `size` tokens each, each starting `size - overlap` after the
    one before; the last one ends at n (and is shorter), none lies wholly inside the one before.

    >>> windows(10, 4, 1)
    [(0, 4), (3, 7), (6, 10)]
    >>> windows(11, 4, 1)
    [(0, 4), (3, 7), (6, 10), (9, 11)]
    >>> windows(3, 4, 1), windows(0, 4, 1)
    ([(0, 3)], [])
    """
    if not 0 <= overlap < size:
        raise ValueError(f"overlap ({overlap}) must be in [0, size={size})")
    out = []
    start = 0
    while start < n:
        end = min(start + size, n)
        out.append((start, end))
        if end == n:
            break
        start += size - overlap
    return out


def chunk_text(doc: str, text: str, size: int, overlap: int, spans: Spans = word_spans) -> list[Chunk]:
    """Cut one document into chunks of `size` tokens sharing `overlap` tokens with their neighbour. A chunk's
    text is the document's own text between its first and last token (not a re-joined token list), so nothing
    is normalised away.

    >>> [c.text for c in chunk_text("a.md", "one two three four five", size=3, overlap=1)]
    ['one two three', 'three four five']
    """
    token_spans = spans(text)
    chunks = []
    for i, (a, b) in enumerate(windows(len(token_spans), size, overlap)):
        start, end = token_spans[a][0], token_spans[b - 1][1]
        chunks.append(Chunk(doc=doc, chunk=i, text=text[start:end], start=start, end=end, tokens=b - a))
    return chunks


__all__ = [
    "Chunk",
    "Document",
    "IngestReport",
    "MAX_DOC_BYTES",
    "Skipped",
    "chunk_text",
    "html_text",
    "ingest",
    "read_document",
    "resolve",
    "windows",
    "word_spans",
]
