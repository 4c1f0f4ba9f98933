"""The volume-sweep plot: monthly cost against queries per day, one line per arm and platform, break-even points
marked. matplotlib is imported inside the function (Agg backend, no display) so that the economics stage and
`tunewise --help` stay light.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunewise.economics.cost import CostOption, break_even, default_volumes, monthly_cost
from tunewise.errors import TunewiseError


def plot_sweep(
    options: Sequence[CostOption],
    path: str | Path,
    queries_per_day: float | None = None,
    volumes: Sequence[float] | None = None,
    title: str = "Monthly cost by volume",
) -> list[Path]:
    """Write `<path>.png` and `<path>.svg` (any suffix on `path` is replaced) and return both paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise TunewiseError(
            "the volume-sweep plot needs matplotlib", hint="pip install 'tunewise[report]'"
        ) from None
    if not options:
        raise TunewiseError("nothing to plot: no cost options")
    xs = list(volumes) if volumes is not None else default_volumes(options, queries_per_day or 0.0)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    try:
        for option in options:
            ax.plot(xs, [monthly_cost(option, q).total for q in xs], label=option.name, linewidth=1.8)
        # Mark each crossing inside the plotted range, with its volume, so the plot answers "from how many
        # queries a day does it pay".
        for i, a in enumerate(options):
            for b in options[i + 1 :]:
                be = break_even(a, b)
                if be.volume is not None and xs[0] <= be.volume <= xs[-1]:
                    y = monthly_cost(a, be.volume).total
                    ax.plot([be.volume], [y], marker="o", color="black", markersize=5, zorder=5)
                    ax.annotate(
                        f"{be.volume:,.0f}/day",
                        (be.volume, y),
                        textcoords="offset points",
                        xytext=(6, -12),
                        fontsize=8,
                    )
        if queries_per_day:
            ax.axvline(queries_per_day, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"stated volume {queries_per_day:,.0f}/day",
                (queries_per_day, 0),
                xytext=(4, 4),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
        ax.set_xlabel("queries per day")
        ax.set_ylabel("monthly cost (USD, 30-day month)")
        ax.set_title(title)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        base = Path(path).with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for suffix in (".png", ".svg"):
            target = base.with_name(base.name + suffix)
            fig.savefig(target)
            written.append(target)
        return written
    finally:
        plt.close(fig)


__all__ = ["plot_sweep"]
