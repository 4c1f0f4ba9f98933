"""`tunewise review create|serve|results|export|judge`: blind pairwise review of two arms, and the model judge."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError

review_app = typer.Typer(
    help="Blind A/B review of two arms' answers in the browser, and a pairwise model judge.\n\n"
    "Example: tunewise review create --arms few-shot,fine-tuned --sample 50 && tunewise review serve",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")


def _project(project_dir: Path | None):
    from tunewise.project import Project, find_project

    return Project(project_dir) if project_dir else find_project()


ProjectOpt = typer.Option(None, "--project", help="Project folder (default: found upward).")


@review_app.command("create")
def create(
    arms: str = typer.Option(..., "--arms", help="The two arms to compare, e.g. few-shot,fine-tuned."),
    eval_run: str | None = typer.Option(
        None, "--eval", help="Evaluation run (default: the latest finished)."
    ),
    sample: int | None = typer.Option(None, "--sample", help="Review N held-out examples drawn at random."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample."),
    project_dir: Path | None = ProjectOpt,
) -> None:
    """Create a review of two arms' held-out answers.

    Example: tunewise review create --arms few-shot,fine-tuned --sample 50
    """
    from tunewise.review.store import ReviewStore

    review = ReviewStore(_project(project_dir)).create(arms.split(","), eval_run, sample, seed)
    out.print(f"review {review['id']}: {review['n_items']} items, {review['arms'][0]} vs {review['arms'][1]}")
    err.print(f"next: tunewise review serve {review['id']}")


@review_app.command("serve")
def serve(
    review_id: str | None = typer.Argument(None, help="The review (default: the newest)."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; off loopback an API key is needed."
    ),
    port: int = typer.Option(8100, "--port", min=0, max=65535, help="Port (0: any free port)."),
    project_dir: Path | None = ProjectOpt,
) -> None:
    """Serve the review page: reviewers open it, enter a name and choose between Left and Right.

    Example: tunewise review serve --port 8100   (off loopback, reviewers need a key of `tunewise keys create`)
    """
    from tunewise.review.app import make_server
    from tunewise.review.store import ReviewStore
    from tunewise.serve.app import bind, is_loopback

    project = _project(project_dir)
    store = ReviewStore(project)
    review = store.get(review_id) if review_id else store.latest()
    sock = bind(host, port)
    server = make_server(project, review["id"], sock, no_auth=is_loopback(host))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    err.print(f"review {review['id']} at http://{shown}:{bound}/ (Ctrl-C to stop)")
    if not is_loopback(host):
        err.print("reviewers need an API key: create one with `tunewise keys create`")
    server.run(sockets=[sock])


def _rate(p: dict | None) -> str:
    if not p or not p.get("win_rate"):
        return "-"
    r = p["win_rate"]
    return f"{r['value']:.0%} [{r['low']:.0%}, {r['high']:.0%}]"


@review_app.command("results")
def results(
    review_id: str | None = typer.Argument(None, help="The review (default: the newest)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    project_dir: Path | None = ProjectOpt,
) -> None:
    """Win rate (Wilson interval), ties, agreement between reviewers and with the judge, position bias.

    Example: tunewise review results --json
    """
    from tunewise.review.results import review_results

    res = review_results(_project(project_dir), review_id)
    if as_json:
        print_json(res)
        return
    a, b = res["arms"]
    p = res["preference"]
    out.print(
        f"review {res['review']}: {a} vs {b}, {res['reviewed_items']} of {res['n_items']} items reviewed"
    )
    out.print(
        f"  {a} win rate {_rate(p)} over {p['decisive']} decisive items; ties {p['ties']}, both bad {p['both_bad']}"
    )
    out.print(f"  {res['reading']}")
    if res["agreement"]:
        g = res["agreement"]
        kappa = "-" if g["kappa"] is None else f"{g['kappa']:.2f}"
        out.print(
            f"  agreement between reviewers: {g['measure']} kappa {kappa} ({g['reading']}, {g['items']} items)"
        )
    if res["position_bias"]:
        pb = res["position_bias"]
        out.print(
            f"  Left won {pb['rate']['value']:.0%} of side choices{' (position bias)' if pb['biased'] else ''}"
        )
    if res["judge"]:
        j = res["judge"]
        out.print(f"  judge {', '.join(j['judge'])}: {a} win rate {_rate(j['preference'])}; {j['reading']}")
        agree = j.get("agreement_with_people")
        if agree:
            kappa = "-" if agree["kappa"] is None else f"{agree['kappa']:.2f}"
            low = ": too low to stand in for people" if agree["low"] else ""
            out.print(f"  judge vs people: kappa {kappa} ({agree['reading']}, {agree['items']} items){low}")


@review_app.command("export")
def export(
    review_id: str | None = typer.Argument(None, help="The review (default: the newest)."),
    fmt: str = typer.Option("csv", "--format", help="csv or json."),
    output: Path | None = typer.Option(None, "--output", "-o", help="File to write (default: stdout)."),
    project_dir: Path | None = ProjectOpt,
) -> None:
    """Every choice with its reviewer, item, the side each arm was on and the outcome.

    Example: tunewise review export --format csv -o reviews.csv
    """
    from tunewise.fileio import atomic_write_text
    from tunewise.review.store import ReviewStore

    if fmt not in ("csv", "json"):
        raise TunewiseError(f"--format {fmt}: use csv or json")
    store = ReviewStore(_project(project_dir))
    review = store.get(review_id) if review_id else store.latest()
    a, b = review["arms"]
    rows = [
        {
            "review": review["id"],
            "reviewer": c["reviewer"],
            "example_id": c["example_id"],
            "position": c["position"],
            "left_arm": a if c["left_arm"] == "a" else b,
            "choice": c["choice"],
            "preferred": {"a": a, "b": b}.get(c["outcome"], c["outcome"]),
            "comment": c["comment"] or "",
            "created_at": c["created_at"],
        }
        for c in store.choices(review["id"])
    ]
    if fmt == "json":
        text = json.dumps({"review": review, "choices": rows}, indent=2, ensure_ascii=False) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["review"])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    if output is None:
        out.file.write(text)
    else:
        atomic_write_text(output, text)
        err.print(f"wrote {len(rows)} choices to {output}")


@review_app.command("judge")
def judge(
    arms: str = typer.Option(..., "--arms", help="The two arms to compare, e.g. fine-tuned,few-shot."),
    eval_run: str | None = typer.Option(
        None, "--eval", help="Evaluation run (default: the latest finished)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    project_dir: Path | None = ProjectOpt,
) -> None:
    """Ask the spec's judge (evaluation.judge) which answer is better, in both orders.

    Example: tunewise review judge --arms fine-tuned,few-shot
    """
    from tunewise.evaluate.judge import judge_engine, run_judge
    from tunewise.registry.runs import RunStore
    from tunewise.spec import load_spec

    project = _project(project_dir)
    spec = load_spec(project.spec_path)
    pair = [x.strip() for x in arms.split(",") if x.strip()]
    if len(pair) != 2 or pair[0] == pair[1]:
        raise TunewiseError(
            f"--arms needs two different arms, got {arms}", hint="e.g. --arms fine-tuned,few-shot"
        )
    if eval_run is None:
        done = RunStore(project).list(kind="eval", status="succeeded", limit=1)
        if not done:
            raise TunewiseError("no finished evaluation to judge", hint="run `tunewise eval` first")
        eval_run = done[0].id
    engine, name = judge_engine(project, spec)
    rubric = spec.evaluation.judge.rubric if spec.evaluation.judge else None
    res = run_judge(project, eval_run, pair, engine, name, spec.task.target, rubric, narrate=err.print)
    if as_json:
        print_json(res)
        return
    out.print(f"judge {name}: {pair[0]} vs {pair[1]}, {res['asked']} pairs asked in both orders")
    out.print(f"  {pair[0]} win rate {_rate(res.get('preference'))}; {res.get('reading', '')}")
    out.print(f"  tokens: {res['prompt_tokens']} prompt, {res['completion_tokens']} completion")
