"""`tunewise traffic export|import`, `tunewise drift`, `tunewise retrain`, `tunewise lineage`: parse, call
`tunewise.lifecycle`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from tunewise.cli import app, err, out, print_json

traffic_app = typer.Typer(
    help="Captured traffic out for labelling (export) and labelled examples back as a dataset version (import). "
    "Capture is switched on per model: `tunewise serve --capture MODEL`.",
    no_args_is_help=True,
)
app.add_typer(traffic_app, name="traffic")

_PROJECT = typer.Option(None, "--project", help="Project folder (default: found upward).")
_MODEL_HELP = "The model name (an alias, or the name it is served under; default: the spec's task.name)."


def _project(path: Path | None) -> Any:
    from tunewise.project import find_project

    return find_project(path)


def _spec(project: Any) -> Any:
    from tunewise.spec import load_spec

    return load_spec(project.spec_path)


def _model(model: str | None, project: Any) -> str:
    return model or _spec(project).task.name


@traffic_app.command(
    "export",
    help="Write captured traffic as chat JSONL ready for labelling: each request's messages, then the model's "
    "answer as the assistant turn (a draft to correct); metadata.traffic_id keeps the link back.\n\n"
    "Example: tunewise traffic export --since 2026-01-01 --to to-label.jsonl",
)
def traffic_export(
    to: Path = typer.Option(..., "--to", help="The JSONL file to write."),
    since: str | None = typer.Option(None, "--since", help="Only traffic from this date or time on (UTC)."),
    until: str | None = typer.Option(None, "--until", help="Only traffic before this date or time (UTC)."),
    model: str | None = typer.Option(None, "--model", help="Only this model's traffic (default: all)."),
    project_dir: Path | None = _PROJECT,
) -> None:
    from tunewise.lifecycle.capture import check_date
    from tunewise.lifecycle.traffic import export_traffic

    n = export_traffic(
        _project(project_dir),
        to,
        model=model,
        since=check_date(since, "--since"),
        until=check_date(until, "--until"),
    )
    out.print(f"{n} exchange(s) written to {to}", highlight=False)


@traffic_app.command(
    "import",
    help="Record labelled examples (chat JSONL, such as a labelled export) as a new dataset version, with its "
    "lineage: the file, and how many of the model's drafts the labels changed.\n\n"
    "Example: tunewise traffic import labelled.jsonl",
)
def traffic_import(
    file: Path = typer.Argument(..., help="The labelled chat JSONL."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    project_dir: Path | None = _PROJECT,
) -> None:
    from tunewise.lifecycle.traffic import import_labelled

    got = import_labelled(_project(project_dir), file)
    if json_out:
        print_json({**got.__dict__, "path": str(got.path)})
        return
    state = "new" if got.created else "already recorded"
    out.print(
        f"dataset version {got.version[:12]} ({state}): {got.examples} labelled example(s), "
        f"{got.matched} traced to captured traffic, {got.changed} draft(s) corrected",
        highlight=False,
    )


@app.command(
    help="Compare recent traffic with the training data: inputs (a permutation test on TF-IDF token features), "
    "output labels or fields, format compliance and refusals, inputs far from any training example and, with "
    "a labelled sample, accuracy against held-out accuracy. Ends with one verdict line: stable, drifting "
    "(what moved) or retrain recommended. See docs/lifecycle.md for each statistic.\n\n"
    "Example: tunewise drift --since 2026-06-01"
)
def drift(
    since: str | None = typer.Option(None, "--since", help="Only traffic from this date or time on (UTC)."),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    alpha: float = typer.Option(0.05, "--alpha", min=0.001, max=0.5, help="False-alarm level of each test."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations and resamples."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    project_dir: Path | None = _PROJECT,
) -> None:
    from tunewise.lifecycle.capture import check_date
    from tunewise.lifecycle.drift import project_drift

    project = _project(project_dir)
    spec = _spec(project)
    report, run_id = project_drift(
        project,
        spec,
        model or spec.task.name,
        since=check_date(since, "--since"),
        alpha=alpha,
        seed=seed,
    )
    if json_out:
        print_json({"model": model or spec.task.name, "run": run_id, **report.to_dict()})
        return
    for line in render_drift(report, run_id):
        out.print(line, highlight=False, markup=False)


def render_drift(r: Any, run_id: str) -> list[str]:
    mark = {True: "MOVED", False: "ok"}
    t = r.inputs
    lines = [
        f"traffic: {r.n_live} exchange(s) against {r.n_train} training example(s) of {run_id}",
        f"  inputs        {mark[t.moved]:<5}  ||mean(train) - mean(live)||^2 = {t.statistic:.5f}, threshold "
        f"{t.threshold:.5f} ({t.permutations} permutations), p = {t.p_value:.3f}",
    ]
    if r.moved_tokens:
        lines.append(
            "                 words more frequent now: "
            + ", ".join(f"{w} (+{d:.0%})" for w, d in r.moved_tokens)
        )
    if r.outputs is not None:
        o = r.outputs
        lines.append(
            f"  outputs       {mark[o.moved]:<5}  total variation {r.output_tvd:.3f}, p = {o.p_value:.3f}"
        )
        for cat, a, b in r.moved_categories:
            lines.append(f"                 {cat}: {a:.1%} in training, {b:.1%} now")
    if r.format is not None:
        f = r.format
        lines.append(
            f"  format        {mark[f.moved]:<5}  {f.live:.1%} compliant [{f.low:.1%}, {f.high:.1%}] vs "
            f"{f.train:.1%} of training answers"
        )
    q = r.refusals
    lines.append(
        f"  refusals      {mark[q.moved]:<5}  {q.live:.1%} [{q.low:.1%}, {q.high:.1%}] vs {q.train:.1%} of training"
    )
    lines.append(
        f"  far inputs    {mark[r.far_moved]:<5}  {r.far_share:.1%} below similarity {r.far_threshold:.3f} "
        f"(5% expected), p = {r.far_p_value:.3f}"
    )
    if r.accuracy:
        a = r.accuracy
        lines.append(
            f"  accuracy      {mark[a['moved']]:<5}  {a['live']:.1%} on {a['n_live']} labelled vs {a['held_out']:.1%} on "
            f"{a['n_held_out']} held out: {a['difference'] * 100:+.1f} pts [{a['low'] * 100:+.1f}, {a['high'] * 100:+.1f}]"
        )
    lines += [f"  note: {n}" for n in r.notes]
    lines.append(f"verdict: {r.verdict}")
    return lines


@app.command(
    help="Retrain behind a gate: the next dataset version (the current model's training data plus half of the "
    "newly labelled examples, data- and leakage-checked), trained with the current model's settings; both models "
    "are evaluated on the old held-out set and on the other half, and the candidate is promoted only when it is "
    "not significantly worse on the old set and significantly better on the new (the rule is printed with its "
    "numbers).\n\nExample: tunewise retrain --with labelled.jsonl"
)
def retrain(
    with_: str | None = typer.Option(
        None, "--with", help="Labelled examples: a JSONL file (imported now) or a dataset version id."
    ),
    model: str | None = typer.Option(None, "--model", help=_MODEL_HELP),
    by: str = typer.Option("tunewise retrain", "--by", help="Who the promotion is recorded as made by."),
    margin: float = typer.Option(
        0.0, "--margin", min=0.0, max=1.0, help="Loss on the old set tolerated before 'significantly worse'."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    project_dir: Path | None = _PROJECT,
) -> None:
    from tunewise.lifecycle.retrain import retrain as run_retrain

    project = _project(project_dir)
    spec = _spec(project)
    result = run_retrain(
        project,
        spec,
        model or spec.task.name,
        with_=with_,
        by=by,
        margin=margin,
        narrate=lambda m: err.print(m, highlight=False, markup=False),
    )
    if json_out:
        print_json(result.to_dict())
        return
    for line in result.lines:
        out.print(line, highlight=False, markup=False)


@app.command(
    help="Show where a model came from: dataset versions (and what they were made from) -> training runs -> "
    "evaluations -> gate decisions and promotions, with dates.\n\nExample: tunewise lineage support"
)
def lineage(
    model: str | None = typer.Argument(None, help=_MODEL_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    project_dir: Path | None = _PROJECT,
) -> None:
    from tunewise.lifecycle.lineage import lineage as build

    project = _project(project_dir)
    name = _model(model, project)
    got = build(project, name)
    if json_out:
        print_json(got.to_dict())
        return
    for line in render_lineage(got):
        out.print(line, highlight=False, markup=False)


def render_lineage(g: Any) -> list[str]:
    lines = [f"lineage of {g.model}", "datasets:"]
    for d in g.datasets:
        made = "; ".join(
            f"{p['relation']} of {p['parent'][:17] if p['parent'].startswith('file:') else p['parent'][:12]}"
            for p in d["parents"]
        )
        lines.append(
            f"  {d['created_at'] or '-'}  {d['id'][:12]}  {d['name'] or '-'}  {d['examples'] or 0} examples"
            + (f"  ({made})" if made else "")
        )
    lines.append("runs:")
    for r in g.runs:
        data = ", ".join(v[:12] for v in r["dataset_versions"]) or "-"
        lines.append(f"  {r['created_at']}  {r['id']}  {r['status']}  trained on {data}")
        for e in g.evaluations:
            if e["run"] == r["id"]:
                acc = ", ".join(
                    f"{k} {v:.1%}" for k, v in e["accuracy"].items() if isinstance(v, (int, float))
                )
                on = ", ".join(v[:12] for v in e["dataset_versions"]) or "-"
                lines.append(f"    {e['created_at']}  evaluated {e['id']} on {on}: {acc or '-'}")
    if g.decisions:
        lines.append("gate decisions:")
        for d in g.decisions:
            what = "promoted" if d["promoted"] else "kept current"
            lines.append(
                f"  {d['created_at']}  {d['candidate_run']} vs {d['current_run']}: {what} ({d['figures']['why']})"
            )
    lines.append("promotions:")
    for p in g.promotions or []:
        lines.append(f"  {p['changed_at']}  {p['action']} {p['run_id']} by {p['changed_by']}")
    if not g.promotions:
        lines.append("  none")
    return lines
