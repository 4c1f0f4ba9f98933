"""How often the served model is retrained, and whether it is due.

The trainings counted are those that put (or tried to put) a model in service: runs promoted under an alias and
the candidates of gated retrains; a project with neither has had one training, its newest run. Retraining more
often than quarterly (a mean interval under `QUARTER_DAYS`) suggests the task's definition is still moving;
the spec's `retrain_every_days` says when the last training is too old.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

QUARTER_DAYS = 91.0


def cadence(
    trained_at: list[str], retrain_every_days: int | None = None, now: datetime | None = None
) -> dict[str, Any] | None:
    """Training count, mean interval, trainings per year, days since the last, and the warnings.

    >>> c = cadence(["2026-01-01T00:00:00+00:00", "2026-01-31T00:00:00+00:00", "2026-03-02T00:00:00+00:00"],
    ...             retrain_every_days=30, now=datetime(2026, 4, 1, tzinfo=timezone.utc))
    >>> c["trainings"], c["mean_interval_days"], c["per_year"], c["days_since_last"]
    (3, 30.0, 12.2, 30.0)
    >>> len(c["warnings"])
    1
    """
    if not trained_at:
        return None
    now = now or datetime.now(timezone.utc)
    times = sorted(datetime.fromisoformat(t) for t in trained_at)
    gaps = [(b - a).total_seconds() / 86400 for a, b in zip(times, times[1:], strict=False)]
    mean = sum(gaps) / len(gaps) if gaps else None
    since = (now - times[-1]).total_seconds() / 86400
    warnings = []
    if mean is not None and mean < QUARTER_DAYS:
        warnings.append(
            f"retrained every {mean:.0f} days on average ({len(times)} trainings): more often than quarterly "
            "signals an unstable task definition; settle the target and the labels before retraining again"
        )
    if retrain_every_days is not None and since > retrain_every_days:
        warnings.append(
            f"the last training was {since:.0f} days ago, over the spec's retrain_every_days ({retrain_every_days}): "
            "check `tunewise drift` and retrain with newly labelled traffic"
        )
    return {
        "trainings": len(times),
        "first": times[0].isoformat(),
        "last": times[-1].isoformat(),
        "mean_interval_days": round(mean, 1) if mean is not None else None,
        "per_year": round(365.25 / mean, 1) if mean else None,
        "days_since_last": round(since, 1),
        "retrain_every_days": retrain_every_days,
        "warnings": warnings,
    }


def project_cadence(project_path: str | Path, now: datetime | None = None) -> dict[str, Any] | None:
    """`cadence` of the project at `project_path` from its registry; None when it has no training run."""
    from tunewise.project import Project

    project = Project(Path(project_path))
    if not (project.state_dir / "registry.sqlite3").is_file():
        return None
    every = None
    if project.spec_path.is_file():
        from tunewise.spec import load_spec

        every = load_spec(project.spec_path).retrain_every_days
    with project.registry() as registry:
        conn = registry.conn
        ids = {r[0] for r in conn.execute("SELECT run_id FROM model_aliases WHERE action = 'promote'")}
        ids |= {r[0] for r in conn.execute("SELECT candidate_run FROM retrain_decisions")}
        rows = conn.execute(
            "SELECT id, created_at FROM runs WHERE kind IN ('train', 'job') AND status = 'succeeded'"
            " ORDER BY created_at DESC"
        ).fetchall()
    times = [r["created_at"] for r in rows if r["id"] in ids]
    if not times and rows:
        times = [rows[0]["created_at"]]
    return cadence(times, every, now)
