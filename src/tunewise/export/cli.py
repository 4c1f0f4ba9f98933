"""`tunewise promote`, `tunewise rollback`, `tunewise aliases` (registry/aliases.py) and `tunewise export`
(export/run.py): putting a trained model in front of users, taking it back, and carrying it elsewhere."""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.project import project_or_cwd

PROMOTE_HELP = """Make `tunewise serve` answer the model name NAME with training run RUN (or a fine-tuning job's run).

A running server picks the change up on its next request: no restart. Each change is recorded with who made it and when (`tunewise aliases NAME`). A run whose pipeline verdict said not to fine-tune (keep prompting, use RAG, not yet) is refused unless --force, which needs --reason (recorded).

Example: tunewise promote train-20261203-101500-abcd --as support"""

ROLLBACK_HELP = """Return the model name NAME to the run it answered with before its last promotion (a second rollback goes further back).

Example: tunewise rollback support"""

ALIASES_HELP = """List the promoted model names and the run each answers with; with NAME, every change of that name (who, when, from which run to which, the verdict, the reason).

Example: tunewise aliases support"""

_PROJECT_HELP = "Project folder (default: found upward, else the current folder)."
_BY_HELP = "Who makes the change, as recorded (default: the login name)."


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:  # no login name (a container without a passwd entry)
        return "unknown"


@app.command("promote", help=PROMOTE_HELP)
def promote_command(
    run: str = typer.Argument(
        ..., help="A training run (id, unique start of one, or folder) or a job's run."
    ),
    name: str = typer.Option(..., "--as", help="The model name clients will send."),
    force: bool = typer.Option(
        False, "--force", help="Promote even though the verdict said not to fine-tune."
    ),
    reason: str | None = typer.Option(None, "--reason", help="Why (required with --force; recorded)."),
    by: str | None = typer.Option(None, "--by", help=_BY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the recorded change as JSON."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    from tunewise.registry import aliases
    from tunewise.registry.runs import RunStore

    project = project_or_cwd(project_dir)
    found = RunStore(project).get(run, kinds=aliases.PROMOTABLE_KINDS)
    with project.registry() as registry:
        event = aliases.promote(registry, name, found.id, by=_who(by), reason=reason, force=force)
    if as_json:
        print_json(event)
        return
    was = f" (was {event['previous_run_id']})" if event["previous_run_id"] else ""
    out.print(f"{name} -> {found.id}{was}", highlight=False)
    if event["forced"]:
        err.print(f"promoted against the verdict '{event['verdict']}': {event['reason']}", highlight=False)


@app.command("rollback", help=ROLLBACK_HELP)
def rollback_command(
    name: str = typer.Argument(..., help="A promoted model name."),
    by: str | None = typer.Option(None, "--by", help=_BY_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the recorded change as JSON."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    from tunewise.registry import aliases

    with project_or_cwd(project_dir).registry() as registry:
        event = aliases.rollback(registry, name, by=_who(by))
    if as_json:
        print_json(event)
        return
    out.print(f"{name} -> {event['run_id']} (was {event['previous_run_id']})", highlight=False)


@app.command("aliases", help=ALIASES_HELP)
def aliases_command(
    name: str | None = typer.Argument(None, help="Show every change of this name."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    from rich.table import Table

    from tunewise.errors import TunewiseError
    from tunewise.registry import aliases

    with project_or_cwd(project_dir).registry() as registry:
        rows = aliases.history(registry, name) if name else aliases.list_aliases(registry)
    if as_json:
        print_json(rows)
        return
    if name and not rows:
        raise TunewiseError(f"no alias '{name}'", hint="list the aliases with `tunewise aliases`")
    if not rows:
        err.print("no aliases yet: `tunewise promote RUN --as NAME` makes one", highlight=False)
        return
    if name:
        table = Table("#", "action", "run", "was", "by", "when (UTC)", "verdict", "reason")
        for r in rows:
            verdict = (r["verdict"] or "-") + (" (forced)" if r["forced"] else "")
            table.add_row(str(r["seq"]), r["action"], r["run_id"], r["previous_run_id"] or "-",
                          r["changed_by"], r["changed_at"][:19].replace("T", " "), verdict, r["reason"] or "-")  # fmt: skip
    else:
        table = Table("name", "run", "since (UTC)", "by", "changes")
        for r in rows:
            table.add_row(r["name"], r["run_id"], r["since"][:19].replace("T", " "), r["changed_by"],
                          str(r["changes"]))  # fmt: skip
    out.print(table)


EXPORT_HELP = """Export training run RUN for other tools, and check that it behaves as trained.

--to peft: the LoRA adapter (vLLM --enable-lora, PEFT); merged: LoRA merged into the base as safetensors with the tokenizer and chat template (plain transformers, 4.x included); gguf: one GGUF file (--quant f32, f16 or q8_0) with the chat template and special tokens in its metadata; ollama: the GGUF file and a Modelfile (TEMPLATE, SYSTEM, stop parameters) for `ollama create NAME -f Modelfile`.

Each export has a model card (README.md: the base by name, revision and content hash, data versions, hyperparameters, evaluation figures) and export.json. The check (on by default) renders --prompts training chats with the exported template and requires the same bytes as training rendered, then compares greedy generations of the exported files, loaded back by plain transformers, with tunewise's own on as many held-out prompts: all equal for peft, merged, f32 and f16; at least --min-agreement for q8_0 (the rate is stated). A failed check is an error and leaves the files in OUT.rejected/.

Example: tunewise export train-20261203-101500-abcd --to ollama --quant q8_0 --out exports/support"""


@app.command("export", help=EXPORT_HELP)
def export_command(
    run: str = typer.Argument(..., help="A training run: id, unique start of one, or folder."),
    to: str = typer.Option(..., "--to", help="peft, merged, gguf or ollama."),
    out_dir: Path = typer.Option(..., "--out", help="The folder to write (must not exist, or be empty)."),
    quant: str = typer.Option("f16", "--quant", help="gguf and ollama: f32, f16 or q8_0."),
    check: bool = typer.Option(True, "--check/--no-check", help="Check the export behaves as trained."),
    prompts: int = typer.Option(10, "--prompts", min=1, help="Training chats and held-out prompts checked."),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Tokens generated per prompt."),
    min_agreement: float = typer.Option(
        0.8, "--min-agreement", help="q8_0: share of prompts whose greedy tokens must equal tunewise's."
    ),
    template: Path | None = typer.Option(
        None,
        "--template",
        help="ollama: a TEMPLATE file to use instead of the derived one (checked all the same).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print export.json."),
    project_dir: Path | None = typer.Option(None, "--project", help=_PROJECT_HELP),
) -> None:
    from tunewise.export.run import ExportConfig, export

    config = ExportConfig(
        run=run, to=to, out=out_dir, quant=quant, check=check, n_prompts=prompts, max_new_tokens=max_new_tokens,
        min_agreement=min_agreement, template=template.read_text(encoding="utf-8") if template else None,
    )  # fmt: skip
    err.print(f"exporting {run} --to {to} into {out_dir} ...", highlight=False)
    result = export(project_or_cwd(project_dir), config)
    if as_json:
        print_json(result.info)
        return
    check = result.info["check"]
    if check is not None:
        g = check["generation"]
        out.print(
            f"check: {check['template']['equal']}/{check['template']['n']} training prompts rendered byte for byte; "
            f"greedy tokens equal to tunewise's on {g['equal']}/{g['n']} {g['prompts']} prompts "
            f"({g['agreement']:.0%}, tokens {g['token_agreement']:.1%}; required: {g['required']})",
            highlight=False,
        )
    for name, size in result.info["files"].items():
        out.print(f"{result.out / name}  {size:,} bytes", highlight=False)
