"""`tunewise runs` and `tunewise runs show`: list and show the project's runs (registry/runs.py);
`tunewise registry copy`: move the project's SQLite registry onto a shared PostgreSQL server (registry/pgcopy.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunewise.cli import app, out, print_json
from tunewise.errors import TunewiseError, nearest

RUNS_HELP = """List the project's runs, newest first: training, evaluation, pipeline (`tunewise run`), fine-tuning job and retrieval index runs, with status, start, duration, dataset versions, key figures and folder.

Key figures: training: last training loss, held-out (validation) loss, tokens trained on, seconds; evaluation: accuracy per arm; pipeline: the verdict; index: version, documents, chunks, build seconds.

Example: tunewise runs --kind train --limit 5"""

SHOW_HELP = """Show one run: status, times, dataset versions, key figures, error, folder and its files (--json adds its config and result); for an evaluation, the model calls per arm (calls, tokens, mean latency).

ID is a run id or a unique start of one (as `tunewise runs` lists them).

Example: tunewise runs show train-2026"""

COPY_HELP = """Copy the project's SQLite registry (.tunewise/registry.sqlite3) into an empty PostgreSQL database, so that a team's servers and workers can share it: datasets, runs, model calls, keys, files, fine-tuning jobs, aliases, reviews, traffic, everything.

The target is migrated, must hold no rows, and is filled in one transaction: every table, the ids' sequences moved past the largest id, each table's row count checked. A failure leaves it without rows. The SQLite file is only read. Then point the project at the URL (registry: in tunewise.yaml, TUNEWISE_REGISTRY or --registry).

Example: tunewise registry copy --to postgresql://team@db.internal/tunewise"""

runs_app = typer.Typer(help=RUNS_HELP, invoke_without_command=True)
app.add_typer(runs_app, name="runs")
registry_app = typer.Typer(help="The project's registry: copy it onto a shared PostgreSQL server.")
app.add_typer(registry_app, name="registry")

_PROJECT_HELP = "Project folder (default: found upward)."


def _project(project_dir: Path | None):
    from tunewise.project import Project, find_project

    if project_dir is not None:
        return find_project(project_dir) if project_dir.is_file() else Project(project_dir.resolve())
    return find_project()


def _store(project_dir: Path | None):
    from tunewise.registry.runs import RunStore

    return RunStore(_project(project_dir))


def _check_choice(value: str | None, choices: tuple[str, ...], flag: str) -> None:
    if value is not None and value not in choices:
        guess = nearest(value, choices)
        raise TunewiseError(
            f"unknown {flag} '{value}'" + (f" (did you mean '{guess}'?)" if guess else ""),
            hint=f"use one of {', '.join(choices)}",
        )


def duration(seconds: float | None) -> str:
    """
    >>> duration(None), duration(42), duration(185), duration(3725)
    ('-', '42 s', '3 min 5 s', '1 h 2 min')
    """
    if seconds is None:
        return "-"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _when(stamp: str | None) -> str:
    """An ISO time as the table shows it: date and time, UTC."""
    return stamp[:19].replace("T", " ") if stamp else "-"


def _folder(run: Any, root: Path) -> str:
    try:
        return str(run.path.relative_to(root))
    except ValueError:
        return str(run.path)


@runs_app.callback()
def runs(
    ctx: typer.Context,
    kind: str | None = typer.Option(
        None, "--kind", "-k", help="Only runs of this kind: train, eval, pipeline, job, index."
    ),
    status: str | None = typer.Option(
        None, "--status", "-s", help="Only runs with this status: running, succeeded, failed, cancelled."
    ),
    limit: int | None = typer.Option(None, "--limit", "-n", min=1, help="At most this many (the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from tunewise.cli import err
    from tunewise.registry.runs import KINDS, STATUSES, describe_figures

    _check_choice(kind, KINDS, "--kind")
    _check_choice(status, STATUSES, "--status")
    store = _store(project_dir)
    found = store.list(kind=kind, status=status, limit=limit)
    if as_json:
        print_json([r.to_dict() for r in found])
        return
    if not found:
        err.print(
            "no runs" + (" match" if kind or status else " yet: `tunewise run` makes some"), highlight=False
        )
        return
    table = Table("id", "kind", "status", "started (UTC)", "duration", "data", "key figures", "folder")
    for r in found:
        table.add_row(
            r.id,
            r.kind,
            r.status,
            _when(r.created_at),
            duration(r.seconds),
            ", ".join(v[:8] for v in r.dataset_versions) or "-",
            describe_figures(r.kind, r.figures) or "-",
            _folder(r, store.project.root),
        )
    out.print(table)


@runs_app.command("show", help=SHOW_HELP)
def show(
    run_id: str = typer.Argument(..., metavar="ID", help="A run id, or a unique start of one."),
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    store = _store(project_dir)
    run = store.get(run_id)
    calls = store.call_totals(run) if run.kind == "eval" else {}
    if as_json:
        print_json({**run.to_dict(), "model_calls": calls})
        return
    lines = [
        ("id", run.id),
        ("kind", run.kind),
        ("name", run.name or "-"),
        ("status", run.status),
        ("started", run.created_at),
        ("finished", run.finished_at or "-"),
        ("duration", duration(run.seconds)),
        ("data", ", ".join(run.dataset_versions) or "-"),
        ("folder", str(run.path)),
    ]
    if run.error:
        lines.append(("error", run.error))
    for label, value in lines:
        out.print(f"{label:<10}{value}", highlight=False, markup=False)
    if run.figures:
        out.print("figures", highlight=False)
        for key, value in run.figures.items():
            for label, shown in _figure_lines(key, value):
                out.print(f"  {label:<24}{shown}", highlight=False, markup=False)
    if calls:
        from rich.table import Table

        table = Table(
            "arm", "calls", "prompt tokens", "completion tokens", "mean latency", title="model calls"
        )
        for arm, c in calls.items():
            table.add_row(
                arm,
                str(c["calls"]),
                f"{c['prompt_tokens'] or 0:,}",
                f"{c['completion_tokens'] or 0:,}",
                f"{c['latency_ms']:.0f} ms" if c["latency_ms"] is not None else "-",
            )
        out.print(table)
    files = (
        sorted(p.name + ("/" if p.is_dir() else "") for p in run.path.iterdir()) if run.path.is_dir() else []
    )
    out.print(f"{'files':<10}{', '.join(files) or '(the folder is missing)'}", highlight=False, markup=False)


def _figure_lines(key: str, value: Any) -> list[tuple[str, str]]:
    """A figure as label/value lines: a mapping (accuracy per arm, stage statuses) gets one line per entry.

    >>> _figure_lines("accuracy", {"few-shot": 0.75})
    [('accuracy few-shot', '75.0%')]
    >>> _figure_lines("train_loss", 1.23456), _figure_lines("tokens", 12345), _figure_lines("verdict", None)
    ([('train_loss', '1.2346')], [('tokens', '12,345')], [('verdict', '-')])
    """
    if isinstance(value, dict):
        return [(f"{key} {k}", _figure(key, v)) for k, v in value.items()]
    return [(key, _figure(key, value))]


def _figure(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "accuracy" and isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if key.endswith("loss") else f"{value:,.1f}"


@registry_app.command("copy", help=COPY_HELP)
def copy(
    to: str = typer.Option(..., "--to", metavar="URL", help="An empty PostgreSQL database: postgresql://..."),
    source: Path | None = typer.Option(
        None, "--from", metavar="PATH", help="The SQLite registry to copy (default: the project's)."
    ),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    from rich.table import Table

    from tunewise.cli import err
    from tunewise.registry.pgcopy import copy_registry
    from tunewise.registry.postgres import redact

    if source is None:
        source = _project(project_dir).state_dir / "registry.sqlite3"
    copied = copy_registry(
        source, to, progress=lambda table, n: err.print(f"copied {table}: {n:,} rows", highlight=False)
    )
    table = Table("table", "rows")
    for c in copied:
        table.add_row(c.table, f"{c.rows:,}")
    out.print(table)
    err.print(
        f"copied {sum(c.rows for c in copied):,} rows in {len(copied)} tables from {source} to {redact(to)}; "
        "point the project at it with `registry:` in tunewise.yaml (or TUNEWISE_REGISTRY)",
        highlight=False,
        markup=False,
    )
