"""The guide's platform and team rules: which platforms to leave out and which warnings to give, from the team
size, the stated volume, the platforms considered and the model to fine-tune.

Each rule is data (`PlatformRule`): an id, its condition in words and as thresholds, the guide's sentence quoted
exactly, when that sentence was true (the guide's sources were "accessed May 2026"), and the advice. A rule that
`closes` leaves the platforms it names out of the recommendation. `apply_rules` checks every rule against a
`Situation` and returns a `Finding` for each one that fires, and for each one that would fire but for a figure
nobody stated (no team size): that one is undecided, names the figure to state, and decides nothing.

    rule                      fires when                                          effect
    azure-small-team          azure-openai considered, team < 10, < 1,000/day     closes azure-openai
    openai-closed             openai considered                                   closes openai
    claude-no-fine-tuning     the model or a platform names Claude or Anthropic   closes it
    small-team                team < 25                                           warning
    low-volume                < 100 queries/day                                   warning
    hourly-hosting            a platform bills fine-tuned hosting by the hour,    warning, with hosting per query
                              < 1,000 queries/day
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunewise.economics.pricing import Catalog

AS_OF = "May 2026"  # the guide's sources: "accessed May 2026"
DAYS_PER_MONTH = 30  # as the economics stage bills hosting


@dataclass(frozen=True)
class PlatformRule:
    """One rule. Its thresholds all have to hold for it to fire (a strict "under": 10 people is not under 10)."""

    id: str
    condition: str  # the condition, in words
    source: str  # the guide's sentence, quoted exactly
    advice: str
    as_of: str = AS_OF
    closes: bool = False  # leave the platforms it names out of the recommendation
    platforms: tuple[str, ...] = ()  # concerns these platforms (the part of a catalog id before '/')
    names: str | None = None  # concerns the model or platforms whose name matches (a regex, any case)
    hourly_hosting: bool = False  # concerns the platforms that bill a fine-tuned model's hosting by the hour
    team_under: int | None = None
    volume_under: float | None = None


RULES: tuple[PlatformRule, ...] = (
    PlatformRule(
        id="azure-small-team",
        condition="Azure OpenAI considered, a team under 10 people and under 1,000 queries per day",
        source="Avoid Azure if your team is under 10 people and the fine-tuned model will handle fewer than "
        "1,000 queries per day. The hosting economics do not justify the spend at low volume.",
        advice="leave Azure OpenAI out: its deployment is billed by the hour whether used or not; price a "
        "platform that bills no idle deployment (the guide: Vertex lists no separate hosting fee for tuned models)",
        closes=True,
        platforms=("azure-openai",),
        team_under=10,
        volume_under=1000,
    ),
    PlatformRule(
        id="openai-closed",
        condition="OpenAI considered for fine-tuning",
        source="OpenAI documentation still describes supervised fine-tuning, but OpenAI’s pricing page indicates "
        "its fine-tuning platform is being wound down and is no longer accessible to new users (OpenAI pricing "
        "page, accessed May 2026).",
        advice="leave OpenAI out unless you already have access: verify availability with OpenAI before "
        "planning around it, or fine-tune GPT-4o-mini on azure-openai",
        closes=True,
        platforms=("openai",),
    ),
    PlatformRule(
        id="claude-no-fine-tuning",
        condition="the model to fine-tune, or a platform, is Anthropic's Claude",
        source="Anthropic does not currently offer public fine-tuning for Claude models. For Claude, prompt "
        "engineering and RAG remain the primary customization paths.",
        advice="Claude cannot be the fine-tuned model: keep it as a prompted arm (an endpoint), and fine-tune "
        "an open-weight model if the measurements call for it",
        closes=True,
        names=r"claude|anthropic",
    ),
    PlatformRule(
        id="small-team",
        condition="a team under 25 people",
        source="Does that justify $2,000+ in training data preparation and monthly hosting fees for teams under "
        "25 people? Based on public pricing, for most teams, not yet.",
        advice="count the data preparation (economics.data_preparation_cost) and the monthly hosting in the "
        "cost, and fine-tune only for a measured gain the prompt cannot reach",
        team_under=25,
    ),
    PlatformRule(
        id="low-volume",
        condition="under 100 queries per day",
        source="No, if your volume is under 100 queries daily. At low volume, the hosting cost per query exceeds "
        "what a long system prompt would cost.",
        advice="keep prompting unless quality demands fine-tuning: a fine-tuned model's hosting costs more per "
        "query than a long prompt at this volume",
        volume_under=100,
    ),
    PlatformRule(
        id="hourly-hosting",
        condition="a platform bills the fine-tuned model's hosting by the hour, under 1,000 queries per day",
        source="Your team generates enough volume (1,000+ queries per day) to justify hosting costs",
        advice="hosting dominates the bill below 1,000 queries per day: prefer a platform without an hourly "
        "fee, or serve more traffic from the same deployment",
        hourly_hosting=True,
        volume_under=1000,
    ),
)


@dataclass(frozen=True)
class Situation:
    """What the rules look at. `hourly` holds the hosting $/hour of each considered platform that bills a
    fine-tuned model's hosting by the hour (`hourly_hosting` reads it from the pricing catalog)."""

    team_size: int | None = None
    queries_per_day: float | None = None
    platforms: tuple[str, ...] = ()
    model: str | None = None
    hourly: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """A rule that fires (`fires` True) or would fire but for a figure nobody stated (`fires` None)."""

    rule: str
    fires: bool | None
    detail: str  # the numbers that made it fire, or the figure to state
    advice: str
    source: str
    as_of: str
    closes: tuple[str, ...] = ()  # the platforms (as the situation named them) it leaves out

    @property
    def text(self) -> str:
        """'<detail>: <advice>. From the guide: "<source>" (true as of May 2026)'."""
        head = f"{self.detail}: {self.advice}" if self.fires else self.detail
        return f'{head}. From the guide: "{self.source}" (true as of {self.as_of})'

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"closes": list(self.closes), "text": self.text}


def _platform(name: str) -> str:
    return name.partition("/")[0].strip().lower()


def _concerned(rule: PlatformRule, situation: Situation) -> list[str]:
    """The situation's platforms (and model) the rule concerns; [] when it concerns none of them."""
    if rule.platforms:
        return [p for p in situation.platforms if _platform(p) in rule.platforms]
    if rule.names:
        named = [*situation.platforms, *([situation.model] if situation.model else [])]
        return [n for n in named if re.search(rule.names, n, re.IGNORECASE)]
    if rule.hourly_hosting:
        return [p for p in situation.platforms if situation.hourly.get(p, 0) > 0]
    return []


def _check(rule: PlatformRule, s: Situation) -> Finding | None:
    concerned = _concerned(rule, s)
    if (rule.platforms or rule.names or rule.hourly_hosting) and not concerned:
        return None
    facts: list[str] = []
    if concerned:
        facts.append(", ".join(concerned))
    if rule.volume_under is not None:
        if s.queries_per_day is None or s.queries_per_day >= rule.volume_under:
            return None
        facts.append(f"{s.queries_per_day:,.0f} queries/day (under {rule.volume_under:,.0f})")
    undecided = None
    if rule.team_under is not None:
        if s.team_size is None:
            undecided = "team size not stated (economics.team_size, or advise --team-size)"
        elif s.team_size >= rule.team_under:
            return None
        else:
            facts.append(f"a team of {s.team_size} (under {rule.team_under})")
    if rule.hourly_hosting and s.queries_per_day:
        q = s.queries_per_day
        facts += [
            f"{p} ${s.hourly[p]:,.2f}/hour = ${s.hourly[p] * 24 * DAYS_PER_MONTH:,.0f}/month, "
            f"${s.hourly[p] * 24 / q:,.2f} of hosting per query"
            for p in concerned
        ]
        facts.pop(0)  # the hosting figures name the platforms already
    if undecided is not None:
        return Finding(
            rule.id,
            None,
            f"{rule.id} undecided: {'; '.join(facts + [undecided])}",
            rule.advice,
            rule.source,
            rule.as_of,
        )
    closes = tuple(p for p in concerned if p in s.platforms) if rule.closes else ()
    if rule.closes and rule.names and s.model in concerned:
        closes += (s.model,)  # type: ignore[operator]
    detail = f"{rule.id}: " + ("; ".join(facts) if facts else rule.condition)
    return Finding(rule.id, True, detail, rule.advice, rule.source, rule.as_of, closes)


def apply_rules(situation: Situation, rules: Sequence[PlatformRule] = RULES) -> list[Finding]:
    """The findings of every rule that fires or is undecided, in the rules' order.

    >>> [f.rule for f in apply_rules(Situation(team_size=6, queries_per_day=500, platforms=("azure-openai",)))]
    ['azure-small-team', 'small-team']
    >>> [f.rule for f in apply_rules(Situation(team_size=10, queries_per_day=1000, platforms=("azure-openai",)))]
    ['small-team']
    """
    return [f for rule in rules if (f := _check(rule, situation)) is not None]


def closed_platforms(findings: Sequence[Finding]) -> dict[str, str]:
    """Each platform (or model) a finding closes, with the rule that closed it."""
    closed: dict[str, str] = {}
    for f in findings:
        if f.fires:
            for p in f.closes:
                closed.setdefault(p, f.rule)
    return closed


def hourly_hosting(platforms: Sequence[str], catalog: Catalog) -> dict[str, float]:
    """The $/hour each platform's catalog entry bills for hosting a fine-tuned model, where it bills by the hour
    (a known, non-zero `hosting_per_hour` that only the fine-tuned model pays). Unknown platforms are left out:
    the cost stage names them."""
    from tunewise.errors import TunewiseError

    hourly = {}
    for p in platforms:
        try:
            entry = catalog.get(p)
        except TunewiseError:
            continue
        rate = entry.hosting_per_hour
        if entry.hosting_applies_to == "fine-tuned" and rate.known and (rate.value or 0) > 0:
            hourly[p] = float(rate.value)  # type: ignore[arg-type]
    return hourly


__all__ = [
    "AS_OF",
    "RULES",
    "Finding",
    "PlatformRule",
    "Situation",
    "apply_rules",
    "closed_platforms",
    "hourly_hosting",
]
