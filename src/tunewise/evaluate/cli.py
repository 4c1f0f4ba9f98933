"""`tunewise eval`: every arm on the same held-out examples, one table."""

from __future__ import annotations

from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError


def _interval(metric: dict | None) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    return f"{metric['value']:.1%} [{metric['low']:.0%}, {metric['high']:.0%}]"


def render_arms(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['task']}: {summary['n_examples']} held-out examples (95% intervals)")
    for column in (
        "arm",
        "accuracy",
        "lenient",
        "format",
        "consistency",
        "unsupported",
        "p50 ms",
        "prompt tok",
        "compl tok",
    ):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in summary["arms"]:
        latency = arm.get("latency_ms") or {}
        table.add_row(
            arm["name"],
            _interval(arm["accuracy"]),
            _interval(arm.get("accuracy_lenient")),
            _interval(arm.get("format_compliance")),
            _interval(arm.get("consistency")),
            _interval(arm.get("unsupported_rate")),
            f"{latency['p50']:.0f}" if latency.get("p50") is not None else "-",
            f"{arm['prompt_tokens']:.0f}" if arm.get("prompt_tokens") is not None else "-",
            f"{arm['completion_tokens']:.1f}" if arm.get("completion_tokens") is not None else "-",
        )
    out.print(table)
    render_reference_metrics(summary["task"], summary["arms"])


# The measures against the reference beyond accuracy, each shown when some arm has it: short answers (exact match,
# token F1), prose (ROUGE-L, chrF), a JSON contract's free-text fields, and the rag arms' retrieval.
REFERENCE_COLUMNS = (
    ("exact match", "exact_match"), ("token F1", "token_f1"), ("ROUGE-L", "rouge_l"), ("chrF", "chrf"),
    ("text ROUGE-L", "text_similarity"), ("text chrF", "text_chrf"), ("grounded", "grounded_rate"),
    ("recall@k", "recall_at_k"), ("MRR", "mrr"),
)  # fmt: skip


def render_reference_metrics(task: str, arms: list[dict]) -> None:
    """One table of `REFERENCE_COLUMNS` that some arm has, or nothing."""
    from rich.table import Table

    columns = [(title, key) for title, key in REFERENCE_COLUMNS if any(arm.get(key) for arm in arms)]
    if not columns:
        return
    retrieval = any(key == "recall_at_k" for _, key in columns)
    table = Table(
        title=f"{task}: against the reference{' and retrieval' if retrieval else ''} (95% intervals)"
    )
    for column in ("arm", *(title for title, _ in columns)):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in arms:
        cells = []
        for _, key in columns:
            cell = _interval(arm.get(key))
            cells.append(f"{cell} (k={arm.get('k')})" if key == "recall_at_k" and arm.get(key) else cell)
        table.add_row(arm["name"], *cells)
    out.print(table)


@app.command(
    name="eval",
    help="Evaluate arms on the held-out split: zero-shot, few-shot, retrieved, fine-tuned:RUN, rag,\n"
    "rag+fine-tuned:RUN (passages from the spec's knowledge documents in the prompt), and the\n"
    "OpenAI-compatible endpoints named in evaluation.endpoints.\n\n"
    "Examples:\n\n"
    "  tunewise eval --arms zero-shot,few-shot,fine-tuned:train-20261129-0623 --limit 50\n\n"
    "  tunewise eval --arms zero-shot,rag,rag+fine-tuned:train-20261130-0912\n\n"
    "  tunewise eval --arms few-shot,gpt-4o   (gpt-4o: an endpoint in tunewise.yaml)",
)
def eval_command(
    arms: str = typer.Option(
        None,
        "--arms",
        help="Comma-separated arms; fine-tuned:RUN names a training run, fine-tuned:PATH a PEFT adapter folder "
        "trained anywhere; rag+fine-tuned:RUN the run (trained with passages) the rag arm fine-tuned uses; an endpoint by its name; ARM+scored (label contracts) or ARM+constrained (json, "
        "regex) a variant that meets the contract by construction (evaluation.constrained: auto runs each "
        "prompted arm's beside it). "
        "Default: the spec's prompted arms and endpoints.",
    ),
    spec_path: Path = typer.Option(
        None, "--spec", help="The task spec (default: tunewise.yaml found upward)."
    ),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N held-out examples."),
    samples: int = typer.Option(
        None, "--samples", min=1, help="Consistency samples per prompt (default: the spec's)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    from tunewise.data.load import load_spec_split
    from tunewise.evaluate.arms import is_rag_arm, is_tuned_arm
    from tunewise.evaluate.run import run_evaluation
    from tunewise.project import find_project
    from tunewise.spec import load_spec

    project = find_project(spec_path)
    spec = load_spec(spec_path or project.spec_path)
    if limit:
        spec.evaluation.limit = limit
    if samples:
        spec.evaluation.consistency_samples = samples
    if arms is None:
        arms = ",".join(
            [a for a in spec.evaluation.arms if not is_tuned_arm(a)]
            + [e.name for e in spec.evaluation.endpoints]
        )
    names, run, rag_run = [], None, None
    for item in (a.strip() for a in arms.split(",") if a.strip()):
        if is_tuned_arm(item) and ":" in item:  # fine-tuned:RUN, fine-tuned+scored:RUN, rag+fine-tuned:RUN
            arm, ref = item.split(":", 1)
            if is_rag_arm(arm):
                rag_run = ref
            else:
                run = ref
            names.append(arm)
        elif is_tuned_arm(item):
            raise TunewiseError(
                f"the fine-tuned arm needs a run: {item}:RUN_ID",
                hint="list the training runs with `tunewise runs --kind train`",
            )
        else:
            names.append(item)
    train, held, _ = load_spec_split(project.root, spec)
    result = run_evaluation(
        spec,
        project,
        train,
        held,
        names,
        fine_tuned_run=run,
        rag_fine_tuned_run=rag_run,
        narrate=lambda m: err.print(m, highlight=False, markup=False),
        seed=spec.data.seed,
    )
    if as_json:
        print_json(result.summary)
        return
    render_arms(result.summary)
    out.print(f"per-example records: {result.run_dir / 'records.jsonl'}", highlight=False)
