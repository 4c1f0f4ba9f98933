"""`tunewise advise` (before data) and `tunewise decide` (after evaluation): parse, call, render."""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.errors import TunewiseError

ADVISE_HELP = """Prompt engineering, RAG, fine-tuning, RAG + fine-tuning, or not yet: the rules of the practitioner's guide
(docs/guide.md) applied to a short questionnaire, each reason tied to its rule, plus what to measure next. Unanswered questions are asked
when stdin is a terminal (unless --no-input); --spec supplies the volume, the classes, the team size, the platforms and the
model, and counts the training examples. Fewer than 10 classes: try few-shot first. The platform and team rules (docs/rules.md)
are printed with the guide's sentence and the date it was true.

Example: tunewise advise --problem behaviour --prompt-tested --prompt-consistency 0.8 --queries-per-day 2000 --validated-examples 400 --can-judge-quality --facts-stable"""


def _count_examples(spec_path: Path) -> int | None:
    """Records in the spec's JSONL training files (None when a file is missing or not JSONL)."""
    from tunewise.spec import load_spec

    spec = load_spec(spec_path)
    total = 0
    for name in spec.data.train:
        path = spec_path.parent / name
        if not path.is_file() or path.suffix != ".jsonl":
            return None
        with path.open(encoding="utf-8") as fh:
            total += sum(1 for line in fh if line.strip())
    return total


def _read(question: str, parse):
    """Ask one question on stderr and parse the typed line; re-ask up to three times on a bad answer."""
    for _ in range(3):
        err.print(question, end=" ", highlight=False)
        line = sys.stdin.readline()
        if not line:
            raise TunewiseError(
                "no answer (end of input)", hint="answer with flags instead; see tunewise advise --help"
            )
        try:
            return parse(line.strip())
        except ValueError as exc:
            err.print(f"  {exc}", highlight=False)
    raise TunewiseError(
        f"no valid answer to: {question}", hint="answer with flags instead; see tunewise advise --help"
    )


def _yes_no(text: str) -> bool:
    if text.lower() in ("y", "yes"):
        return True
    if text.lower() in ("n", "no"):
        return False
    raise ValueError("answer y or n")


def _problem(text: str) -> str:
    text = text.lower().replace("behavior", "behaviour")
    if text not in ("knowledge", "behaviour", "both"):
        raise ValueError("answer knowledge, behaviour or both")
    return text


def _platform_list(text: str) -> list[str]:
    from tunewise.economics.settings import parse_platforms

    return parse_platforms(text) or []


def _ask(answers, questions: dict[str, str]) -> None:
    """Prompt for each unanswered question (interactive terminals only), in the questionnaire's order."""
    parsers = {
        "problem": _problem,
        "prompt_consistency": float,
        "queries_per_day": float,
        "validated_examples": int,
        "classes": int,
        "team_size": int,
        "platforms": _platform_list,
    }
    for name in questions:
        if getattr(answers, name) is not None:
            continue
        if name == "prompt_consistency" and answers.prompt_tested is not True:
            continue  # only asked about a prompt that was tested
        parse = parsers.get(name, _yes_no)
        suffix = " [knowledge/behaviour/both]" if name == "problem" else " [y/n]" if parse is _yes_no else ""
        setattr(answers, name, _read(questions[name] + suffix, parse))
    answers.__post_init__()  # validate what was typed


@app.command(help=ADVISE_HELP)
def advise(
    problem: str | None = typer.Option(None, "--problem", help="knowledge, behaviour or both."),
    format_only: bool | None = typer.Option(
        None, "--format-only/--not-format-only", help="Is the problem only the output's format?"
    ),
    facts_change_often: bool | None = typer.Option(
        None, "--facts-change-often/--facts-stable", help="Do facts or requirements change monthly or faster?"
    ),
    prompt_tested: bool | None = typer.Option(
        None, "--prompt-tested/--prompt-not-tested", help="Was a structured few-shot prompt tested?"
    ),
    prompt_consistency: float | None = typer.Option(
        None, "--prompt-consistency", help="Its consistency over 100+ runs, 0-1."
    ),
    queries_per_day: float | None = typer.Option(None, "--queries-per-day", help="Expected volume."),
    validated_examples: int | None = typer.Option(
        None, "--validated-examples", help="Validated input/output examples."
    ),
    can_judge_quality: bool | None = typer.Option(
        None, "--can-judge-quality/--cannot-judge-quality", help="Can someone judge data quality?"
    ),
    classes: int | None = typer.Option(
        None, "--classes", help="Labels the output can take (0: not a classification)."
    ),
    team_size: int | None = typer.Option(None, "--team-size", help="People on the team."),
    platform: str | None = typer.Option(
        None, "--platform", help="Comma-separated platforms you would fine-tune and host on."
    ),
    model: str | None = typer.Option(None, "--model", help="The model you would fine-tune."),
    spec: Path | None = typer.Option(
        None,
        "--spec",
        help="Take the volume, example count, classes, team size, platforms and model from a task spec.",
    ),
    no_input: bool = typer.Option(False, "--no-input", help="Never prompt, even on a terminal."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    from tunewise.decide.advisor import QUESTIONS, Answers
    from tunewise.decide.advisor import advise as run_advice

    if problem is not None:
        problem = problem.strip().lower().replace("behavior", "behaviour")
    from tunewise.economics.settings import parse_platforms

    platforms = parse_platforms(platform)
    if spec is not None:
        from tunewise.spec import LabelContract, load_spec

        loaded = load_spec(spec)
        if queries_per_day is None:
            queries_per_day = loaded.economics.queries_per_day
        if classes is None:
            labels = loaded.contract.labels if isinstance(loaded.contract, LabelContract) else []
            classes = len(labels)
        if team_size is None:
            team_size = loaded.economics.team_size
        if platforms is None:
            platforms = list(loaded.economics.platforms)
        if model is None:
            model = loaded.model.base
        if validated_examples is None:
            validated_examples = _count_examples(spec)
            if validated_examples is not None:
                err.print(
                    f"note: counted {validated_examples} training examples in the spec's data.train; "
                    "they count as validated only if someone reviewed them",
                    highlight=False,
                )
    answers = Answers(
        problem=problem,  # type: ignore[arg-type]
        format_only=format_only,
        facts_change_often=facts_change_often,
        prompt_tested=prompt_tested,
        prompt_consistency=prompt_consistency,
        queries_per_day=queries_per_day,
        validated_examples=validated_examples,
        can_judge_quality=can_judge_quality,
        classes=classes,
        team_size=team_size,
        platforms=platforms,
        model=model,
    )
    if answers.missing() and sys.stdin.isatty() and not no_input and not as_json:
        _ask(answers, QUESTIONS)
    advice = run_advice(answers)
    if as_json:
        print_json(advice.to_dict())
        return
    out.print(f"recommendation: {advice.recommendation}", highlight=False)
    out.print("reasons:", highlight=False)
    for r in advice.reasons:
        mark = {True: "+", False: "-", None: "?"}[r.favours_fine_tuning]
        out.print(f"  {mark} {r.rule} = {r.answer}: {r.effect}", highlight=False)
        out.print(f"      from the practitioner's guide (docs/guide.md): {r.guide}", highlight=False)
    out.print("measure next:", highlight=False)
    for m in advice.measure_next:
        out.print(f"  - {m}", highlight=False)
    if advice.commands:
        out.print("measure it with tunewise:", highlight=False)
        for c in advice.commands:
            out.print(f"  {'$ ' if c.startswith('tunewise ') else ''}{c}", highlight=False, markup=False)


def _print_platform_rules(findings: list[dict]) -> None:
    """The platform and team rules that fired, each with the guide's sentence and the date it was true; the
    undecided ones on one line with the figure to state."""
    fired = [f for f in findings if f["fires"]]
    undecided = [f["rule"] for f in findings if f["fires"] is None]
    if fired:
        out.print("platform and team rules (docs/rules.md):", highlight=False)
    for f in fired:
        out.print(f"  - {f['detail']}: {f['advice']}", highlight=False, markup=False)
        out.print(f'      "{f["source"]}" (true as of {f["as_of"]})', highlight=False, markup=False)
    if undecided:
        out.print(
            f"platform and team rules undecided without a team size ({', '.join(undecided)}): "
            "set economics.team_size or --team-size",
            highlight=False,
        )


DECIDE_HELP = """The verdict after evaluation: fine-tune, keep prompting, use RAG, RAG + fine-tuning, or not yet. Every arm faces the same bars
(accuracy >= 85%, consistency >= 95%). Fine-tune when the fine-tuned arm meets them, is significantly better than the
best prompted arm on accuracy, consistency or format compliance (or equal at lower cost and latency), does not raise
unsupported content, and its monthly cost at the stated volume is lower or the value of the gain covers it (unknown
prices leave the cost rule undecided, naming the figures to set). Keep prompting when the best prompted arm meets the
bars; otherwise not yet, naming the closest option and what to fix first. Prints that sentence, then the guide's
platform and team rules that apply (each with its source sentence and date; a platform they close is not priced),
every rule with its numbers, the cheapest option among those that meet the bars, the break-even volume and the weakest point of the
evidence. With retrieval arms (rag, rag+fine-tuned) the guide's order applies: prompting first, RAG second
(recommended over fine-tuning when not significantly worse and not dearer), fine-tuning third; RAG + fine-tuning when
both help; choosing fine-tuning where RAG measured close names the guide's mistake 1 (docs/economics.md).

Example: tunewise decide reports/eval_summary.json --prompted-cost 0.03 --tuned-cost 0.02 --platform together --queries-per-day 500 --value-per-point 40"""


@app.command(help=DECIDE_HELP)
def decide(
    summary_path: Path = typer.Argument(..., metavar="EVAL_SUMMARY.json", help="Evaluation summary JSON."),
    spec: Path | None = typer.Option(
        None, "--spec", help="Volume, platforms, cadence, value per point, pricing file."
    ),
    queries_per_day: float | None = typer.Option(None, "--queries-per-day", help="Stated volume."),
    platform: str | None = typer.Option(None, "--platform", help="Comma-separated platforms to price."),
    prompted_cost: float | None = typer.Option(
        None, "--prompted-cost", help="Dollars per query, best prompted arm."
    ),
    tuned_cost: float | None = typer.Option(None, "--tuned-cost", help="Dollars per query, fine-tuned arm."),
    hosting_per_hour: float | None = typer.Option(
        None, "--hosting-per-hour", help="Fine-tuned hosting, $/hour."
    ),
    hosting_per_month: float | None = typer.Option(
        None, "--hosting-per-month", help="Fine-tuned hosting, $/month."
    ),
    training_cost: float | None = typer.Option(
        None, "--training-cost", help="One-time training cost, dollars."
    ),
    rag_cost: float | None = typer.Option(None, "--rag-cost", help="Dollars per query, rag arm."),
    rag_tuned_cost: float | None = typer.Option(
        None, "--rag-tuned-cost", help="Dollars per query, rag+fine-tuned arm."
    ),
    vector_db: str | None = typer.Option(
        None, "--vector-db", help="Vector index priced: embedded ($0/month, the default) or managed."
    ),
    value_per_point: float | None = typer.Option(
        None, "--value-per-point", help="Dollars per accuracy point per month."
    ),
    team_size: int | None = typer.Option(
        None, "--team-size", min=1, help="People on the team (the platform and team rules)."
    ),
    fine_tuned: str | None = typer.Option(
        None, "--fine-tuned", help="Which fine-tuned arm (default: the most accurate)."
    ),
    pricing: Path | None = typer.Option(None, "--pricing", help="Pricing override YAML."),
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    from tunewise.decide.verdict import decide as run_verdict
    from tunewise.economics.settings import economics_settings, spec_economics
    from tunewise.outputs import load_summary

    econ = economics_settings(
        *spec_economics(spec),
        queries_per_day=queries_per_day,
        platforms=platform,
        value_per_accuracy_point=value_per_point,
        team_size=team_size,
        vector_db=vector_db,
        prompted_cost=prompted_cost,
        tuned_cost=tuned_cost,
        rag_cost=rag_cost,
        rag_tuned_cost=rag_tuned_cost,
        hosting_per_hour=hosting_per_hour,
        hosting_per_month=hosting_per_month,
        training_cost=training_cost,
    )
    summary = load_summary(summary_path)
    catalog = econ.catalog(pricing)
    verdict = run_verdict(summary, econ, catalog, fine_tuned)
    all_in, all_in_error = _all_in(summary, econ, catalog)
    if as_json:
        print_json(verdict.to_dict() | {"all_in": [asdict(a) for a in all_in], "all_in_error": all_in_error})
        return
    # One sentence and its reason first, then the rules behind it.
    out.print(f"verdict: {verdict.recommendation}: {verdict.reason}", highlight=False)
    arms = f"  fine-tuned arm: {verdict.fine_tuned_arm or 'none evaluated'}; best prompted arm: {verdict.best_prompted_arm}"
    if verdict.rag_arm:
        arms += f"; rag arm: {verdict.rag_arm}"
    if verdict.rag_fine_tuned_arm:
        arms += f"; rag+fine-tuned arm: {verdict.rag_fine_tuned_arm}"
    out.print(arms, highlight=False)
    for mistake in verdict.mistakes:
        out.print(f"mistake: {mistake}", highlight=False, markup=False)
    _print_platform_rules(verdict.platform_rules)
    out.print("rules:", highlight=False)
    for r in verdict.rules:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[r.passed]
        out.print(f"  [{mark}] {r.rule}: {r.detail}", highlight=False, markup=False)  # "[n/a ]" is no markup
        out.print(f"         from the practitioner's guide (docs/guide.md): {r.guide}", highlight=False)
    out.print(f"cheapest option meeting the bars: {verdict.cheapest}", highlight=False)
    if verdict.break_even:
        be = verdict.break_even
        vol = be["queries_per_day"]
        shown = f"{vol:,.1f} queries/day" if vol is not None else "none (the lines do not cross)"
        out.print(f"break-even ({be['between'][0]} vs {be['between'][1]}): {shown}", highlight=False)
        out.print(f"  {be['formula']}", highlight=False)
        out.print(f"  {be['summary']}", highlight=False)
    if all_in:
        from tunewise.economics.cli import render_all_in

        render_all_in(all_in, econ.queries_per_day)
    elif all_in_error:
        out.print(f"all-in cost per query: not priced ({all_in_error})", highlight=False)
    out.print(f"weakest point of the evidence: {verdict.weakest_point}", highlight=False)
    if verdict.diagnosis:
        out.print("which problem each option fixes:", highlight=False)
        for line in verdict.diagnosis:
            out.print(f"  {line}", highlight=False)


def _all_in(summary, econ, catalog) -> tuple[list, str | None]:
    """Every arm's all-in cost per query on each platform (economics.plan), or why it could not be priced."""
    from tunewise.economics.plan import arm_tokens, corpus_tokens, cost_report
    from tunewise.errors import TunewiseError

    direct = any(
        c is not None for c in (econ.prompted_cost, econ.tuned_cost, econ.rag_cost, econ.rag_tuned_cost)
    )
    arms = arm_tokens(summary)
    if econ.corpus_tokens is None:
        econ = econ.model_copy(update={"corpus_tokens": corpus_tokens(summary)})
    try:
        report = cost_report(econ.cost_request(() if direct else arms), catalog)
    except TunewiseError as exc:
        return [], exc.message
    return report.all_in, None
