"""How much data is enough: the learning curve's subsets, and what the curve says.

The pipeline's `curve` stage (pipeline/run.py) trains the fine-tuned arm on nested fractions of the training
split and evaluates each on the same held-out set; this module holds the pure parts:

    nested_order(labels, seed)        an order of the examples whose every prefix is stratified by label
    nested_subsets(examples, ...)     the fractions' subsets: each contains the smaller ones
    read_curve(curve, cost)           the slope of the last step, whether its gain is beyond the noise, and the
                                      marginal cost of 100 more labelled examples, in plain words
    learning_curve_advice(curve, ...) the verdict's "what to fix first" when the curve can tell

The guide: returns flatten, and 200-500 examples is often enough. A curve still rising beyond the noise says
that more labelled examples are likely to pay; a flat one says the next dollar belongs elsewhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from tunewise.outputs import Interval, LearningCurve

# --- the nested, stratified subsets ----------------------------------------------------------------------------


def nested_order(labels: Sequence[Hashable], seed: int) -> list[int]:
    """Indices of the examples in an order whose every prefix holds each label within one example of its share.

    Within a label the order is a seeded shuffle; across labels it is Tijdeman's solution of the chairman
    assignment problem: at step m, among the labels not ahead of their share by more than d = 1/(2(L-1)),
    take the one whose share runs out first. Every prefix of m examples then holds c_l examples of label l with
    |c_l - m n_l / n| <= 1 - d < 1 (Tijdeman 1980). Taking the most-behind label instead breaks the bound when
    there are many labels of unequal size.

    >>> order = nested_order(["a", "a", "b", "b", "b", "b"], seed=0)
    >>> sorted(order) == list(range(6)), [["a", "a", "b", "b", "b", "b"][i] for i in order]
    (True, ['b', 'a', 'b', 'b', 'a', 'b'])
    """
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    rng = random.Random(seed)
    keys = sorted(groups, key=str)  # a fixed label order: the same seed gives the same subsets
    for key in keys:
        rng.shuffle(groups[key])
    n, n_labels = len(labels), len(keys)
    sizes = [len(groups[k]) for k in keys]
    taken = [0] * n_labels
    # Exact integers: shares are compared as m * n_l * 2(L-1) against counts * n * 2(L-1), so ties are exact.
    scale = 2 * (n_labels - 1) if n_labels > 1 else 1
    slack = n if n_labels > 1 else 0  # d * n * scale
    order: list[int] = []
    for m in range(1, n + 1):
        eligible = [
            j
            for j in range(n_labels)
            if taken[j] < sizes[j] and (m * sizes[j] - taken[j] * n) * scale >= slack
        ]
        # The deadline of label j: the step at which it falls behind its share by 1 - d, (c + 1 - d) n / n_j.
        pick = min(
            eligible,
            key=lambda j: (Fraction((taken[j] + 1) * scale - (1 if n_labels > 1 else 0), sizes[j]), j),
        )
        order.append(groups[keys[pick]][taken[pick]])
        taken[pick] += 1
    return order


def subset_size(fraction: float, n: int) -> int:
    """Examples in a fraction of n: rounded half up, at least one.

    >>> subset_size(0.25, 270), subset_size(0.5, 270), subset_size(1.0, 270), subset_size(0.001, 50)
    (68, 135, 270, 1)
    """
    return max(1, min(n, math.floor(fraction * n + 0.5)))


def nested_subsets(
    examples: Sequence[dict[str, Any]],
    fractions: Sequence[float],
    seed: int,
    label_of: Any = None,
) -> list[list[dict[str, Any]]]:
    """The subsets of `examples` for each fraction: the first `subset_size(f, n)` examples of one `nested_order`,
    so each subset contains every smaller one. `label_of(example)` stratifies by label (label contracts); without
    it the order is a seeded shuffle.

    >>> rows = [{"y": y} for y in "aabbbbbbbb"]
    >>> [[r["y"] for r in s] for s in nested_subsets(rows, [0.5, 1.0], seed=1, label_of=lambda r: r["y"])][0]
    ['b', 'b', 'a', 'b', 'b']
    """
    labels = [label_of(ex) if label_of else 0 for ex in examples]
    order = nested_order(labels, seed)
    return [[examples[i] for i in order[: subset_size(f, len(examples))]] for f in fractions]


def paired_gain(previous: Sequence[bool], current: Sequence[bool], seed: int = 0) -> tuple[Interval, float]:
    """Accuracy of `current` minus `previous` on the same held-out examples: paired bootstrap 95% interval and
    the exact McNemar p-value (`evaluate.stats`)."""
    from tunewise.evaluate.stats import bootstrap_paired_difference, mcnemar_exact

    iv = bootstrap_paired_difference([float(c) for c in current], [float(p) for p in previous], seed=seed)
    return Interval(value=iv.value, low=iv.low, high=iv.high), mcnemar_exact(current, previous)


# --- reading the curve -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurveReading:
    """What the last step of a learning curve says (see `read_curve`)."""

    trend: str  # rising | flat | falling | single point
    examples: tuple[int, int] | None  # the last two points' training examples
    gain: Interval | None  # the last step's accuracy gain, paired, with its 95% interval
    slope_per_100: float | None  # accuracy points per 100 more examples over the last step
    gain_per_doubling: float | None  # accuracy points per doubling of the examples over the last step
    cost_per_100: float | None  # data_preparation_cost / training examples x 100
    sentences: tuple[str, ...]


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _usd(x: float) -> str:
    return f"${x:,.0f}" if x >= 100 else f"${x:,.2f}"


def _gain_of(curve: LearningCurve) -> Interval | None:
    """The last step's gain: paired when recorded, else the plain difference (no interval)."""
    a, b = curve.points[-2], curve.points[-1]
    if b.gain is not None:
        return b.gain
    return Interval(value=b.accuracy.value - a.accuracy.value)


def read_curve(curve: LearningCurve, data_preparation_cost: float | None = None) -> CurveReading:
    """The last step of the curve in plain words: its slope, whether its gain is beyond the noise (the paired 95%
    interval excludes zero), and the marginal cost of the next 100 labelled examples from the data preparation
    cost.

    >>> from tunewise.outputs import CurvePoint
    >>> pts = [CurvePoint(fraction=0.5, examples=100, accuracy=Interval(value=0.6, low=0.5, high=0.7)),
    ...        CurvePoint(fraction=1.0, examples=200, accuracy=Interval(value=0.7, low=0.6, high=0.8),
    ...                   gain=Interval(value=0.1, low=0.04, high=0.16))]
    >>> r = read_curve(LearningCurve(arm="fine-tuned", held_out=100, training_examples=200, points=pts), 3000)
    >>> r.trend, round(r.slope_per_100, 3), r.cost_per_100
    ('rising', 0.1, 1500.0)
    >>> r.sentences[0]
    'From 100 to 200 training examples accuracy rose from 60.0% to 70.0% (+10.0 points, +10.0 points per 100 examples).'
    """
    cost = None
    if data_preparation_cost is not None and curve.training_examples:
        cost = data_preparation_cost / curve.training_examples * 100
    cost_line = (
        f"The next 100 labelled examples cost about {_usd(cost)} (economics.data_preparation_cost "
        f"{_usd(data_preparation_cost or 0)} over the {curve.training_examples:,} training examples)."
        if cost is not None
        else ""
    )
    if len(curve.points) < 2:
        only = curve.points[-1]
        lines = [
            f"One point only ({only.examples:,} examples, {only.accuracy.value:.1%}): a curve needs two fractions "
            "to say whether more data pays, e.g. evaluation.learning_curve: [0.25, 0.5, 1.0]."
        ]
        return CurveReading(
            "single point", None, None, None, None, cost, tuple(x for x in [*lines, cost_line] if x)
        )
    a, b = curve.points[-2], curve.points[-1]
    gain = _gain_of(curve)
    assert gain is not None
    slope = gain.value / (b.examples - a.examples) * 100
    doubling = gain.value / math.log2(b.examples / a.examples)
    if gain.low is not None and gain.high is not None and gain.low > 0:
        trend = "rising"
    elif gain.low is not None and gain.high is not None and gain.high < 0:
        trend = "falling"
    else:
        trend = "flat"
    verb = "rose" if gain.value > 0 else "fell" if gain.value < 0 else "stayed"
    first = (
        f"From {a.examples:,} to {b.examples:,} training examples accuracy {verb} from {a.accuracy.value:.1%} "
        f"to {b.accuracy.value:.1%} ({_pts(gain.value)} points, {_pts(slope)} points per 100 examples)."
    )
    if gain.low is None or gain.high is None:
        noise = "No paired interval was recorded for this step, so whether it is beyond the noise is unknown."
    elif trend == "rising":
        noise = (
            f"The gain is beyond the noise (paired 95% interval [{_pts(gain.low)}, {_pts(gain.high)}] points): "
            "the curve is still rising, so more labelled data is likely to pay."
        )
    elif trend == "falling":
        noise = (
            f"The drop is beyond the noise (paired 95% interval [{_pts(gain.low)}, {_pts(gain.high)}] points): "
            "the added examples hurt; check their labels before adding more."
        )
    else:
        noise = (
            f"The change is within the noise (paired 95% interval [{_pts(gain.low)}, {_pts(gain.high)}] points): "
            "the curve is flat at this size, so more data of the same kind is unlikely to pay much."
        )
    lines = [first, noise, cost_line]
    return CurveReading(
        trend, (a.examples, b.examples), gain, slope, doubling, cost, tuple(x for x in lines if x)
    )


def _round_examples(n: float) -> int:
    """Two significant figures, at least 10: an extrapolation is no more precise than that.

    >>> _round_examples(287.4), _round_examples(1234), _round_examples(3)
    (290, 1200, 10)
    """
    if n <= 10:
        return 10
    digits = int(math.floor(math.log10(n))) - 1
    return int(round(n, -digits))


# Beyond 8x the examples an extrapolation of one step says little: the guide's returns flatten before then.
MAX_DOUBLINGS = 3


def learning_curve_advice(
    curve: LearningCurve | None,
    data_preparation_cost: float | None,
    accuracy_bar: float,
    then: str,
) -> str | None:
    """What to fix first, from the learning curve, for an arm whose accuracy is under `accuracy_bar`; None when
    there is no curve, it has one point, or its last point already meets the bar. `then` is the fix the verdict
    would give without a curve; a flat curve ends with it.

    The examples needed extrapolate the last step per doubling of the data (accuracy grows about linearly in the
    logarithm of the examples while returns flatten): doublings = (bar - accuracy) / gain per doubling.

    >>> from tunewise.outputs import CurvePoint
    >>> def curve(a, b, low, high):
    ...     return LearningCurve(arm="fine-tuned", held_out=100, training_examples=300, points=[
    ...         CurvePoint(fraction=0.5, examples=150, accuracy=Interval(value=a)),
    ...         CurvePoint(fraction=1.0, examples=300, accuracy=Interval(value=b), gain=Interval(value=b - a, low=low, high=high))])
    >>> learning_curve_advice(curve(0.70, 0.79, 0.03, 0.15), 3000, 0.85, "fix the data")
    'the learning curve is still rising (+9.0 points from 150 to 300 examples, beyond the noise): label about 180 more examples (~$1,800 at $1,000 per 100, from economics.data_preparation_cost) and retrain'
    >>> learning_curve_advice(curve(0.78, 0.79, -0.04, 0.06), 3000, 0.85, "fix the data")
    'the learning curve is flat (+1.0 points from 150 to 300 examples, within the noise): more data is unlikely to help; fix the data'
    """
    if curve is None or len(curve.points) < 2:
        return None
    last = curve.points[-1]
    if last.accuracy.value >= accuracy_bar:
        return None
    reading = read_curve(curve, data_preparation_cost)
    gain, (n_a, n_b) = reading.gain, reading.examples  # type: ignore[misc]
    assert gain is not None
    step = f"{_pts(gain.value)} points from {n_a:,} to {n_b:,} examples"
    if reading.trend == "falling":
        return (
            f"accuracy fell as examples were added ({step}, beyond the noise): check the labels of the training "
            f"data before adding more; {then}"
        )
    if reading.trend != "rising":
        within = "within the noise" if gain.low is not None else "no interval recorded"
        return f"the learning curve is flat ({step}, {within}): more data is unlikely to help; {then}"
    doublings = (accuracy_bar - last.accuracy.value) / reading.gain_per_doubling  # type: ignore[operator]
    more = _round_examples(n_b * (2**doublings - 1))
    price = ""
    if reading.cost_per_100 is not None:
        price = (
            f" (~{_usd(more / 100 * reading.cost_per_100)} at {_usd(reading.cost_per_100)} per 100, from "
            "economics.data_preparation_cost)"
        )
    rising = f"the learning curve is still rising ({step}, beyond the noise)"
    if doublings > MAX_DOUBLINGS:
        return (
            f"{rising}, but at this rate {accuracy_bar:.0%} needs about {more:,} more examples{price}, over "
            f"{2**MAX_DOUBLINGS}x the data: more data alone is a long way; {then}"
        )
    return f"{rising}: label about {more:,} more examples{price} and retrain"


def curve_label(example: dict[str, Any]) -> str:
    """The label an example is stratified by: its reference answer, stripped."""
    from tunewise.data.formats import completion

    return (completion(example["messages"]) or "").strip()


__all__ = [
    "MAX_DOUBLINGS",
    "CurveReading",
    "curve_label",
    "learning_curve_advice",
    "nested_order",
    "nested_subsets",
    "paired_gain",
    "read_curve",
    "subset_size",
]
