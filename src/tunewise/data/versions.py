"""Content-addressed dataset versions: the hash of the normalized examples names the version."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson

from tunewise.fileio import atomic_write_text
from tunewise.project import Project


def version_id(examples: list[dict]) -> str:
    """sha256 over the canonical JSON of the normalized examples, in order.

    >>> version_id([{"messages": [{"role": "user", "content": "hi"}]}])[:12]
    'ea39428c5a4c'
    """
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(orjson.dumps(ex, option=orjson.OPT_SORT_KEYS))
        digest.update(b"\n")
    return digest.hexdigest()


def to_jsonl(examples: list[dict]) -> str:
    return "".join(orjson.dumps(ex, option=orjson.OPT_SORT_KEYS).decode() + "\n" for ex in examples)


def save_version(
    project: Project, name: str, examples: list[dict], sources: list[str], stats: dict[str, Any]
) -> tuple[str, Path, bool]:
    """Write the normalized examples once and record them; returns (id, path, created)."""
    vid = version_id(examples)
    path = project.datasets_dir / vid[:16] / f"{name}.jsonl"
    if not path.is_file():
        atomic_write_text(path, to_jsonl(examples))
    registry = project.registry()
    try:
        created = registry.add_dataset_version(vid, name, sources, len(examples), stats, str(path))
    finally:
        registry.close()
    return vid, path, created
