"""`tunewise cost` and `tunewise pricing`: parse, call the economics API, render."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tunewise.cli import app, err, out, print_json
from tunewise.economics.settings import economics_settings, parse_platforms, spec_economics

COST_HELP = """Monthly cost per option at a volume, and the break-even volume between every two options.

monthly = cost_per_query x queries_per_day x 30 + hosting_per_month + training x 30 / retrain_every_days;
break-even q = (fixed_B - fixed_A) / (30 x (per_query_A - per_query_B)).

Example (the worked example of the practitioner's guide, docs/guide.md): tunewise cost --prompted-cost 0.08 --tuned-cost 0.02 --platform azure-openai,together --queries-per-day 500

Retrieval (rag arms): + vector database per month (--vector-db embedded: $0, FAISS on the serving machine; managed:
the catalog's figure, the guide's $50-200/month range) + corpus embedding (one-off, amortised like training) + query
embedding per query; the passages' extra prompt tokens are measured against the closed-book arm.

Also: tunewise cost --prompted-cost 0.08 --tuned-cost 0.02 --hosting-per-hour 1.70 --queries-per-day 500
      tunewise cost --prompted-cost 0.08 --rag-cost 0.09 --tuned-cost 0.02 --platform together --vector-db managed --queries-per-day 500
      tunewise cost --spec tunewise.yaml --eval reports/eval_summary.json --plot reports/cost"""


def _usd(x: float, places: int = 2) -> str:
    return f"${x:,.{places}f}"


def _vol(q: float) -> str:
    """A volume as typed: 500 -> '500', 83.3 -> '83.3'."""
    return f"{q:,.1f}".removesuffix(".0")


def render_cost(report) -> None:
    """Print a CostReport as plain aligned text (stable under any terminal width)."""
    q = report.queries_per_day
    width = max(len("option"), *(len(m.option) for m in report.monthly))
    rag = any(o.retrieval for o in report.options)
    out.print(f"Monthly cost at {_vol(q)} queries/day (30-day month)", highlight=False)
    header = (
        f"  {'option':<{width}}  {'$/query':>9}  {'usage/mo':>12}  {'hosting/mo':>11}  {'training/mo':>11}"
    )
    header += f"  {'retrieval/mo':>12}" if rag else ""
    out.print(header + f"  {'total/mo':>12}", highlight=False)
    for m in report.monthly:
        row = (
            f"  {m.option:<{width}}  {_usd(m.per_query, 4):>9}  {_usd(m.usage):>12}  {_usd(m.hosting):>11}  "
            f"{_usd(m.training):>11}"
        )
        row += f"  {_usd(m.retrieval):>12}" if rag else ""
        out.print(row + f"  {_usd(m.total):>12}", highlight=False)
    render_all_in(report.all_in, q)
    render_retrieval(report)
    if report.break_evens:
        out.print("Break-even volumes", highlight=False)
    for be in report.break_evens:
        shown = f"{be.volume:,.1f} queries/day" if be.volume is not None else "never (the lines do not cross)"
        out.print(f"  {be.a} vs {be.b}: {shown}", highlight=False)
        out.print(f"    {be.formula}", highlight=False)
        out.print(f"    {be.summary}", highlight=False)
        if be.all_in_volume is not None:
            out.print(
                f"    with data preparation amortised too (all-in): {be.all_in_volume:,.1f} queries/day",
                highlight=False,
            )
        if be.payback is not None:
            p = be.payback
            months = f"{p.months:,.1f} months" if p.months is not None else "never"
            out.print(
                f"    payback of {p.invest}'s one-off costs at {_vol(q)} queries/day: {months}",
                highlight=False,
            )
            out.print(f"      {p.formula}", highlight=False)
        for note in be.notes:
            out.print(f"    note: {note}", highlight=False)
    c = report.cheapest
    out.print(f"Cheapest at {_vol(q)} queries/day: {c.option} ({_usd(c.total)}/month)", highlight=False)
    render_prices(report.prices)
    for note in report.notes:
        err.print(f"note: {note}", highlight=False)
    for reason in report.skipped:
        err.print(f"skipped: {reason}", highlight=False)


def render_all_in(all_in, queries_per_day: float) -> None:
    """The all-in cost per query of each option, per component (`cost.AllInCost` rows)."""
    if not all_in:
        return
    width = max(len("option"), *(len(a.option) for a in all_in))
    rag = any(a.retrieval or a.passages for a in all_in)
    out.print(
        f"All-in cost per query at {_vol(queries_per_day)} queries/day (fixed costs shared by the queries)",
        highlight=False,
    )
    header = f"  {'option':<{width}}  {'inference':>10}  {'hosting':>10}  {'training':>10}  {'data prep':>10}"
    out.print(header + (f"  {'retrieval':>10}" if rag else "") + f"  {'all-in':>10}", highlight=False)
    for a in all_in:
        row = (
            f"  {a.option:<{width}}  {_usd(a.inference, 4):>10}  {_usd(a.hosting, 4):>10}  "
            f"{_usd(a.training, 4):>10}  {_usd(a.data_preparation, 4):>10}"
        )
        out.print(
            row + (f"  {_usd(a.retrieval, 4):>10}" if rag else "") + f"  {_usd(a.total, 4):>10}",
            highlight=False,
        )


def render_retrieval(report) -> None:
    """What retrieval adds to each rag option: passages, query embedding, vector database, corpus embedding."""
    rows = [o for o in report.options if o.retrieval]
    if not rows:
        return
    out.print("RAG components (what retrieval adds to each rag option)", highlight=False)
    for o in rows:
        passages = (
            f"passages +{o.passage_tokens:,.0f} prompt tokens/query ({_usd(o.passage_cost, 6)}/query, in inference)"
            if o.passage_tokens
            else "passages: in the per-query cost given"
        )
        out.print(
            f"  {o.name}: {passages}; query embedding {_usd(o.embedding_per_query, 6)}/query; vector database "
            f"{_usd(o.vector_db_per_month)}/month; corpus embedding {_usd(o.corpus_embedding_cost)} one-off "
            f"(re-indexed every {o.retrain_every_days:g} days)",
            highlight=False,
        )


def render_prices(prices) -> None:
    """The catalog figures behind the options, each with its source and date."""
    if not prices:
        return
    out.print("Prices used (catalog figure: value, source, date)", highlight=False)
    for p in prices:
        unit = (
            "/hour"
            if p["field"].endswith("per_hour")
            else "/month"
            if p["field"].endswith("month")
            else "/M tokens"
        )
        out.print(
            f"  {p['entry']} {p['field']}: {_usd(p['value'])}{unit}  {p['source']} ({p['date']})",
            highlight=False,
        )


@app.command(help=COST_HELP)
def cost(
    spec: Path | None = typer.Option(
        None, "--spec", help="Task spec: volume, platforms, cadence, pricing file."
    ),
    eval_summary: Path | None = typer.Option(
        None, "--eval", help="Evaluation summary JSON: measured tokens per arm."
    ),
    prompted_cost: float | None = typer.Option(
        None, "--prompted-cost", help="Dollars per query of the prompted arm."
    ),
    tuned_cost: float | None = typer.Option(
        None, "--tuned-cost", help="Dollars per query of the fine-tuned arm."
    ),
    hosting_per_hour: float | None = typer.Option(
        None, "--hosting-per-hour", help="Fine-tuned hosting, $/hour (x 24 x 30)."
    ),
    hosting_per_month: float | None = typer.Option(
        None, "--hosting-per-month", help="Fine-tuned hosting, $/month."
    ),
    platform: str | None = typer.Option(
        None, "--platform", help="Comma-separated platforms or entry ids from the catalog."
    ),
    queries_per_day: float | None = typer.Option(None, "--queries-per-day", help="Stated volume."),
    training_cost: float | None = typer.Option(
        None, "--training-cost", help="One-time training cost in dollars."
    ),
    rag_cost: float | None = typer.Option(
        None, "--rag-cost", help="Dollars per query of the rag arm (prompted model + passages)."
    ),
    rag_tuned_cost: float | None = typer.Option(
        None, "--rag-tuned-cost", help="Dollars per query of the rag+fine-tuned arm."
    ),
    vector_db: str | None = typer.Option(
        None, "--vector-db", help="Vector index priced: embedded ($0/month, the default) or managed."
    ),
    vector_db_per_month: float | None = typer.Option(
        None, "--vector-db-per-month", help="Vector index, $/month (instead of the catalog's figure)."
    ),
    embedding_per_million: float | None = typer.Option(
        None,
        "--embedding-per-million",
        help="An embedding API's $ per million tokens (default 0: self-hosted).",
    ),
    corpus_tokens: float | None = typer.Option(
        None, "--corpus-tokens", help="Tokens in the indexed documents (default: the evaluation's record)."
    ),
    training_tokens: float | None = typer.Option(
        None, "--training-tokens", help="Training tokens per epoch (priced per platform)."
    ),
    epochs: float = typer.Option(1.0, "--epochs", help="Epochs, for --training-tokens."),
    retrain_every_days: float | None = typer.Option(
        None, "--retrain-every-days", help="Retraining cadence (default 91: quarterly)."
    ),
    pricing: Path | None = typer.Option(
        None, "--pricing", help="Pricing override YAML (same shape as the catalog)."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Write the volume sweep to PATH.png and PATH.svg."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    from tunewise.economics.plan import arm_tokens, cost_report
    from tunewise.economics.plan import corpus_tokens as recorded_corpus

    arms, summary = [], None
    if eval_summary is not None:
        from tunewise.outputs import load_summary

        summary = load_summary(eval_summary)
        arms = arm_tokens(summary)
    econ = economics_settings(
        *spec_economics(spec),
        queries_per_day=queries_per_day,
        platforms=platform,
        retrain_every_days=retrain_every_days,
        vector_db=vector_db,
        vector_db_per_month=vector_db_per_month,
        embedding_per_million_tokens=embedding_per_million,
        prompted_cost=prompted_cost,
        tuned_cost=tuned_cost,
        rag_cost=rag_cost,
        rag_tuned_cost=rag_tuned_cost,
        hosting_per_hour=hosting_per_hour,
        hosting_per_month=hosting_per_month,
        training_cost=training_cost,
        corpus_tokens=corpus_tokens
        if corpus_tokens is not None
        else (recorded_corpus(summary) if summary else None),
    )
    report = cost_report(
        econ.cost_request(arms, training_tokens=training_tokens, epochs=epochs), econ.catalog(pricing)
    )
    payload = report.to_dict()
    if plot is not None:
        from tunewise.economics.plot import plot_sweep

        files = plot_sweep(report.options, plot, queries_per_day=econ.queries_per_day)
        payload["plots"] = [str(f) for f in files]
    if as_json:
        print_json(payload)
    else:
        render_cost(report)
        for f in payload.get("plots", []):
            err.print(f"wrote {f}", highlight=False)


PRICING_HELP = """List the pricing catalog: every figure with its source, date and age; unknown figures say why.

Warns (one line per entry, on stderr) when an entry's oldest figure is over 90 days old. `tunewise pricing update
FILE` merges your own figures, each with its source and date, into your pricing file.

Example: tunewise pricing --platform together

Also: tunewise pricing --pricing my-prices.yaml --json
      tunewise pricing update new-prices.yaml --spec tunewise.yaml"""

pricing_app = typer.Typer(invoke_without_command=True, no_args_is_help=False)
app.add_typer(pricing_app, name="pricing", help=PRICING_HELP)


def _age(days: int | None) -> str:
    return "undated" if days is None else f"{days} d old"


@pricing_app.callback()
def pricing(
    ctx: typer.Context,
    platform: str | None = typer.Option(
        None, "--platform", help="Show only these platforms (comma-separated)."
    ),
    pricing_file: Path | None = typer.Option(None, "--pricing", help="Pricing override YAML to apply."),
    spec: Path | None = typer.Option(None, "--spec", help="Apply the spec's economics.pricing_file."),
    as_json: bool = typer.Option(False, "--json", help="Print the catalog as JSON."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from tunewise.economics.pricing import FIGURE_FIELDS, STALE_AFTER_DAYS, load_catalog, stale_figures

    econ, root = spec_economics(spec)
    spec_pricing = root / econ.pricing_file if econ is not None and root and econ.pricing_file else None
    catalog = load_catalog(spec_pricing, pricing_file)
    wanted = parse_platforms(platform)
    entries = catalog.entries
    if wanted:
        chosen = {catalog.get(p).platform if "/" not in p else p for p in wanted}
        entries = [e for e in entries if e.platform in chosen or e.id in chosen]
    stale = [(e, days) for e, days in stale_figures(catalog) if e in entries]
    if as_json:
        print_json(
            {
                "sources": catalog.sources,
                "stale_after_days": STALE_AFTER_DAYS,
                "entries": [
                    json.loads(e.model_dump_json())
                    | {"age_days": {n: getattr(e, n).age_days() for n in FIGURE_FIELDS}}
                    for e in entries
                ],
                "stale": [{"id": e.id, "oldest_days": days} for e, days in stale],
            }
        )
        return
    out.print(f"pricing catalog: {' + '.join(catalog.sources)}", highlight=False)
    for entry in entries:
        default = f" (default for {entry.platform})" if entry.default else ""
        out.print(f"\n{entry.id}{default}: {entry.description}", highlight=False)
        for name in FIGURE_FIELDS:
            fig = getattr(entry, name)
            if fig.known:
                value = f"{fig.value:g}" + (f" {fig.unit}" if fig.unit else "")
                value = (
                    value if name in ("throughput_tokens_per_second", "minimum_billing") else _usd(fig.value)
                )
            else:
                value = "unknown"
            note = f" - {fig.note}" if fig.note else ""
            out.print(
                f"  {name:<36} {value:>9}  {fig.source} ({fig.date}, {_age(fig.age_days())}){note}",
                highlight=False,
            )
    for entry, days in stale:
        err.print(
            f"warning: {entry.id}: its oldest figure is {days} days old (over {STALE_AFTER_DAYS}): check the "
            "sources above and record current prices with `tunewise pricing update FILE`",
            highlight=False,
        )


UPDATE_HELP = """Merge your figures into your pricing file; every figure needs its value, source and date.

FILE has the catalog's shape: entries: [{id: together/lora-up-to-16b, inference_input_per_million_tokens:
{value: 0.2, source: https://..., date: 2026-12-07}}]. A known id gets the fields FILE names; a new id is added.
The target is --into PATH, else the spec's economics.pricing_file; it is written atomically.

Example: tunewise pricing update new-prices.yaml --spec tunewise.yaml"""


@pricing_app.command("update", help=UPDATE_HELP)
def pricing_update(
    file: Path = typer.Argument(..., help="YAML file of new figures, each with source and date."),
    spec: Path | None = typer.Option(None, "--spec", help="Write into the spec's economics.pricing_file."),
    into: Path | None = typer.Option(None, "--into", help="The pricing file to update (created if absent)."),
) -> None:
    from tunewise.economics.pricing import update_pricing_file
    from tunewise.errors import TunewiseError

    target = into
    if target is None:
        econ, root = spec_economics(spec)
        if econ is None or not econ.pricing_file:
            raise TunewiseError(
                "no pricing file to update",
                hint="pass --into PATH, or set economics.pricing_file in tunewise.yaml and pass --spec",
            )
        target = (root or Path.cwd()) / econ.pricing_file
    updated, added = update_pricing_file(target, file)
    out.print(
        f"updated {target}: {len(updated)} entr{'y' if len(updated) == 1 else 'ies'} changed"
        + (f" ({', '.join(updated)})" if updated else "")
        + f", {len(added)} added"
        + (f" ({', '.join(added)})" if added else ""),
        highlight=False,
    )
