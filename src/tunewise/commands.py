"""Top-level commands that are not a pipeline stage of their own: init, version."""

from __future__ import annotations

from pathlib import Path

import typer

from tunewise.cli import app, err, out


@app.command(
    help="Scaffold a project: tunewise.yaml, data/ and the state folder.\n\nExample: tunewise init my-task"
)
def init(
    path: Path = typer.Argument(Path("."), help="Folder to create the project in."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing tunewise.yaml."),
) -> None:
    from tunewise.scaffold import scaffold

    project = scaffold(path, force=force)
    out.print(f"created {project.spec_path}")
    err.print(
        f"next: put your examples in {project.root / 'data'} and run `tunewise data check data/train.jsonl`"
    )
