"""`tunewise data ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="Validate, inspect, split, version and convert training data.", no_args_is_help=True)
