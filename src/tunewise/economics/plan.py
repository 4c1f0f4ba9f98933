"""From inputs (flags, a spec, an evaluation's measured tokens) and the pricing catalog to cost options and a
cost report. The arithmetic itself lives in `cost.py`; this module only decides which numbers go in.

Two ways in:
- explicit per-query costs (`prompted_cost`, `tuned_cost`), with hosting given directly or taken from the
  catalog for each named platform: the guide's worked example;
- measured tokens per arm (from an evaluation summary) x each platform's per-token prices.

A retrieval arm (`rag`, `rag+...`) is priced like its closed-book counterpart plus what retrieval adds
(`retrieval.py`): the vector database per month, the corpus embedding (one-off) and the query embedding; the
passages' extra prompt tokens (measured against the closed-book counterpart) are shown apart. Given directly,
`rag_cost` and `rag_tuned_cost` are the retrieval arms' dollars per query, passages included.

A platform whose needed figure is unknown is skipped with a reason naming the entry and the field; when no
option is left, the first reason becomes the error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tunewise.economics.cost import (
    RETRAIN_EVERY_DAYS,
    AllInCost,
    BreakEven,
    CostOption,
    MonthlyCost,
    all_in_cost,
    break_even,
    break_even_all_in,
    cheapest,
    guide_notes,
    hosting_per_month,
    monthly_cost,
    payback,
    per_query_cost,
    training_cost,
)
from tunewise.economics.pricing import Catalog, Entry
from tunewise.economics.retrieval import (
    VECTOR_DB_PLATFORM,
    RetrievalPrices,
    closed_book,
    is_rag_arm,
    is_rag_tuned,
    passage_tokens,
)
from tunewise.errors import TunewiseError


@dataclass(frozen=True)
class ArmTokens:
    """An evaluated arm's measured mean tokens per query."""

    name: str
    kind: str  # prompted | fine-tuned | endpoint
    prompt_tokens: float
    completion_tokens: float
    # An endpoint arm is priced by its own catalog entry (e.g. azure-openai/gpt-4o), not by the platforms that
    # would host the open model.
    pricing: str | None = None
    # A retrieval arm's extra prompt tokens over its closed-book counterpart (None: not a retrieval arm, or
    # unmeasured), and the question's own tokens, which the query embedding bills.
    passage_tokens: float | None = None
    query_tokens: float | None = None

    @property
    def retrieval(self) -> bool:
        return is_rag_arm(self.name)


def arm_tokens(summary: Any) -> list[ArmTokens]:
    """Every arm of an evaluation summary (`outputs.EvalSummary`) with its measured mean tokens; a retrieval arm
    also gets its passages' extra prompt tokens over its closed-book counterpart, where that arm was evaluated.
    The query's tokens are the closed-book prompt's (the question with its instructions: an upper bound)."""
    by_name = {a.name: a for a in summary.arms}
    rows = []
    for a in summary.arms:
        extra = query = None
        closed = by_name.get(closed_book(a.name, summary.arm_info.get(a.name)) or "")
        if closed is not None:
            extra = passage_tokens(a.prompt_tokens, closed.prompt_tokens)
            query = closed.prompt_tokens
        rows.append(
            ArmTokens(
                a.name, a.kind, a.prompt_tokens or 0.0, a.completion_tokens or 0.0, pricing=a.pricing,
                passage_tokens=extra, query_tokens=query,
            )
        )  # fmt: skip
    return rows


def corpus_tokens(summary: Any) -> float | None:
    """The indexed corpus's tokens, where the evaluation recorded them for a retrieval arm: `arm_info[arm]`'s
    `corpus_tokens`, or its `retrieval` record's `corpus_tokens` or `tokens` (the index's size)."""
    for name, info in summary.arm_info.items():
        if not is_rag_arm(name) or not isinstance(info, dict):
            continue
        retrieval = info.get("retrieval") if isinstance(info.get("retrieval"), dict) else {}
        for value in (info.get("corpus_tokens"), retrieval.get("corpus_tokens"), retrieval.get("tokens")):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
                return float(value)
    return None


@dataclass
class CostRequest:
    queries_per_day: float
    prompted_cost: float | None = None
    tuned_cost: float | None = None
    hosting_per_hour: float | None = None
    hosting_per_month: float | None = None
    platforms: list[str] = field(default_factory=list)
    arms: list[ArmTokens] = field(default_factory=list)
    training_cost: float | None = None  # one-time, dollars, when known directly
    training_tokens: float | None = None  # tokens per epoch, from the data stage
    epochs: float = 1.0
    retrain_every_days: float = RETRAIN_EVERY_DAYS
    training_hours: float | None = (
        None  # the run's measured hours, for platforms that bill training by the hour
    )
    # The run trained with retrieved passages in its prompts (rag+fine-tuned) reads several times the tokens of
    # the closed-book run; its own tokens per epoch and hours, where known, price that arm's training.
    rag_training_tokens: float | None = None
    rag_training_hours: float | None = None
    data_preparation_cost: float = 0.0  # one-off, fine-tuned options only
    # Retrieval: the arms' dollars per query when given directly (passages included), which vector index is
    # priced (a `vector-db/...` catalog entry, or the monthly figure given), the embedding price and corpus size.
    rag_cost: float | None = None
    rag_tuned_cost: float | None = None
    vector_db: str = "embedded"
    vector_db_per_month: float | None = None
    embedding_per_million_tokens: float = 0.0
    corpus_tokens: float | None = None


@dataclass
class CostReport:
    queries_per_day: float
    options: list[CostOption]
    monthly: list[MonthlyCost]
    break_evens: list[BreakEven]
    cheapest: MonthlyCost
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    all_in: list[AllInCost] = field(default_factory=list)  # empty at 0 queries/day
    prices: list[dict[str, Any]] = field(default_factory=list)  # each catalog figure used, with its source

    def to_dict(self) -> dict[str, Any]:
        return {
            "queries_per_day": self.queries_per_day,
            "days_per_month": 30,
            "options": [asdict(o) | {"fixed_per_month": o.fixed_per_month} for o in self.options],
            "monthly": [asdict(m) for m in self.monthly],
            "all_in": [asdict(a) for a in self.all_in],
            "break_even": [asdict(b) for b in self.break_evens],
            "cheapest": asdict(self.cheapest),
            "prices": self.prices,
            "skipped": self.skipped,
            "notes": self.notes,
            "retrieval": [retrieval_row(o) for o in self.options if o.retrieval],
        }


def retrieval_row(option: CostOption) -> dict[str, Any]:
    """What retrieval adds to one option: the passages' tokens and their cost per query, the query embedding,
    the vector database per month and the corpus embedding (one-off)."""
    return {
        "option": option.name,
        "passage_tokens": option.passage_tokens,
        "passage_cost_per_query": option.passage_cost,
        "embedding_per_query": option.embedding_per_query,
        "vector_db_per_month": option.vector_db_per_month,
        "corpus_embedding": option.corpus_embedding_cost,
    }


def retrieval_prices(request: CostRequest, catalog: Catalog) -> RetrievalPrices:
    """The vector index priced (its catalog entry's monthly figure unless one was given) and the embedding."""
    if request.vector_db_per_month is not None:
        monthly, source = request.vector_db_per_month, "given (economics.vector_db_per_month)"
    else:
        entry = catalog.get(f"{VECTOR_DB_PLATFORM}/{request.vector_db}")
        monthly = entry.hosting_monthly()
        fig = entry.hosting_per_month
        source = f"{entry.id}: {fig.source} ({fig.date})"
    return RetrievalPrices(
        vector_db=request.vector_db,
        vector_db_per_month=monthly,
        vector_db_source=source,
        embedding_per_million_tokens=request.embedding_per_million_tokens,
        corpus_tokens=request.corpus_tokens,
    )


def _with_retrieval(
    option: CostOption, prices: RetrievalPrices, query_tokens: float, extra_tokens: float, input_per_m: float
) -> CostOption:
    """`option` plus what retrieval adds: the query embedding per query, the vector database, the corpus."""
    from dataclasses import replace

    embed = prices.query_embedding(query_tokens)
    return replace(
        option,
        per_query=round(option.per_query + embed, 12),
        vector_db_per_month=prices.vector_db_per_month,
        corpus_embedding_cost=prices.corpus_embedding,
        embedding_per_query=embed,
        passage_tokens=extra_tokens,
        passage_cost=round(extra_tokens * input_per_m / 1e6, 12),
    )


def _training(request: CostRequest, entry: Entry | None, with_passages: bool = False) -> float:
    """One training run's dollars on `entry`; `with_passages`: the run whose prompts carry retrieved passages,
    priced from its own tokens and hours where the request has them."""
    if request.training_cost is not None:
        return request.training_cost
    tokens, hours = request.training_tokens, request.training_hours
    if with_passages:
        tokens = request.rag_training_tokens if request.rag_training_tokens is not None else tokens
        hours = request.rag_training_hours if request.rag_training_hours is not None else hours
    if tokens is None or entry is None:
        return 0.0
    if entry.training_per_million_tokens.known:
        return training_cost(tokens, request.epochs, entry.require("training_per_million_tokens"))
    if entry.training_per_hour.known:
        if hours is None:
            raise TunewiseError(
                f"pricing entry '{entry.id}' bills training by the hour and the run's hours are unknown",
                hint="give --training-cost DOLLARS, or price a trained run (the pipeline passes its hours)",
            )
        return round(hours * entry.require("training_per_hour"), 10)
    entry.require("training_per_million_tokens")  # raises, naming the entry and field
    return 0.0


def gpu_capacity(entry: Entry, arm: ArmTokens) -> float | None:
    """Queries per day one always-on GPU can serve at its measured throughput, when the entry has one.

    >>> e = Entry(id="self-hosted/gpu", platform="self-hosted", model_class="gpu", hosting_applies_to="all",
    ...           throughput_tokens_per_second={"value": 100.0, "source": "bench", "date": "2026-06"})
    >>> gpu_capacity(e, ArmTokens("ft", "fine-tuned", 150, 50))  # 100 x 86,400 / 200
    43200.0
    """
    tokens = arm.prompt_tokens + arm.completion_tokens
    if not entry.throughput_tokens_per_second.known or entry.hosting_applies_to != "all" or tokens <= 0:
        return None
    return float(entry.throughput_tokens_per_second.value) * 86_400 / tokens  # type: ignore[arg-type]


def _endpoint_option(arm: ArmTokens, catalog: Catalog, cadence: float) -> tuple[CostOption | None, str]:
    """An endpoint arm priced at its own catalog entry's per-token rates: no hosting, no training."""
    if arm.pricing is None:
        return None, (
            f"{arm.name}: an endpoint needs a price; set its `pricing` to a catalog entry (`tunewise pricing` "
            "lists them) or add one in your pricing file"
        )
    try:
        entry = catalog.get(arm.pricing)
        per_query = per_query_cost(
            arm.prompt_tokens,
            arm.completion_tokens,
            entry.require("inference_input_per_million_tokens"),
            entry.require("inference_output_per_million_tokens"),
        )
    except TunewiseError as exc:
        return None, f"{arm.name} @ {arm.pricing}: {exc.message}"
    option = CostOption(
        f"{arm.name} @ {entry.platform}", per_query, 0.0, 0.0, cadence, arm=arm.name, platform=entry.id
    )
    return option, ""


def build_options(request: CostRequest, catalog: Catalog) -> tuple[list[CostOption], list[str], list[str]]:
    """The cost options the request describes, the platforms skipped (with why), and notes."""
    options: list[CostOption] = []
    skipped: list[str] = []
    notes: list[str] = []
    entries: list[Entry] = [catalog.get(p) for p in request.platforms]
    explicit_hosting = request.hosting_per_hour is not None or request.hosting_per_month is not None
    cadence = request.retrain_every_days

    direct = (request.prompted_cost, request.tuned_cost, request.rag_cost, request.rag_tuned_cost)
    if any(c is not None for c in direct):
        if request.arms:
            notes.append("per-query costs given directly: the evaluation's measured tokens are not used")
        if request.prompted_cost is not None:
            options.append(
                CostOption("prompted", request.prompted_cost, arm="prompted", retrain_every_days=cadence)
            )
        if request.tuned_cost is not None:
            if explicit_hosting or not entries:
                hosting = hosting_per_month(request.hosting_per_hour, request.hosting_per_month)
                if not explicit_hosting:
                    notes.append("no hosting given: the fine-tuned option has no fixed monthly cost")
                name = "fine-tuned" if not entries else "fine-tuned @ given hosting"
                options.append(
                    CostOption(
                        name,
                        request.tuned_cost,
                        hosting,
                        _training(request, None),
                        cadence,
                        arm="fine-tuned",
                        data_preparation_cost=request.data_preparation_cost,
                    )
                )
            for entry in entries:
                try:
                    options.append(
                        CostOption(
                            f"fine-tuned @ {entry.platform}",
                            request.tuned_cost,
                            entry.hosting_monthly(),
                            _training(request, entry),
                            cadence,
                            arm="fine-tuned",
                            platform=entry.id,
                            data_preparation_cost=request.data_preparation_cost,
                        )
                    )
                except TunewiseError as exc:
                    skipped.append(exc.message)
        if request.rag_cost is not None or request.rag_tuned_cost is not None:
            rag = retrieval_prices(request, catalog)
            # A fine-tuned retrieval arm is hosted like the fine-tuned one: on each platform's hosting, or the
            # hosting given.
            tuned_hosts = [(o.name.partition(" @ ")[2], o) for o in options if o.arm == "fine-tuned"]
            if request.rag_cost is not None:
                options.append(
                    _with_retrieval(
                        CostOption("rag", request.rag_cost, arm="rag", retrain_every_days=cadence),
                        rag,
                        0,
                        0,
                        0,
                    )
                )
            if request.rag_tuned_cost is not None:
                if not tuned_hosts:
                    skipped.append(
                        "rag+fine-tuned: give --tuned-cost too (its hosting is the fine-tuned model's)"
                    )
                for where, host in tuned_hosts:
                    base = CostOption(
                        "rag+fine-tuned" + (f" @ {where}" if where else ""), request.rag_tuned_cost,
                        host.hosting_per_month, host.training_cost, cadence, arm="rag+fine-tuned",
                        platform=host.platform, data_preparation_cost=host.data_preparation_cost,
                    )  # fmt: skip
                    options.append(_with_retrieval(base, rag, 0, 0, 0))
    elif request.arms:
        if not entries and any(a.kind != "endpoint" for a in request.arms):
            raise TunewiseError(
                "measured tokens need platforms to price them",
                hint="pass --platform azure-openai,together (or list economics.platforms in tunewise.yaml)",
            )
        rag = retrieval_prices(request, catalog) if any(a.retrieval for a in request.arms) else None
        for arm in request.arms:
            if arm.kind == "endpoint":
                option, reason = _endpoint_option(arm, catalog, cadence)
                if option is not None:
                    options.append(option)
                else:
                    skipped.append(reason)
                continue
            tuned = arm.kind == "fine-tuned" or is_rag_tuned(arm.name)
            for entry in entries:
                try:
                    input_per_m = entry.require("inference_input_per_million_tokens")
                    per_query = per_query_cost(
                        arm.prompt_tokens,
                        arm.completion_tokens,
                        input_per_m,
                        entry.require("inference_output_per_million_tokens"),
                    )
                    pays_hosting = tuned or entry.hosting_applies_to == "all"
                    option = CostOption(
                        f"{arm.name} @ {entry.platform}",
                        per_query,
                        entry.hosting_monthly() if pays_hosting else 0.0,
                        _training(request, entry, with_passages=is_rag_tuned(arm.name)) if tuned else 0.0,
                        cadence,
                        arm=arm.name,
                        platform=entry.id,
                        data_preparation_cost=request.data_preparation_cost if tuned else 0.0,
                    )
                    if rag is not None and arm.retrieval:
                        option = _with_retrieval(
                            option, rag, arm.query_tokens or 0.0, arm.passage_tokens or 0.0, input_per_m
                        )
                    options.append(option)
                except TunewiseError as exc:
                    skipped.append(f"{arm.name} @ {entry.platform}: {exc.message}")
                    continue
                capacity = gpu_capacity(entry, arm)
                if capacity is not None and request.queries_per_day > capacity:
                    # Hosting here is one always-on GPU: beyond its throughput the bill needs more GPUs.
                    notes.append(
                        f"{arm.name} @ {entry.platform}: {request.queries_per_day:,.0f} queries/day exceeds one GPU's "
                        f"capacity of {capacity:,.0f}/day ({entry.throughput_tokens_per_second.value:g} tokens/s); "
                        "the hosting shown is for one GPU"
                    )
    else:
        raise TunewiseError(
            "nothing to price",
            hint="give --prompted-cost and --tuned-cost (dollars per query), or --eval EVAL_SUMMARY.json with --platform",
        )
    if not options:
        raise TunewiseError(
            "no option could be priced: " + (skipped[0] if skipped else "no inputs"),
            hint="set the missing figures in a pricing override file (--pricing FILE)",
        )
    return options, list(dict.fromkeys(skipped)), notes


@dataclass(frozen=True)
class TrainingEstimate:
    """One platform's price for a planned training run, or why it has none."""

    platform: str  # the catalog entry id
    dollars: float | None
    basis: str  # how the figure was reached, or why it is unknown


def training_estimates(
    tokens_per_epoch: int,
    epochs: int,
    platforms: list[str],
    catalog: Catalog,
    hours: float | None = None,
) -> list[TrainingEstimate]:
    """What one training run of the planned size costs on each platform.

    Per-token platforms bill every token of the training file (prompts too) x epochs, which is how the
    managed services price fine-tuning; hourly ones bill `hours`, the time estimated on this machine from a
    measured step. Each platform counts tokens with its own tokenizer, so the figure is an estimate.

    >>> from tunewise.economics.pricing import load_builtin
    >>> catalog = load_builtin()
    >>> [e.dollars for e in training_estimates(100_000, 3, ["azure-openai"], catalog)]  # 0.3M x $25/M
    [7.5]
    >>> training_estimates(100_000, 3, ["self-hosted"], catalog)[0].dollars is None  # no GPU rate given
    True
    """
    estimates = []
    for name in platforms:
        entry = catalog.get(name)
        if entry.training_per_million_tokens.known:
            rate = entry.require("training_per_million_tokens")
            dollars = training_cost(tokens_per_epoch, epochs, rate)
            basis = f"{tokens_per_epoch:,} tokens x {epochs} epochs at ${rate:,.2f} per million"
        elif entry.training_per_hour.known and hours is not None:
            rate = entry.require("training_per_hour")
            dollars = round(hours * rate, 10)
            basis = f"{hours:.2f} h (the estimate on this machine) at ${rate:,.2f} per hour"
        elif entry.training_per_hour.known:
            dollars = None
            basis = "billed per hour: needs the run's time, which a plan without a measured step lacks"
        else:
            dollars = None
            # A GPU paid by the hour (self-hosted) lacks an hourly rate; a managed service, a per-token price.
            field_name = (
                "training_per_hour" if entry.hosting_applies_to == "all" else "training_per_million_tokens"
            )
            note = getattr(entry, field_name).note
            basis = f"no {field_name} in the catalog ({note}); set it with --pricing FILE"
        estimates.append(TrainingEstimate(entry.id, dollars, basis))
    return estimates


def cost_report(request: CostRequest, catalog: Catalog) -> CostReport:
    """Monthly bills at the stated volume, break-even for every pair of options, and the cheapest option."""
    options, skipped, notes = build_options(request, catalog)
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise TunewiseError(f"two options share a name: {', '.join(names)}", hint="name each platform once")
    q = request.queries_per_day
    monthly = [monthly_cost(o, q) for o in options]
    pairs = []
    for i, a in enumerate(options):
        for b in options[i + 1 :]:
            be = break_even(a, b)
            be.notes.extend(guide_notes(a, b, be))
            if a.data_preparation_cost or b.data_preparation_cost:
                be.all_in_volume = break_even_all_in(a, b)
            be.payback = payback(a, b, q)
            pairs.append(be)
    return CostReport(
        queries_per_day=request.queries_per_day,
        options=options,
        monthly=monthly,
        break_evens=pairs,
        cheapest=cheapest(options, request.queries_per_day),
        skipped=skipped,
        notes=notes,
        all_in=[all_in_cost(o, q) for o in options] if q > 0 else [],
        prices=prices_used(options, catalog, request),
    )


# The figures an option's cost reads from its entry: per-token prices, hosting, training.
_USED_FIELDS = (
    "inference_input_per_million_tokens",
    "inference_output_per_million_tokens",
    "hosting_per_hour",
    "hosting_per_month",
    "training_per_million_tokens",
    "training_per_hour",
)


def prices_used(
    options: list[CostOption], catalog: Catalog, request: CostRequest | None = None
) -> list[dict[str, Any]]:
    """Each known catalog figure behind the options, once, with its source and date: what a reader checks."""
    rows: list[dict[str, Any]] = []
    if (
        request is not None
        and request.vector_db_per_month is None
        and any(o.retrieval or is_rag_arm(o.arm) for o in options)
    ):
        entry = catalog.get(f"{VECTOR_DB_PLATFORM}/{request.vector_db}")
        fig = entry.hosting_per_month
        rows.append(
            {
                "entry": entry.id,
                "field": "hosting_per_month",
                "value": fig.value,
                "source": fig.source,
                "date": fig.date,
            }
        )
    seen: set[str] = set()
    for option in options:
        if option.platform is None or option.platform in seen:
            continue
        seen.add(option.platform)
        entry = catalog.get(option.platform)
        for name in _USED_FIELDS:
            fig = getattr(entry, name)
            if fig.known:
                rows.append(
                    {
                        "entry": entry.id,
                        "field": name,
                        "value": fig.value,
                        "source": fig.source,
                        "date": fig.date,
                    }
                )
    return rows


__all__ = [
    "ArmTokens",
    "arm_tokens",
    "corpus_tokens",
    "retrieval_prices",
    "retrieval_row",
    "CostReport",
    "CostRequest",
    "TrainingEstimate",
    "build_options",
    "cost_report",
    "gpu_capacity",
    "prices_used",
    "training_estimates",
]
