"""The `tunewise` command line: a thin layer that parses, calls one Python API function, renders the result.

stdout carries results (tables, JSON); stderr carries narration and errors. Heavy imports stay inside the
commands so that `tunewise --help` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import typer
from rich.console import Console

from tunewise import __version__
from tunewise.errors import TunewiseError

# Results: when piped (not a terminal), do not squeeze tables into rich's default of 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)  # narration, warnings, errors

app = typer.Typer(
    name="tunewise",
    help="Fine-tune only when it pays, and prove it.\n\nExample: tunewise init my-task && cd my-task && tunewise data check data/train.jsonl",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def _version(value: bool) -> None:
    if value:
        out.print(f"tunewise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


# Each pipeline stage owns its commands; this list is the table of contents, in the order `--help` shows them.
COMMAND_MODULES = (
    "tunewise.commands",  # init
    "tunewise.pipeline.cli",  # demo, run
    "tunewise.data.cli",  # data check/split/versions/convert
    "tunewise.rag.cli",  # knowledge check/index/search
    "tunewise.train.cli",  # train
    "tunewise.evaluate.cli",  # eval
    "tunewise.economics.cli",  # cost, pricing
    "tunewise.decide.cli",  # advise, decide
    "tunewise.report.cli",  # report
    "tunewise.serve.cli",  # serve, keys
    "tunewise.export.cli",  # export, promote, rollback, aliases
    "tunewise.registry.cli",  # runs, runs show, registry copy
    "tunewise.review.cli",  # review create/serve/results/export/judge
    "tunewise.lifecycle.cli",  # traffic export/import, drift, retrain, lineage
)


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        if name == "tunewise.data.cli" and not any(g.name == "data" for g in app.registered_groups):
            app.add_typer(module.app, name="data")


def main() -> None:
    _register()
    try:
        app()  # standalone mode: usage errors and --help are handled by typer and exit by themselves
    except TunewiseError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
        sys.exit(1)


__all__ = ["app", "main", "out", "err", "print_json"]
