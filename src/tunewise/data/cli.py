"""`tunewise data ...`: validate, split, version and convert training data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunewise.errors import TunewiseError

app = typer.Typer(help="Validate, split, version and convert training data.", no_args_is_help=True)

PROVIDERS = ("openai", "together", "vertex", "bedrock")


def _spec_and_project(spec_path: Path | None):
    """The spec given with --spec, or the one of the project around the working directory, or none."""
    from tunewise.project import find_project
    from tunewise.spec import load_spec

    if spec_path is not None:
        return load_spec(spec_path), find_project(spec_path)
    try:
        project = find_project()
    except TunewiseError:
        return None, None
    return load_spec(project.spec_path), project


@app.command(
    help="Check data files: every problem with file:line and field, statistics, duplicates and leakage.\n\n"
    "Exit code 1 on errors (and on warnings with --strict).\n\n"
    "Example: tunewise data check data/train.jsonl --eval data/eval.jsonl --for together"
)
def check(
    files: list[Path] = typer.Argument(None, help="Training files (default: data.train of tunewise.yaml)."),
    eval: list[Path] = typer.Option(
        None, "--eval", help="Held-out files: checked too, and for leakage from train."
    ),
    provider: str = typer.Option(
        None, "--for", help=f"Also apply a provider's rules: {', '.join(PROVIDERS)}."
    ),
    fmt: str = typer.Option(
        "auto", "--format", help="auto, openai, prompt-completion, alpaca, sharegpt, vertex, bedrock or csv."
    ),
    spec_path: Path = typer.Option(None, "--spec", help="Task spec for the output contract and base model."),
    labels: str = typer.Option(
        None, "--labels", help="Comma-separated label set to check completions against."
    ),
    prompt_column: str = typer.Option(None, "--prompt-column", help="CSV: the column holding the input."),
    completion_column: str = typer.Option(
        None, "--completion-column", help="CSV: the column holding the answer."
    ),
    tokens: bool = typer.Option(
        True, "--tokens/--no-tokens", help="Token statistics and context-length check."
    ),
    near: bool = typer.Option(
        True, "--near-duplicates/--no-near-duplicates", help="MinHash near-duplicate search."
    ),
    structure_only: bool = typer.Option(
        False,
        "--structure-only",
        help="Only the structure of each line and the example counts (what Together's check_file checks): "
        "no output contract, duplicates, leakage, labels, token statistics or length limits.",
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from tunewise.cli import err, print_json
    from tunewise.data.load import check_format
    from tunewise.data.validate import check_files, options_from_spec

    if provider is not None and provider not in PROVIDERS:
        raise TunewiseError(
            f"unknown provider '{provider}' for --for", hint=f"use one of {', '.join(PROVIDERS)}"
        )
    check_format(fmt)
    spec, project = _spec_and_project(spec_path)
    if not files:
        if spec is None:
            raise TunewiseError(
                "no files given and no tunewise.yaml here",
                hint="pass files: tunewise data check data/train.jsonl",
            )
        files = [project.root / p for p in spec.data.train]
        eval = eval or [project.root / p for p in spec.data.eval]
    tokenizer = None
    if tokens and not structure_only:
        from tunewise.models.tokenizer import ChatTokenizer
        from tunewise.spec import EMBEDDED_MODEL

        tokenizer = ChatTokenizer.for_base(spec.model.base if spec else EMBEDDED_MODEL)
    opts = options_from_spec(spec, provider, tokenizer)
    if spec is not None and not as_json:
        err.print(f"using the output contract and base model of {project.spec_path}")
    if labels:
        opts.labels = [x.strip() for x in labels.split(",") if x.strip()]
    if fmt != "auto":
        opts.fmt = fmt
    if prompt_column or completion_column:
        opts.csv_columns = {"prompt": prompt_column, "completion": completion_column}
    opts.near_duplicates = near
    opts.structure_only = structure_only
    report = check_files(list(files), list(eval or []), opts, tokenizer)
    if as_json:
        print_json(report.to_json())
    else:
        _render(report)
    if report.errors or (strict and report.warnings):
        raise typer.Exit(1)


def _render(report) -> None:
    from rich.markup import escape

    from tunewise.cli import out

    for f in report.files:
        extra = ""
        if "exact_duplicates" in f:
            extra = f", {f['exact_duplicates']} exact duplicates"
        if f.get("near_duplicate_groups"):
            extra += f", {f['near_duplicate_groups']} near-duplicate groups ({f['near_duplicate_examples']} examples)"
        out.print(
            f"[bold]{escape(f['path'])}[/] ({f['role']}): {f['examples']} examples, format {f['format']}{extra}",
            highlight=False,
        )
    for g in report.problems.sorted():
        color = "red" if g.severity == "error" else "yellow"
        more = f" ({g.count} occurrences)" if g.count > 1 else ""
        out.print(f"[{color}]{g.severity}[/]" + escape(f"[{g.code}] {g.field}{more}"), highlight=False)
        for file, line, message in g.first:
            where = f"{file}:{line}" if line else file
            out.print(f"    {where}: {message}", highlight=False, markup=False)
        if g.count > len(g.first):
            out.print(f"    ... and {g.count - len(g.first)} more", highlight=False)
    stats = report.stats
    tokens = stats.get("tokens")
    if tokens:
        kind = "exact" if tokens["exact"] else f"from a sample of {tokens['sampled']}"
        out.print(
            f"tokens per example ({kind}): prompt p50 {tokens['prompt']['p50']} / p95 {tokens['prompt']['p95']} / max {tokens['prompt']['max']}, "
            f"completion p50 {tokens['completion']['p50']} / p95 {tokens['completion']['p95']} / max {tokens['completion']['max']}; "
            f"trained-token share {tokens['trained_share']:.1%}; about {tokens['estimated_training_tokens_x_epochs']:,} training tokens "
            f"over {tokens['epochs_assumed']} epochs",
            highlight=False,
        )
    if stats.get("labels"):
        labels = stats["labels"]
        shown = ", ".join(f"{k} {v}" for k, v in list(labels.items())[:12])
        out.print(
            f"labels ({len(labels)}): {shown}{' ...' if len(labels) > 12 else ''}",
            highlight=False,
            markup=False,
        )
    for note in report.notes:
        out.print(f"note: {note}", highlight=False, markup=False)
    verdict = "[red]FAILED[/]" if report.errors else "[green]ok[/]"
    out.print(
        f"{verdict}: {report.errors} error(s), {report.warnings} warning(s) in {len(report.files)} file(s), {report.seconds:.1f} s",
        highlight=False,
    )


@app.command(
    help="Split a file into train and held-out sets: deterministic, stratified by label, normalized.\n\n"
    "Example: tunewise data split data/all.jsonl --eval-fraction 0.2 --out data/"
)
def split(
    file: Path = typer.Argument(..., help="The file to split."),
    eval_fraction: float = typer.Option(
        0.2, "--eval-fraction", min=0.01, max=0.9, help="Share of examples held out."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    out_dir: Path = typer.Option(Path("."), "--out", help="Folder for train.jsonl and eval.jsonl."),
    fmt: str = typer.Option("auto", "--format", help="Input format (default: detected)."),
    spec_path: Path = typer.Option(None, "--spec", help="Task spec (labels for stratification)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    from tunewise.cli import out, print_json
    from tunewise.data.load import load_examples
    from tunewise.data.split import interval_half_width, split_examples
    from tunewise.data.versions import publish_split, save_version, to_jsonl
    from tunewise.spec import LabelContract

    spec, project = _spec_and_project(spec_path)
    examples = load_examples(file, fmt)
    labels = (
        spec.contract.labels
        if spec and isinstance(spec.contract, LabelContract)
        else _detect_labels(examples)
    )
    train, held = split_examples(examples, eval_fraction, seed, labels)
    # Both files are published together: a reader never sees a train file and an eval file of two splits.
    publish_split(out_dir, {"train.jsonl": to_jsonl(train), "eval.jsonl": to_jsonl(held)})
    result = {
        "train": {"path": str(out_dir / "train.jsonl"), "examples": len(train)},
        "eval": {"path": str(out_dir / "eval.jsonl"), "examples": len(held)},
        "stratified": labels is not None,
        "interval_half_width_at_80pct": round(interval_half_width(len(held), 0.8), 4),
    }
    if project is not None:
        for name, part in (("train", train), ("eval", held)):
            vid, _, _ = save_version(project, name, part, [str(file)], {"examples": len(part)})
            result[name]["version"] = vid[:16]
    if as_json:
        print_json(result)
        return
    out.print(f"train: {len(train)} examples -> {result['train']['path']}", highlight=False)
    out.print(f"eval:  {len(held)} examples -> {result['eval']['path']}", highlight=False)
    hw = result["interval_half_width_at_80pct"]
    need = next(n for n in range(10, 100000, 10) if interval_half_width(n, 0.8) <= 0.05)
    out.print(
        f"held-out size guidance: {len(held)} examples measure an accuracy near 80% to within ±{hw:.1%} (95% interval); "
        f"±5% needs about {need}.",
        highlight=False,
    )


def _detect_labels(examples: list[dict]) -> list[str] | None:
    from tunewise.data.formats import completion

    answers = [completion(e["messages"]) or "" for e in examples]
    distinct = set(answers)
    if len(distinct) <= max(2, len(answers) // 5) and all(len(a) <= 64 for a in distinct):
        return sorted(distinct)
    return None


@app.command(
    help="List the dataset versions recorded in this project.\n\nExample: tunewise data versions --json"
)
def versions(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    from rich.table import Table

    from tunewise.cli import out, print_json
    from tunewise.project import find_project

    project = find_project()
    registry = project.registry()
    try:
        rows = registry.dataset_versions()
    finally:
        registry.close()
    indexes = knowledge_index_versions(project)
    if as_json:
        # One list of versions; `kind` tells a dataset version from a knowledge index version.
        print_json(
            [{"kind": "dataset", **r} for r in rows] + [{"kind": "knowledge-index", **ix} for ix in indexes]
        )
        return
    table = Table("version", "name", "examples", "created", "sources")
    for r in rows:
        table.add_row(
            r["id"][:16], r["name"], str(r["n_examples"]), r["created_at"], ", ".join(r["source_paths"])
        )
    out.print(table)
    if indexes:
        table = Table(
            "index version", "documents", "chunks", "retriever", "built", "docs", title="knowledge indexes"
        )
        for ix in indexes:
            table.add_row(
                ix["version"][:16], str(ix["documents"]), str(ix["chunks"]), ix["retriever"], ix["created_at"],
                ix["docs"],
            )  # fmt: skip
        out.print(table)


def knowledge_index_versions(project: Any) -> list[dict[str, Any]]:
    """The knowledge indexes built for this project, newest first: each build is a run of kind `index`
    (rag/index.py), versioned by the documents' content and the chunking, like a dataset version."""
    from tunewise.registry.runs import RunStore

    out = []
    for run in RunStore(project).list(kind="index", status="succeeded"):
        knowledge = run.config.get("knowledge") or {}
        out.append(
            {
                "version": str(run.config.get("version") or (run.result or {}).get("version") or ""),
                "documents": run.figures.get("documents"),
                "chunks": run.figures.get("chunks"),
                "retriever": str(knowledge.get("retriever") or ""),
                "docs": str(knowledge.get("docs") or ""),
                "created_at": run.created_at,
                "run": run.id,
            }
        )
    return out


@app.command(
    help="Convert a data file to a provider's fine-tuning format (checked against its documented rules).\n\n"
    "Example: tunewise data convert data/train.jsonl --to vertex --out train.vertex.jsonl"
)
def convert(
    file: Path = typer.Argument(..., help="The file to convert (any supported input format)."),
    to: str = typer.Option(
        ..., "--to", help="openai, together, vertex, bedrock (conversation), bedrock-prompt-completion or hf."
    ),
    out_path: Path = typer.Option(..., "--out", help="Where to write the JSONL."),
    fmt: str = typer.Option("auto", "--format", help="Input format (default: detected)."),
) -> None:
    from tunewise.cli import out
    from tunewise.data.convert import PROVIDERS, convert_file
    from tunewise.data.load import check_format, load_examples

    if to not in PROVIDERS:
        raise TunewiseError(f"unknown provider '{to}' for --to", hint=f"use one of {', '.join(PROVIDERS)}")
    check_format(fmt)
    examples = load_examples(file, fmt)
    convert_file(examples, to, out_path)
    out.print(f"wrote {len(examples)} examples in {to} format to {out_path}", highlight=False)
