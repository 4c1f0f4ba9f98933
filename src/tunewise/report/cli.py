"""`tunewise report`: parse, call `build_report`, print where the files are."""

from __future__ import annotations

from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json

# One line per paragraph: typer re-wraps paragraphs but keeps the line breaks inside them.
REPORT_HELP = """Write the HTML report (one self-contained page: verdict, task, data, training, arms, plots, every held-out example with each arm's answer, stage times) and report.json from a pipeline state file.

The page needs no network to be viewed: styles, plots and its one script are inside it. Sections the state lacks are shown as not run.

Example: tunewise report .tunewise/state.json --out reports/"""


@app.command("report", help=REPORT_HELP)
def report(
    state: Path = typer.Argument(..., help="The pipeline state JSON (what `tunewise run` records)."),
    out_dir: Path = typer.Option(
        Path("reports"), "--out", "-o", help="Folder for report.html and report.json."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
) -> None:
    from tunewise.report.build import build_report, load_state

    err.print(f"building the report from {state}", highlight=False)
    html_path, json_path = build_report(load_state(state), out_dir)
    if as_json:
        print_json({"html": str(html_path), "json": str(json_path)})
    else:
        out.print(f"report: {html_path}", highlight=False)
        out.print(f"json:   {json_path}", highlight=False)
