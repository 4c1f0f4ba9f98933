"""`tunewise run` and `tunewise demo`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError


def _run(
    spec_path: Path | None,
    from_stage: str | None,
    only: str | None,
    as_json: bool,
    learning_curve: bool = False,
) -> None:
    from tunewise.pipeline.progress import progress_for
    from tunewise.pipeline.run import Pipeline, stages_for
    from tunewise.project import find_project
    from tunewise.spec import DEFAULT_LEARNING_CURVE, load_spec

    project = find_project(spec_path)
    spec = load_spec(spec_path or project.spec_path)
    if learning_curve and not spec.evaluation.learning_curve:
        spec.evaluation.learning_curve = list(DEFAULT_LEARNING_CURVE)  # the spec's own fractions win
    for warning in spec.warnings():
        err.print(f"warning: {warning}", highlight=False, markup=False)
    progress = progress_for(err, stages_for(spec))
    pipeline = Pipeline(project, spec, progress=progress)
    started = time.perf_counter()
    try:
        result = pipeline.run(from_stage=from_stage, only=only)
    except KeyboardInterrupt:
        err.print("interrupted: the next `tunewise run` continues where this one stopped", highlight=False)
        sys.exit(130)
    finally:
        progress.close()
    report = result.output("report") or pipeline.outputs.get("report")
    verdict = pipeline.outputs.get("verdict")
    recommendation = verdict.recommendation if verdict is not None else None
    summary = {
        "stages": [
            {"stage": o.stage, "status": o.status, "seconds": round(o.seconds, 2)} for o in result.outcomes
        ],
        "recommendation": recommendation,
        "report": str(report.html_path) if report is not None else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        print_json(summary)
        return
    if recommendation:
        decided = verdict.verdict()
        # One sentence and its reason, then the rules behind it (the report has their numbers).
        reason = f": {decided.reason}" if decided and decided.reason else ""
        out.print(f"verdict: {recommendation}{reason}", highlight=False)
        for r in decided.rules if decided else []:
            mark = {True: "PASS", False: "FAIL", None: "n/a "}[r.passed]
            out.print(f"  [{mark}] {r.rule}: {r.detail}", highlight=False, markup=False)
        if decided and decided.cheapest:
            out.print(f"  cheapest option meeting the bars: {decided.cheapest}", highlight=False)
    if summary["report"]:
        out.print(f"report: {summary['report']}", highlight=False)


@app.command(
    help="Run the whole pipeline: data check, split, prompted baselines, training, evaluation, economics, verdict, "
    "report. Stages whose inputs are unchanged are skipped.\n\nExample: tunewise run tunewise.yaml --from train"
)
def run(
    spec: Path = typer.Argument(None, help="The task spec (default: tunewise.yaml found upward)."),
    from_stage: str = typer.Option(None, "--from", help="Force this stage and every later one."),
    only: str = typer.Option(
        None, "--only", help="Run only this stage, on the recorded outputs of the others."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the stages and the verdict as JSON."),
    learning_curve: bool = typer.Option(
        False,
        "--learning-curve",
        help="Also train and evaluate the fine-tuned arm on nested fractions of the training examples "
        "(evaluation.learning_curve, else 0.25, 0.5 and 1): accuracy against examples, and whether more data "
        "is likely to pay.",
    ),
) -> None:
    if spec is not None and not spec.is_file():
        raise TunewiseError(
            f"no task spec at {spec}", hint="run `tunewise init` or pass the path of tunewise.yaml"
        )
    _run(spec, from_stage, only, as_json, learning_curve)


DEMO_TASKS = ("support", "knowledge")


@app.command(
    help="The built-in demo, run through the whole pipeline on the embedded SmolLM2-135M-Instruct. --task support "
    "(the default): support tickets in, JSON with category, priority and reference out. --task knowledge: questions "
    "about a fictional company's documents, answered closed-book and with retrieval (zero-shot, rag, fine-tuned, "
    "rag+fine-tuned side by side).\n\nExample: tunewise demo --dir demo-project\n\n"
    "Also: tunewise demo --task knowledge --dir knowledge-demo"
)
def demo(
    folder: Path = typer.Option(
        None, "--dir", help="Where to create the demo project (default: demo-project, or knowledge-demo)."
    ),
    task: str = typer.Option(
        "support", "--task", help="support (tickets to JSON) or knowledge (questions on documents)."
    ),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the folder's earlier state first."),
    as_json: bool = typer.Option(False, "--json", help="Print the stages and the verdict as JSON."),
) -> None:
    import shutil

    if task not in DEMO_TASKS:
        from tunewise.errors import nearest

        guess = nearest(task, list(DEMO_TASKS))
        raise TunewiseError(
            f"unknown demo task '{task}'" + (f" (did you mean '{guess}'?)" if guess else ""),
            hint="tunewise demo --task support, or --task knowledge",
        )
    folder = folder or Path("knowledge-demo" if task == "knowledge" else "demo-project")
    if fresh and folder.exists():
        shutil.rmtree(folder)
    if task == "knowledge":
        from tunewise.data.demo_knowledge import write_knowledge_project

        write_knowledge_project(folder)
    else:
        from tunewise.data.demo import write_demo_project

        write_demo_project(folder)
    err.print(f"demo project: {folder.resolve()}", highlight=False)
    _run(folder / "tunewise.yaml", None, None, as_json)
