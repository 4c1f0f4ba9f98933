"""The retraining gate: a retrained candidate replaces the current model only when it is not significantly worse
on the old held-out set and significantly better on the new labelled sample.

Both models answer the same examples, so each comparison is paired: the 95% interval of (candidate - current)
accuracy comes from resampling the examples, each resample keeping both models' scores of an example together
(`evaluate.stats.bootstrap_paired_difference`). "Significantly worse" means the whole interval lies below
`-margin` (0 by default); "significantly better" means the whole interval lies above 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

RULE = (
    "promote when the candidate is not significantly worse on the old held-out set (the 95% paired interval "
    "of candidate - current is not entirely below {neg_margin}) and significantly better on the new labelled "
    "sample (the interval is entirely above 0)"
)


@dataclass
class Comparison:
    name: str
    n: int
    current: float
    candidate: float
    difference: float
    low: float
    high: float

    def line(self, verdict: str) -> str:
        return (
            f"{self.name} (n={self.n}): current {self.current:.1%}, candidate {self.candidate:.1%}, "
            f"difference {_points(self.difference)} [{_points(self.low)}, {_points(self.high)}] -> {verdict}"
        )


def _points(x: float) -> str:
    """A difference of accuracies in percentage points, signed.

    >>> _points(0.125), _points(-0.05), _points(0.0)
    ('+12.5 pts', '-5.0 pts', '+0.0 pts')
    """
    return f"{x * 100:+.1f} pts"


def compare(name: str, current: list[bool], candidate: list[bool], seed: int = 0) -> Comparison:
    from tunewise.evaluate.stats import bootstrap_paired_difference

    if len(current) != len(candidate) or not current:
        raise ValueError(f"{name}: the two models must be scored on the same, non-empty set of examples")
    iv = bootstrap_paired_difference([float(x) for x in candidate], [float(x) for x in current], seed=seed)
    return Comparison(
        name=name,
        n=len(current),
        current=sum(current) / len(current),
        candidate=sum(candidate) / len(candidate),
        difference=iv.value,
        low=iv.low,
        high=iv.high,
    )


@dataclass
class GateDecision:
    promote: bool
    old: Comparison
    new: Comparison
    margin: float
    why: str

    @property
    def rule(self) -> str:
        bound = f"{-self.margin * 100:.1f} points" if self.margin else "0"
        return RULE.format(neg_margin=bound)

    @property
    def not_worse(self) -> bool:
        return not self.old.high < -self.margin

    @property
    def better(self) -> bool:
        return self.new.low > 0

    def lines(self) -> list[str]:
        return [
            f"rule: {self.rule}",
            "  " + self.old.line("not significantly worse" if self.not_worse else "significantly worse"),
            "  " + self.new.line("significantly better" if self.better else "not significantly better"),
            f"decision: {'promote the candidate' if self.promote else 'keep the current model'} ({self.why})",
        ]

    def text(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "rule": self.rule,
            "margin": self.margin,
            "old": asdict(self.old),
            "new": asdict(self.new),
            "why": self.why,
        }


def decide(
    current_old: list[bool],
    candidate_old: list[bool],
    current_new: list[bool],
    candidate_new: list[bool],
    *,
    margin: float = 0.0,
    seed: int = 0,
) -> GateDecision:
    """The gate's decision from per-example correctness of both models on both sets.

    >>> d = decide([True] * 10, [True] * 10, [False] * 20, [True] * 20)
    >>> d.promote, d.why
    (True, 'not significantly worse on the old held-out set and better on the new labelled sample')
    """
    old = compare("old held-out set", current_old, candidate_old, seed)
    new = compare("new labelled sample", current_new, candidate_new, seed + 1)
    d = GateDecision(False, old, new, margin, "")
    if not d.not_worse:
        d.why = f"significantly worse on the old held-out set ({_points(old.difference)})"
    elif not d.better:
        d.why = (
            f"not significantly better on the new labelled sample ({_points(new.difference)}, "
            f"interval reaches {_points(new.low)})"
        )
    else:
        d.promote = True
        d.why = "not significantly worse on the old held-out set and better on the new labelled sample"
    return d
