"""Cost per query, monthly cost and break-even volume: pure arithmetic, no I/O, no torch.

The model (a month is 30 days, as in the guide's "$1,224/month" = $1.70 x 24 h x 30 days):

    training  = training_tokens x epochs x price_per_M / 1e6  (+ eval_tokens x eval_price_per_M / 1e6)
    per_query = prompt_tokens x input_price_per_M / 1e6 + completion_tokens x output_price_per_M / 1e6
    monthly(q) = per_query x q x 30  +  hosting_per_month  +  training x 30 / retrain_every_days
               = variable(q)         +  fixed

    break-even between options A and B (monthly_A(q) = monthly_B(q)):
        q* = (fixed_B - fixed_A) / (30 x (per_query_A - per_query_B))   queries/day

Every option is a straight line in q, so two options cross at most once.

All-in cost per query at q queries/day (what a query really costs, every component shown):

    inference + hosting_per_month / (30 q) + training / (retrain_every_days x q)
              + data_preparation / (retrain_every_days x q)

Data preparation (collecting, labelling and reviewing the training data) is paid by fine-tuned options only
and amortised like training. Payback of the one-off costs (training + data preparation) from the monthly
saving of running costs (usage + hosting) between two options:

    months = (one_off_B - one_off_A) / (running_A(q) - running_B(q))

Retrieval (RAG) options add a vector database per month (a fixed cost, $0 for the embedded index), embedding
the corpus (one-off, amortised like training) and embedding each query (part of the per-query cost); the
passages' extra prompt tokens are already in the measured per-query cost (`retrieval.py`).

    retrieval per month = vector_db_per_month + corpus_embedding x 30 / retrain_every_days
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tunewise.errors import TunewiseError

DAYS_PER_MONTH = 30.0  # the guide's convention: $1.70/h x 24 x 30 = $1,224/month
RETRAIN_EVERY_DAYS = 91.0  # quarterly, as the guide advises ("plan for quarterly retraining cycles")
# What preparing the training data costs when the user says nothing: the guide's "a SaaS team spends $3,000
# preparing training data" (and "$2,000+ in training data preparation"). A labelled default, never a measurement.
DATA_PREPARATION_COST = 3000.0
# The platforms a new project prices by default: the catalog holds every figure their cost needs (hosting per
# hour, no per-token price, training per hour), each from the vendor's pricing page.
DEFAULT_PLATFORMS = ("hf-endpoints",)

# The guide's worked example ("What Good Fine-Tuning Looks Like") and the break-even volumes it states.
GUIDE_EXAMPLE = {
    "queries_per_day": 500.0,
    "prompted_per_query": 0.08,
    "tuned_per_query": 0.02,
    "hosting_per_month": {"azure-openai": 1224.0, "together": 150.0},
    "guide_says": {"azure-openai": "roughly 800", "together": "around 200"},
}


def _check(name: str, value: float | None, what: str) -> None:
    if value is None:
        raise TunewiseError(f"{what}: {name} is missing", hint=f"give {name} a number (0 or more)")
    if not math.isfinite(value) or value < 0:
        raise TunewiseError(
            f"{what}: {name} must be a number of 0 or more (got {value})",
            hint="prices and volumes cannot be negative",
        )


def hosting_per_month(
    per_hour: float | None = None, per_month: float | None = None, days: float = DAYS_PER_MONTH
) -> float:
    """Monthly hosting from an hourly rate (always on, 24 h a day) or a monthly figure.

    >>> round(hosting_per_month(per_hour=1.70), 2)
    1224.0
    >>> hosting_per_month(per_month=150)
    150.0
    >>> hosting_per_month()
    0.0
    """
    if per_hour is not None and per_month is not None:
        raise TunewiseError("hosting is given both per hour and per month", hint="give one of the two")
    if per_hour is not None:
        _check("hosting per hour", per_hour, "hosting")
        return per_hour * 24.0 * days
    if per_month is not None:
        _check("hosting per month", per_month, "hosting")
        return float(per_month) * days / DAYS_PER_MONTH
    return 0.0


def training_cost(
    training_tokens: float,
    epochs: float,
    price_per_million: float,
    eval_tokens: float = 0.0,
    eval_price_per_million: float = 0.0,
) -> float:
    """One-time training cost in dollars: tokens x epochs x price (+ evaluation tokens x their price).

    >>> training_cost(2_000_000, 3, 25.0)  # 6M trained tokens on Azure GPT-4o-mini
    150.0
    >>> training_cost(2_000_000, 3, 0.48, eval_tokens=1_000_000, eval_price_per_million=0.2)
    3.08
    """
    for name, value in (
        ("training tokens", training_tokens),
        ("epochs", epochs),
        ("training price per million tokens", price_per_million),
        ("evaluation tokens", eval_tokens),
        ("evaluation price per million tokens", eval_price_per_million),
    ):
        _check(name, value, "training cost")
    return round(
        training_tokens * epochs * price_per_million / 1e6 + eval_tokens * eval_price_per_million / 1e6, 10
    )


def per_query_cost(
    prompt_tokens: float, completion_tokens: float, input_per_million: float, output_per_million: float
) -> float:
    """Dollars per query from measured mean token counts and per-million-token prices.

    >>> per_query_cost(2000, 300, 2.5, 10.0)  # a 2,000-token prompt, 300-token answer
    0.008
    """
    for name, value in (
        ("prompt tokens", prompt_tokens),
        ("completion tokens", completion_tokens),
        ("input price per million tokens", input_per_million),
        ("output price per million tokens", output_per_million),
    ):
        _check(name, value, "per-query cost")
    return round(prompt_tokens * input_per_million / 1e6 + completion_tokens * output_per_million / 1e6, 12)


@dataclass(frozen=True)
class CostOption:
    """One way to serve the task: an arm on a platform. Costs in dollars."""

    name: str
    per_query: float
    hosting_per_month: float = 0.0
    training_cost: float = 0.0  # one-time, paid again at every retraining
    retrain_every_days: float = RETRAIN_EVERY_DAYS
    arm: str = ""
    platform: str | None = None
    # One-off, paid again at every retraining like training; fine-tuned options only. Counted in the all-in
    # cost per query and the payback, not in the monthly bill the guide's break-even volumes are read from.
    data_preparation_cost: float = 0.0
    # Retrieval options only. The vector database is a running cost; embedding the corpus is one-off (paid again
    # at every re-indexing, amortised like training); the query embedding and the passages' tokens are already
    # part of `per_query` and kept here to show them.
    vector_db_per_month: float = 0.0
    corpus_embedding_cost: float = 0.0
    embedding_per_query: float = 0.0
    passage_tokens: float = 0.0
    passage_cost: float = 0.0

    def __post_init__(self) -> None:
        _check("cost per query", self.per_query, f"option '{self.name}'")
        for label, value in (
            ("vector database per month", self.vector_db_per_month),
            ("corpus embedding cost", self.corpus_embedding_cost),
            ("embedding cost per query", self.embedding_per_query),
        ):
            _check(label, value, f"option '{self.name}'")
        _check("data preparation cost", self.data_preparation_cost, f"option '{self.name}'")
        _check("hosting per month", self.hosting_per_month, f"option '{self.name}'")
        _check("training cost", self.training_cost, f"option '{self.name}'")
        if not self.retrain_every_days > 0:
            raise TunewiseError(f"option '{self.name}': retraining cadence must be more than 0 days")

    @property
    def training_per_month(self) -> float:
        """Training amortized over the retraining cadence: each cycle pays for one training run."""
        return self.training_cost * DAYS_PER_MONTH / self.retrain_every_days

    @property
    def retrieval_per_month(self) -> float:
        """The vector database plus the corpus embedding amortised over the cadence (0 without retrieval)."""
        return (
            self.vector_db_per_month + self.corpus_embedding_cost * DAYS_PER_MONTH / self.retrain_every_days
        )

    @property
    def fixed_per_month(self) -> float:
        return self.hosting_per_month + self.training_per_month + self.retrieval_per_month

    @property
    def retrieval(self) -> bool:
        """Whether the option serves a retrieval arm (`rag`, `rag+...`)."""
        from tunewise.economics.retrieval import is_rag_arm

        return is_rag_arm(self.arm)

    @property
    def one_off(self) -> float:
        """What each cycle costs once: training, data preparation and embedding the corpus."""
        return self.training_cost + self.data_preparation_cost + self.corpus_embedding_cost

    def running_per_month(self, queries_per_day: float) -> float:
        """Usage, hosting and the vector database: what the option costs a month once trained and indexed."""
        return (
            self.per_query * queries_per_day * DAYS_PER_MONTH
            + self.hosting_per_month
            + self.vector_db_per_month
        )


@dataclass(frozen=True)
class AllInCost:
    """What one query really costs at a volume, per component (dollars per query)."""

    option: str
    queries_per_day: float
    inference: float
    hosting: float  # hosting per month / (30 x q)
    training: float  # training / (retrain_every_days x q)
    data_preparation: float  # data preparation / (retrain_every_days x q)
    total: float
    # vector DB / (30 q) + corpus embedding / (retrain_every_days x q) + query embedding; 0 without retrieval
    retrieval: float = 0.0
    passages: float = 0.0  # what the passages' extra prompt tokens cost, a part of `inference`


def all_in_cost(option: CostOption, queries_per_day: float) -> AllInCost:
    """The all-in cost per query of an option at a volume (more than 0 queries a day).

    >>> a = all_in_cost(CostOption("ft", 0.02, hosting_per_month=150, data_preparation_cost=3000), 500)
    >>> round(a.hosting, 4), round(a.data_preparation, 6), round(a.total, 6)  # 150/15000, 3000/(91 x 500)
    (0.01, 0.065934, 0.095934)
    """
    _check("queries per day", queries_per_day, "all-in cost")
    if queries_per_day <= 0:
        raise TunewiseError(
            "all-in cost per query: the volume must be more than 0 queries/day",
            hint="fixed costs are shared by the queries; give --queries-per-day N",
        )
    q = queries_per_day
    hosting = option.hosting_per_month / (DAYS_PER_MONTH * q)
    training = option.training_cost / (option.retrain_every_days * q)
    data = option.data_preparation_cost / (option.retrain_every_days * q)
    retrieval = (
        option.vector_db_per_month / (DAYS_PER_MONTH * q)
        + option.corpus_embedding_cost / (option.retrain_every_days * q)
        + option.embedding_per_query
    )
    return AllInCost(
        option=option.name,
        queries_per_day=q,
        inference=round(option.per_query - option.embedding_per_query, 12),
        hosting=round(hosting, 12),
        training=round(training, 12),
        data_preparation=round(data, 12),
        total=round(
            option.per_query - option.embedding_per_query + hosting + training + data + retrieval, 12
        ),
        retrieval=round(retrieval, 12),
        passages=round(option.passage_cost, 12),
    )


@dataclass(frozen=True)
class Payback:
    """Months for the option with the larger one-off costs to pay them back from its monthly saving."""

    invest: str  # the option with the larger one-off cost
    baseline: str
    queries_per_day: float
    one_off: float  # extra one-off dollars (training + data preparation)
    saving_per_month: float  # running cost saved a month (usage + hosting), may be <= 0
    months: float | None  # None: no saving, never pays back
    formula: str


def payback(a: CostOption, b: CostOption, queries_per_day: float) -> Payback | None:
    """How many months the one-off costs (training + data preparation) take to pay back; None when the two
    options have the same one-off cost.

    >>> p = payback(CostOption("prompted", 0.08), CostOption("ft", 0.02, hosting_per_month=150,
    ...             training_cost=150, data_preparation_cost=3000), 500)
    >>> p.saving_per_month, round(p.months, 3)  # 1200 - (300 + 150) = 750 a month; 3150 / 750
    (750.0, 4.2)
    """
    if a.one_off == b.one_off:
        return None
    invest, base = (a, b) if a.one_off > b.one_off else (b, a)
    extra = invest.one_off - base.one_off
    saving = base.running_per_month(queries_per_day) - invest.running_per_month(queries_per_day)
    formula = (
        f"months = (training + data preparation{' + corpus embedding' if invest.corpus_embedding_cost else ''}) / monthly saving = {_money(extra)} / "
        f"({_money(base.running_per_month(queries_per_day))} - {_money(invest.running_per_month(queries_per_day))})"
    )
    if saving <= 0:
        return Payback(
            invest.name, base.name, queries_per_day, round(extra, 6), round(saving, 6), None,
            formula + f" : no saving at {queries_per_day:,.0f} queries/day, never pays back",
        )  # fmt: skip
    months = extra / saving
    return Payback(
        invest.name, base.name, queries_per_day, round(extra, 6), round(saving, 6), round(months, 9),
        formula + f" = {months:,.1f} months",
    )  # fmt: skip


@dataclass(frozen=True)
class MonthlyCost:
    option: str
    queries_per_day: float
    per_query: float
    usage: float  # per_query x queries x 30
    hosting: float
    training: float  # amortized
    total: float
    retrieval: float = 0.0  # vector database + corpus embedding amortized


def monthly_cost(option: CostOption, queries_per_day: float) -> MonthlyCost:
    """The monthly bill of an option at a volume.

    >>> monthly_cost(CostOption("prompted", 0.08), 500).total
    1200.0
    >>> monthly_cost(CostOption("fine-tuned", 0.02, hosting_per_month=1224.0), 500).total
    1524.0
    """
    _check("queries per day", queries_per_day, "monthly cost")
    usage = option.per_query * queries_per_day * DAYS_PER_MONTH
    total = usage + option.fixed_per_month
    return MonthlyCost(
        option=option.name,
        queries_per_day=queries_per_day,
        per_query=option.per_query,
        usage=round(usage, 6),
        hosting=round(option.hosting_per_month, 6),
        training=round(option.training_per_month, 6),
        total=round(total, 6),
        retrieval=round(option.retrieval_per_month, 6),
    )


@dataclass
class BreakEven:
    a: str
    b: str
    volume: float | None  # queries/day where the two bills are equal; None when the lines never cross
    formula: str  # the arithmetic, with the numbers
    summary: str  # which option is cheaper on which side
    cheaper_below: str | None = None
    cheaper_above: str | None = None
    notes: list[str] = field(default_factory=list)
    # The same crossing with data preparation amortised too (all-in), and the payback of the one-off costs.
    all_in_volume: float | None = None
    payback: Payback | None = None


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _rate(x: float) -> str:
    return f"{x:.4f}".rstrip("0").rstrip(".") if x else "0"


def break_even(a: CostOption, b: CostOption) -> BreakEven:
    """Where options A and B cost the same per month; symmetric in A and B.

    >>> be = break_even(CostOption("prompted", 0.08), CostOption("fine-tuned", 0.02, hosting_per_month=1224.0))
    >>> round(be.volume, 6), be.cheaper_below, be.cheaper_above
    (680.0, 'prompted', 'fine-tuned')
    >>> break_even(CostOption("x", 0.02, hosting_per_month=150), CostOption("y", 0.02, hosting_per_month=1224)).volume is None
    True
    """
    fa, fb = a.fixed_per_month, b.fixed_per_month
    dq = a.per_query - b.per_query
    formula = (
        f"q = (fixed_B - fixed_A) / (30 x (per_query_A - per_query_B)) = ({_money(fb)} - {_money(fa)}) / "
        f"(30 x ({_rate(a.per_query)} - {_rate(b.per_query)}))"
    )
    if dq == 0:
        if fa == fb:
            return BreakEven(
                a.name,
                b.name,
                None,
                formula + " : identical lines",
                f"{a.name} and {b.name} cost the same at every volume",
            )
        cheap, dear = (a, b) if fa < fb else (b, a)
        return BreakEven(
            a.name,
            b.name,
            None,
            formula + " : no crossing (same cost per query)",
            f"{cheap.name} is cheaper at every volume (same cost per query, {_money(abs(fa - fb))}/month less fixed cost)",
            cheaper_below=cheap.name,
            cheaper_above=cheap.name,
        )
    q = (fb - fa) / (DAYS_PER_MONTH * dq)
    # The option with the smaller fixed cost wins at low volume, the one with the smaller per-query cost above q.
    low_fixed, low_rate = (a, b) if fa < fb else (b, a)
    if q <= 0:
        # The cheaper-per-query option has no higher fixed cost: it is never more expensive for q >= 0.
        winner = a if a.per_query < b.per_query else b
        return BreakEven(
            a.name,
            b.name,
            None,
            formula + f" = {q:,.1f} : no crossing at a positive volume",
            f"{winner.name} is cheaper (or equal) at every volume",
            cheaper_below=winner.name,
            cheaper_above=winner.name,
        )
    return BreakEven(
        a.name,
        b.name,
        round(q, 9),
        formula + f" = {q:,.1f} queries/day",
        f"below {q:,.1f} queries/day {low_fixed.name} is cheaper; above it, {low_rate.name}",
        cheaper_below=low_fixed.name,
        cheaper_above=low_rate.name,
    )


def guide_notes(a: CostOption, b: CostOption, be: BreakEven) -> list[str]:
    """When A and B are the guide's worked example, say how its rounded break-even compares with the arithmetic."""
    g = GUIDE_EXAMPLE
    pair = {round(a.per_query, 9), round(b.per_query, 9)}
    if pair != {g["prompted_per_query"], g["tuned_per_query"]} or be.volume is None:
        return []
    notes = []
    for platform, hosting in g["hosting_per_month"].items():
        tuned = a if a.per_query == g["tuned_per_query"] else b
        if math.isclose(tuned.hosting_per_month, hosting) and tuned.training_per_month == 0:
            notes.append(
                f"the practitioner's guide (docs/guide.md) says {platform} breaks even at {g['guide_says'][platform]} queries/day; its own figures "
                f"give {_money(hosting)} / (30 x (0.08 - 0.02)) = {be.volume:,.1f} queries/day"
            )
    return notes


def cheapest(options: Sequence[CostOption], queries_per_day: float) -> MonthlyCost:
    """The option with the lowest monthly bill at a volume (ties: the first given).

    >>> cheapest([CostOption("a", 0.08), CostOption("b", 0.02, hosting_per_month=150)], 500).option
    'b'
    """
    if not options:
        raise TunewiseError(
            "no cost options to compare", hint="give per-query costs or platforms with known prices"
        )
    return min((monthly_cost(o, queries_per_day) for o in options), key=lambda m: m.total)


def default_volumes(
    options: Sequence[CostOption], queries_per_day: float = 0.0, points: int = 101
) -> list[float]:
    """Sweep volumes from 0 to past every break-even point and the stated volume.

    >>> default_volumes([CostOption("a", 0.08), CostOption("b", 0.02, hosting_per_month=1224)], 500, points=3)
    [0.0, 680.0, 1360.0]
    """
    marks = [queries_per_day]
    for i, a in enumerate(options):
        for b in options[i + 1 :]:
            v = break_even(a, b).volume
            if v is not None:
                marks.append(v)
    top = max(2.0 * max(marks), 100.0)
    return [round(top * i / (points - 1), 6) for i in range(points)]


def sweep(options: Sequence[CostOption], volumes: Iterable[float]) -> list[dict[str, float]]:
    """Monthly totals of every option at every volume: rows of {queries_per_day, <option>: total}.

    >>> sweep([CostOption("a", 0.08)], [0, 100])
    [{'queries_per_day': 0.0, 'a': 0.0}, {'queries_per_day': 100.0, 'a': 240.0}]
    """
    rows = []
    for q in volumes:
        row = {"queries_per_day": float(q)}
        for o in options:
            row[o.name] = monthly_cost(o, q).total
        rows.append(row)
    return rows


def break_even_all_in(a: CostOption, b: CostOption) -> float | None:
    """The break-even volume with data preparation amortised like training (the all-in bills cross).

    >>> break_even_all_in(CostOption("p", 0.08), CostOption("ft", 0.02, hosting_per_month=1224,
    ...                   data_preparation_cost=3000, retrain_every_days=100))  # (1224 + 900) / 1.8
    1180.0
    """
    from dataclasses import replace

    def folded(o: CostOption) -> CostOption:
        return replace(o, training_cost=o.one_off, data_preparation_cost=0.0, corpus_embedding_cost=0.0)

    return break_even(folded(a), folded(b)).volume


__all__ = [
    "AllInCost",
    "BreakEven",
    "Payback",
    "all_in_cost",
    "break_even_all_in",
    "payback",
    "CostOption",
    "DAYS_PER_MONTH",
    "DEFAULT_PLATFORMS",
    "GUIDE_EXAMPLE",
    "MonthlyCost",
    "RETRAIN_EVERY_DAYS",
    "break_even",
    "cheapest",
    "default_volumes",
    "guide_notes",
    "hosting_per_month",
    "monthly_cost",
    "per_query_cost",
    "sweep",
    "training_cost",
]
