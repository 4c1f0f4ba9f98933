"""Content-addressed dataset versions: the hash of the normalized examples names the version."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import orjson

from tunewise.fileio import atomic_write_text, fsync_dir, publish, sha256_file, temp_path
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


SPLITS = ".splits"  # under the output folder: one folder per published split, and `current`


def publish_split(out_dir: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write a set of files that belong together (a split's train.jsonl and eval.jsonl) so that a reader of
    `out_dir/<name>` never sees a mix of two sets, even after a crash between two writes.

    The files are written into a new folder `out_dir/.splits/<id>` (renamed into place whole; <id> is the
    hash of the contents), and `out_dir/.splits/current` is a symbolic link to it, switched in one atomic
    rename. Each `out_dir/<name>` is a link to `.splits/current/<name>`, so one rename publishes every file
    at once. Regular files already at those paths are first kept as a set of their own (hard links, no copy)
    and linked the same way, so every step in between still shows one consistent set. Older sets than the
    previous one are removed. Returns the paths written, `out_dir/<name>`.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = out_dir / SPLITS
    splits.mkdir(exist_ok=True)
    current = splits / "current"
    previous = os.readlink(current) if current.is_symlink() else None
    new = _write_set(splits, files)
    targets = {name: out_dir / name for name in files}
    linked = all(
        path.is_symlink() and os.readlink(path) == f"{SPLITS}/current/{name}"
        for name, path in targets.items()
    )
    if not linked:
        if previous is None and all(p.is_file() and not p.is_symlink() for p in targets.values()):
            # The set that is there now stays visible until the switch below.
            previous = _link_set(splits, targets)
        _symlink(previous or new, current)
        for name, path in targets.items():
            _symlink(f"{SPLITS}/current/{name}", path)
    _symlink(new, current)
    for old in splits.iterdir():
        if old.name not in ("current", new, previous) and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return targets


def _write_set(splits: Path, files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{len(files[name])}\0".encode())
        digest.update(files[name].encode())
    set_id = digest.hexdigest()[:16]
    final = splits / set_id
    if not final.is_dir():  # content-addressed: an existing folder holds the same files
        tmp = temp_path(final)
        tmp.mkdir()
        try:
            for name, text in files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            publish(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return set_id


def _link_set(splits: Path, targets: dict[str, Path]) -> str:
    """The regular files at `targets` as a set folder of hard links to them; returns its name."""
    tmp = temp_path(splits / "previous")
    tmp.mkdir()
    for name, path in targets.items():
        os.link(path, tmp / name)
    set_id = f"{_set_hash(tmp, targets)}"
    final = splits / set_id
    if final.is_dir():
        shutil.rmtree(tmp)
    else:
        publish(tmp, final)
    return set_id


def _set_hash(folder: Path, targets: dict[str, Path]) -> str:
    return hashlib.sha256(
        b"".join(sha256_file(folder / name).encode() for name in sorted(targets))
    ).hexdigest()[:16]


def _symlink(target: str, link: Path) -> None:
    """Point `link` at `target` in one atomic rename (a temporary link beside it, then os.replace)."""
    tmp = temp_path(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)
