"""The report's plots, drawn from the state dict and returned as `data:` URIs of SVG images.

SVG keeps the plots sharp at any zoom; embedding them as `<img src="data:image/svg+xml;base64,...">` keeps the
page self-contained and means nothing inside a plot (an arm name is user text) can run as script: browsers do
not execute scripts in images. matplotlib is imported inside each function (Agg backend) so that importing the
report package stays light, and a missing matplotlib costs the plots, not the report.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tunewise.economics.cost import (
    DAYS_PER_MONTH,
    RETRAIN_EVERY_DAYS,
    CostOption,
    break_even,
    default_volumes,
    monthly_cost,
)
from tunewise.errors import TunewiseError

# One colour per arm kind family, so the same arm has the same colour in every plot: prompted arms in blues and
# greys, fine-tuned arms in warm colours (the thing under test stands out).
PROMPTED_COLOURS = ["#4c72b0", "#64b5cd", "#8c8c8c", "#55a868", "#8172b3", "#937860"]
TUNED_COLOURS = ["#dd8452", "#c44e52", "#da8bc3", "#ccb974"]
LINE_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _pyplot():
    """matplotlib.pyplot on the Agg backend, with settings that make SVG output small and reproducible."""
    try:
        import matplotlib
    except ImportError:
        raise TunewiseError(
            "plots need matplotlib",
            hint="pip install 'tunewise[report]'; the report is written without plots",
        ) from None
    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "tunewise",  # stable element ids: the same state gives the same file
            "svg.fonttype": "path",  # glyphs as paths: no font needs to be installed where the page is viewed
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
        }
    )
    return plt


def _to_data_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})  # no timestamp: reproducible bytes
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _num(x: Any) -> float | None:
    """A finite float, or None for anything missing or not a number (state sections are loosely typed)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def arm_colours(arms: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """A colour per arm name: fine-tuned arms from the warm list, the others from the cool list.

    >>> arm_colours([{"name": "zero-shot", "kind": "prompted"}, {"name": "ft", "kind": "fine-tuned"}])
    {'zero-shot': '#4c72b0', 'ft': '#dd8452'}
    """
    colours: dict[str, str] = {}
    counts = {"tuned": 0, "other": 0}
    for arm in arms:
        family = "tuned" if arm.get("kind") == "fine-tuned" else "other"
        palette = TUNED_COLOURS if family == "tuned" else PROMPTED_COLOURS
        colours[str(arm.get("name"))] = palette[counts[family] % len(palette)]
        counts[family] += 1
    return colours


def training_curves(metrics: Sequence[Mapping[str, Any]]) -> str | None:
    """Train and validation loss against step; None when no step has a loss."""
    # The trainer logs `loss` per step; the report state may call it `train_loss`.
    train = [(m.get("step"), m.get("train_loss", m.get("loss"))) for m in metrics]
    train = [(float(s), float(v)) for s, v in train if _num(s) is not None and _num(v) is not None]
    held = [(m.get("step"), m.get("eval_loss")) for m in metrics]
    held = [(float(s), float(v)) for s, v in held if _num(s) is not None and _num(v) is not None]
    if not train and not held:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.4))
    try:
        if train:
            ax.plot(*zip(*train, strict=True), color="#4c72b0", linewidth=1.4, label="train loss")
        if held:
            # Validation loss is measured at a few steps only: markers show where the measurements are.
            ax.plot(
                *zip(*held, strict=True),
                color="#dd8452",
                linewidth=1.6,
                marker="o",
                markersize=4,
                label="validation loss",
            )
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(frameon=False)
        fig.tight_layout()
        return _to_data_uri(fig)
    finally:
        plt.close(fig)


def quality_vs_cost(arms: Sequence[Mapping[str, Any]], accuracy_bar: float) -> str | None:
    """Accuracy (with its 95% interval) against cost per query, one point per arm; None when no arm has both."""
    points = []
    for arm in arms:
        acc = arm.get("accuracy") or {}
        value, cost = _num(acc.get("value")), _num(arm.get("cost_per_query"))
        if value is None or cost is None:
            continue
        low, high = _num(acc.get("low")), _num(acc.get("high"))
        points.append(
            (
                str(arm.get("name")),
                cost,
                value,
                low if low is not None else value,
                high if high is not None else value,
            )
        )
    if not points:
        return None
    colours = arm_colours(arms)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    try:
        for name, cost, value, low, high in points:
            ax.errorbar(
                [cost],
                [100 * value],
                yerr=[[100 * (value - low)], [100 * (high - value)]],
                fmt="o",
                color=colours.get(name, "#333333"),
                markersize=7,
                capsize=4,
                linewidth=1.4,
                label=name,
            )
        ax.axhline(100 * accuracy_bar, color="#2e7d32", linestyle="--", linewidth=1)
        ax.annotate(
            f"accuracy bar {100 * accuracy_bar:.0f}%",
            # Right-aligned: cheap arms sit at the left edge, where a label would cover their point.
            xy=(1, 100 * accuracy_bar),
            xycoords=("axes fraction", "data"),
            xytext=(-4, 3),
            textcoords="offset points",
            ha="right",
            color="#2e7d32",
            fontsize=8,
        )
        costs = [p[1] for p in points]
        span = max(costs) - min(costs)
        pad = span * 0.15 if span > 0 else max(max(costs) * 0.2, 1e-6)
        ax.set_xlim(max(0.0, min(costs) - pad), max(costs) + pad)
        ax.set_ylim(0, 105)
        ax.set_xlabel("cost per query (USD)")
        ax.set_ylabel("task accuracy (%), 95% interval")
        ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.legend(frameon=False, fontsize=8, loc="lower right")
        fig.tight_layout()
        return _to_data_uri(fig)
    finally:
        plt.close(fig)


def cost_options(options: Sequence[Mapping[str, Any]]) -> list[CostOption]:
    """The state's cost options as `CostOption`s, so the report plots the same straight lines economics priced.

    A state option carries its amortized training per month; it becomes a training cost paid every
    RETRAIN_EVERY_DAYS, which gives back the same monthly figure.

    >>> o = cost_options([{"name": "ft", "per_query": 0.02, "hosting_per_month": 150, "training_per_month": 3}])[0]
    >>> round(o.fixed_per_month, 6)
    153.0
    """
    out = []
    for raw in options:
        per_query = _num(raw.get("per_query"))
        if per_query is None:
            raise TunewiseError(f"cost option {raw.get('name')!r} has no per-query cost")
        hosting = _num(raw.get("hosting_per_month")) or 0.0
        training_month = _num(raw.get("training_per_month"))
        if training_month is None and _num(raw.get("fixed_per_month")) is not None:
            training_month = float(raw["fixed_per_month"]) - hosting
        out.append(
            CostOption(
                name=str(raw.get("name")),
                per_query=per_query,
                hosting_per_month=hosting,
                training_cost=(training_month or 0.0) * RETRAIN_EVERY_DAYS / DAYS_PER_MONTH,
                retrain_every_days=RETRAIN_EVERY_DAYS,
            )
        )
    return out


def monthly_cost_sweep(
    options: Sequence[Mapping[str, Any]],
    queries_per_day: float | None,
    break_evens: Sequence[Mapping[str, Any]] | None = None,
) -> str | None:
    """Monthly cost against queries/day, one line per option, break-even points marked; None without options.

    Each option is the line total(q) = per_query x q x 30 + hosting + training per month. Break-even points come
    from the state when it lists them (what the economics stage computed), else from `cost.break_even`.
    """
    opts = cost_options(options)
    if not opts:
        return None
    volumes = default_volumes(opts, queries_per_day or 0.0)
    by_name = {o.name: o for o in opts}
    marks: list[tuple[float, str, str]] = []
    if break_evens is not None:
        for be in break_evens:
            q = _num(be.get("volume"))
            a = by_name.get(str(be.get("a")))
            if q is not None and a is not None:
                marks.append((q, str(be.get("a")), str(be.get("b"))))
    else:
        for i, a in enumerate(opts):
            for b in opts[i + 1 :]:
                q = break_even(a, b).volume
                if q is not None:
                    marks.append((q, a.name, b.name))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 3.8))
    try:
        for i, option in enumerate(opts):
            ax.plot(
                volumes,
                [monthly_cost(option, q).total for q in volumes],
                color=LINE_COLOURS[i % len(LINE_COLOURS)],
                linewidth=1.8,
                label=option.name,
            )
        for q, a, _b in marks:
            if volumes[0] <= q <= volumes[-1]:
                y = monthly_cost(by_name[a], q).total
                ax.plot([q], [y], marker="o", color="black", markersize=5, zorder=5)
                ax.annotate(f"{q:,.0f}/day", (q, y), textcoords="offset points", xytext=(6, -12), fontsize=8)
        if queries_per_day:
            ax.axvline(queries_per_day, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"stated volume {queries_per_day:,.0f}/day",
                xy=(queries_per_day, 1),
                xycoords=("data", "axes fraction"),
                xytext=(4, -12),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.set_xlim(volumes[0], volumes[-1])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("queries per day")
        ax.set_ylabel("monthly cost (USD, 30-day month)")
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _pos: f"${v:,.0f}"))
        ax.legend(frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_data_uri(fig)
    finally:
        plt.close(fig)


def _curve_points(curve: Mapping[str, Any]) -> list[tuple[float, float, float, float]]:
    """(examples, accuracy, low, high) of each point of a learning curve with numbers."""
    points = []
    for p in curve.get("points") or []:
        acc = p.get("accuracy") or {}
        n, value = _num(p.get("examples")), _num(acc.get("value"))
        if n is None or value is None:
            continue
        low, high = _num(acc.get("low")), _num(acc.get("high"))
        points.append((n, value, value if low is None else low, value if high is None else high))
    return points


def _learning_curve_figure(plt: Any, curve: Mapping[str, Any], accuracy_bar: float) -> Any:
    points = _curve_points(curve)
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    xs = [p[0] for p in points]
    ys = [100 * p[1] for p in points]
    ax.errorbar(
        xs,
        ys,
        yerr=[[100 * (p[1] - p[2]) for p in points], [100 * (p[3] - p[1]) for p in points]],
        fmt="-o",
        color=TUNED_COLOURS[0],
        markersize=6,
        capsize=4,
        linewidth=1.6,
        label=f"{curve.get('arm') or 'fine-tuned'} accuracy, 95% Wilson interval",
    )
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.1f}%", xy=(x, y), xytext=(6, -12), textcoords="offset points", fontsize=8)
    ax.axhline(100 * accuracy_bar, color="#2e7d32", linestyle="--", linewidth=1)
    ax.annotate(
        f"accuracy bar {100 * accuracy_bar:.0f}%",
        xy=(0, 100 * accuracy_bar),
        xycoords=("axes fraction", "data"),
        xytext=(4, 3),
        textcoords="offset points",
        color="#2e7d32",
        fontsize=8,
    )
    ax.set_xlim(0, max(xs) * 1.08)
    ax.set_ylim(0, 105)
    held = curve.get("held_out")
    ax.set_xlabel(
        "training examples"
        + (f" (each point evaluated on the same {held} held-out examples)" if held else "")
    )
    ax.set_ylabel("task accuracy (%)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def learning_curve(curve: Mapping[str, Any], accuracy_bar: float) -> str | None:
    """Accuracy (with its 95% interval) against training examples, one point per fraction of the training
    data; None when no point has numbers. `curve` is `outputs.LearningCurve` as JSON."""
    if not _curve_points(curve):
        return None
    plt = _pyplot()
    fig = _learning_curve_figure(plt, curve, accuracy_bar)
    try:
        return _to_data_uri(fig)
    finally:
        plt.close(fig)


def learning_curve_png(curve: Mapping[str, Any], accuracy_bar: float, path: Path) -> Path | None:
    """The same plot as `learning_curve`, written as a PNG file (atomically); None when no point has numbers."""
    from tunewise.fileio import atomic_write_bytes

    if not _curve_points(curve):
        return None
    plt = _pyplot()
    fig = _learning_curve_figure(plt, curve, accuracy_bar)
    try:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120, metadata={"Software": None})
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


__all__ = [
    "arm_colours",
    "cost_options",
    "learning_curve",
    "learning_curve_png",
    "monthly_cost_sweep",
    "quality_vs_cost",
    "training_curves",
]
