"""Traffic out for labelling, labelled examples back as a dataset version.

`export_traffic` writes captured exchanges as chat JSONL: the request's messages, then the model's answer as the
assistant turn, a draft for the labeller to correct; `metadata` keeps the capture row's id. `import_labelled`
reads such a file back (any chat JSONL tunewise reads will do) and records it as a new dataset version whose
lineage names the file and counts the drafts the labeller changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tunewise.errors import TunewiseError
from tunewise.fileio import atomic_write_text, sha256_file
from tunewise.lifecycle.capture import traffic
from tunewise.lifecycle.lineage import add_lineage
from tunewise.project import Project

LABELLED = "labelled-traffic"  # the dataset version name of imported labels


def export_traffic(
    project: Project,
    to: Path,
    *,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> int:
    """Write the captured exchanges (oldest first) to `to` as chat JSONL; returns how many."""
    rows = traffic(project, model=model, since=since, until=until)
    if not rows:
        scope = f" for model {model}" if model else ""
        raise TunewiseError(
            f"no captured traffic{scope}" + (f" since {since}" if since else ""),
            hint="start the server with `tunewise serve --capture MODEL` and send it requests",
        )
    lines = []
    for r in rows:
        record = {
            "messages": [*r["messages"], {"role": "assistant", "content": r["response"]}],
            "metadata": {
                "traffic_id": r["id"],
                "model": r["model"],
                "created_at": r["created_at"],
                "draft": True,
            },
        }
        lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    atomic_write_text(to, "".join(lines))
    return len(rows)


@dataclass
class Imported:
    version: str
    path: Path
    examples: int
    changed: int  # answers the labeller changed from the model's draft
    matched: int  # examples traced back to a captured row
    created: bool


def import_labelled(project: Project, path: Path, name: str = LABELLED) -> Imported:
    """Record the labelled examples of `path` as a dataset version, with its lineage."""
    from tunewise.data.load import load_examples
    from tunewise.data.versions import save_version

    examples = load_examples(path)
    ids = _traffic_ids(path)
    drafts = {r["id"]: r["response"] for r in traffic(project)}
    matched = changed = 0
    for ex, tid in zip(examples, ids, strict=False):
        if tid in drafts:
            matched += 1
            changed += ex["messages"][-1]["content"].strip() != drafts[tid].strip()
    labels: dict[str, int] = {}
    for ex in examples:
        answer = ex["messages"][-1]["content"].strip()
        labels[answer] = labels.get(answer, 0) + 1
    stats = {"examples": len(examples), "labelled_from_traffic": matched, "changed_drafts": changed}
    vid, stored, created = save_version(project, name, examples, [str(path)], stats)
    add_lineage(
        project,
        vid,
        "file:" + sha256_file(path),
        "import",
        {
            "path": str(path),
            "examples": len(examples),
            "matched": matched,
            "changed": changed,
            "traffic_ids": ids[: len(examples)],
        },
    )
    return Imported(vid, stored, len(examples), changed, matched, created)


def _traffic_ids(path: Path) -> list[str | None]:
    """The capture row id of each record, in file order (None where the record has none)."""
    ids: list[str | None] = []
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            record: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            ids.append(None)
            continue
        meta = record.get("metadata") if isinstance(record, dict) else None
        ids.append(meta.get("traffic_id") if isinstance(meta, dict) else None)
    return ids
