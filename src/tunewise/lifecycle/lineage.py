"""Where a served model came from: dataset versions -> training runs -> evaluations -> gate decisions and
promotions, each with its date.

The dataset versions a run read are in `runs.dataset_versions`; where a dataset version came from (an import
of labelled traffic, a retrain's union of old and new) is in `dataset_lineage`; a retrain's decision is in
`retrain_decisions`; promotions are the alias history of `tunewise.registry.aliases`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunewise.project import Project
from tunewise.registry.db import utc_now


def add_lineage(project: Project, child: str, parent: str, relation: str, detail: dict[str, Any]) -> None:
    """Record that dataset version `child` was made from `parent` (kept once per pair)."""
    with project.registry() as registry:
        with registry.transaction() as conn:
            exists = conn.execute(
                "SELECT 1 FROM dataset_lineage WHERE child = ? AND parent = ?", (child, parent)
            ).fetchone()
            if exists is None:
                conn.execute(
                    "INSERT INTO dataset_lineage (child, parent, relation, created_at, detail)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (child, parent, relation, utc_now(), json.dumps(detail, ensure_ascii=False)),
                )


def parents(project: Project, version: str) -> list[dict[str, Any]]:
    with project.registry() as registry:
        rows = registry.conn.execute(
            "SELECT * FROM dataset_lineage WHERE child = ? ORDER BY created_at, parent", (version,)
        ).fetchall()
    return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]


@dataclass
class Lineage:
    model: str
    datasets: list[dict[str, Any]] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    promotions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "datasets": self.datasets,
            "runs": self.runs,
            "evaluations": self.evaluations,
            "decisions": self.decisions,
            "promotions": self.promotions,
        }


def _promotions(project: Project, model: str) -> list[dict[str, Any]]:
    from tunewise.registry.aliases import history

    with project.registry() as registry:
        return list(history(registry, model))


def lineage(project: Project, model: str) -> Lineage:
    """The lineage of `model` (an alias name): its promotions and gate decisions, the training runs they
    name (every training run of the project when none is named yet), those runs' evaluations and datasets,
    and the datasets those came from, recursively."""
    from tunewise.registry.runs import RunStore

    out = Lineage(model)
    out.promotions = _promotions(project, model)
    with project.registry() as registry:
        out.decisions = [
            {**dict(r), "figures": json.loads(r["figures"]), "promoted": bool(r["promoted"])}
            for r in registry.conn.execute(
                "SELECT * FROM retrain_decisions WHERE model = ? ORDER BY created_at, id", (model,)
            ).fetchall()
        ]
        edges = [dict(r) for r in registry.conn.execute("SELECT * FROM dataset_lineage").fetchall()]
        versions = {v["id"]: v for v in registry.dataset_versions()}
    store = RunStore(project)
    named = [p.get("run_id") for p in out.promotions]
    named += [d[k] for d in out.decisions for k in ("current_run", "candidate_run")]
    train_runs = [r for r in store.list(kind="train")]
    if named:
        train_runs = [r for r in train_runs if r.id in set(named)]
    run_ids = {r.id for r in train_runs}
    out.runs = [
        {
            "id": r.id,
            "status": r.status,
            "created_at": r.created_at,
            "finished_at": r.finished_at,
            "dataset_versions": r.dataset_versions,
            "figures": r.figures,
        }
        for r in reversed(train_runs)  # oldest first (the store lists newest first, ties by insertion)
    ]
    for r in reversed(store.list(kind="eval")):
        tuned = r.config.get("fine_tuned_run")
        if tuned in run_ids:
            out.evaluations.append(
                {
                    "id": r.id,
                    "run": tuned,
                    "created_at": r.created_at,
                    "dataset_versions": r.dataset_versions,
                    "accuracy": (r.figures or {}).get("accuracy", {}),
                }
            )
    # Datasets: those the runs and evaluations read, and their ancestors.
    wanted = [v for r in out.runs for v in r["dataset_versions"]]
    wanted += [v for e in out.evaluations for v in e["dataset_versions"]]
    seen: set[str] = set()
    while wanted:
        vid = wanted.pop()
        if vid in seen:
            continue
        seen.add(vid)
        ups = [e for e in edges if e["child"] == vid]
        wanted += [e["parent"] for e in ups if not e["parent"].startswith("file:")]
        v = versions.get(vid, {})
        out.datasets.append(
            {
                "id": vid,
                "name": v.get("name"),
                "created_at": v.get("created_at"),
                "examples": v.get("n_examples"),
                "parents": [
                    {"parent": e["parent"], "relation": e["relation"], "detail": json.loads(e["detail"])}
                    for e in ups
                ],
            }
        )
    out.datasets.sort(key=lambda d: (d["created_at"] or "", d["id"]))
    return out
