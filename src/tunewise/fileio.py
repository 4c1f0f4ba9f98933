"""Atomic file writes: a reader sees the old file or the new one, never half of one, even after a crash.

Every write goes to a hidden temporary file beside the target (same folder, so the rename cannot cross file
systems), is flushed and fsynced, renamed over the target with `os.replace`, and then the folder is fsynced so
that the rename itself survives a power cut. A failed write removes its temporary file and leaves the target as
it was.

    atomic_write_text / _bytes / _json / _jsonl   a whole file
    atomic_open                                   a whole file written as a stream (a `with` block)
    publish                                       a file or folder filled elsewhere, moved into place
    append_jsonl / read_jsonl                     an append-only log of JSON lines
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | Path) -> Path:
    """A fresh hidden name beside `path` for its temporary file (unique per call, so concurrent writers of one
    target never share a temporary file).

    >>> p = temp_path("/data/train.jsonl")
    >>> p.parent.as_posix(), p.name.startswith(".train.jsonl."), p.name.endswith(".tmp")
    ('/data', True, True)
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the data itself was synced
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync a file, or every file and folder under a folder (bottom up)."""
    if path.is_dir():
        for child in path.iterdir():
            _fsync_tree(child)
        fsync_dir(path)
    else:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def publish(tmp: str | Path, final: str | Path) -> None:
    """Move `tmp` (a complete file or folder written beside `final`) into place durably: fsync its contents,
    rename it over `final`, fsync the folder. A folder cannot replace a non-empty folder: that raises OSError."""
    tmp, final = Path(tmp), Path(final)
    _fsync_tree(tmp)
    os.replace(tmp, final)
    fsync_dir(final.parent)


@contextmanager
def atomic_open(
    path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8", newline: str | None = None
) -> Iterator[IO[Any]]:
    """Write `path` as a stream: the `with` block writes a temporary file, which replaces `path` only when
    the block finishes without an exception. `mode` is "w" (text) or "wb" (bytes)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # "x": created anew with the mode a plain open() gives (0666 less the umask), so the file can be shared.
    kwargs: dict[str, Any] = {} if "b" in mode else {"encoding": encoding, "newline": newline}
    try:
        with open(tmp, mode.replace("w", "x"), **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically; the folder is created if needed."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Indented JSON, non-ASCII kept as is; values JSON cannot hold (paths, dates) are written as strings."""
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """One JSON object per line, written atomically as a whole."""
    with atomic_open(path, "w", newline="\n") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: Any) -> None:
    """Append one JSON line and fsync it.

    An append log is not rewritten through a temporary file (that would cost the whole file per line): the line
    goes out in one write, and a crash can at worst leave the last line unterminated, which `read_jsonl` drops.
    """
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while line:  # a regular file takes it in one write; the loop covers a short write all the same
            line = line[os.write(fd, line) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file's bytes, read 1 MiB at a time (data files can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_jsonl(path: str | Path) -> list[Any]:
    """The records of a JSON-lines file; an unterminated last line (a write cut short) is left out; a missing
    file has none."""
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # the piece after the last newline is empty, or a torn line
    return [json.loads(line) for line in complete if line.strip()]
