"""The live-memory picture: activation bytes over the step, before and after the plan.

matplotlib on its Agg backend (no display needed). PNG or SVG, chosen by the file suffix;
written through a temporary file so a failure never leaves half a picture.
"""
from __future__ import annotations

from pathlib import Path

from graphopt.memory.liveness import Liveness

__all__ = ["plot_live_memory"]


def plot_live_memory(curves: dict[str, Liveness], path: str | Path, *, title: str = "",
                     boundaries: dict[str, int] | None = None,
                     hlines: dict[str, int] | None = None) -> Path:
    """Plot live bytes per step for each named schedule into ``path`` (.png or .svg).

    Args:
        curves: label -> liveness, e.g. ``{"no remat": before, "budget 0.5": after}``.
        boundaries: label -> step where the backward pass starts (a dashed line).
        hlines: label -> bytes for horizontal reference lines (e.g. the budget).

    Example:
        >>> plot_live_memory({"before": analyze(joint), "after": analyze(planned)},
        ...                  "out/memory.png", title="zoo:resmlp training step")
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    colors = ["#4E79A7", "#E15759", "#59A14F", "#F28E2B", "#B07AA1"]
    for i, (label, lv) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        skip = lv.first_op  # the inputs take no steps worth drawing
        mib = lv.live[skip:] / 2**20
        ax.step(range(len(mib)), mib, where="post", color=color, lw=1.4,
                label=f"{label} (peak {lv.peak / 2**20:,.1f} MiB)")
        if len(mib):
            ax.plot([lv.peak_step - skip], [lv.peak / 2**20], "o", color=color, ms=4)
        if boundaries and label in boundaries:
            ax.axvline(boundaries[label] - skip, color=color, ls=":", lw=1)
    for label, value in (hlines or {}).items():
        ax.axhline(value / 2**20, color="#777777", ls="--", lw=1)
        ax.annotate(label, (0, value / 2**20), xytext=(4, 3), textcoords="offset points",
                    fontsize=8, color="#555555")
    ax.set_xlabel("step (op, in schedule order; dotted: the backward pass starts)")
    ax.set_ylabel("live activation memory (MiB)")
    ax.set_title(title or "live memory over the step")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)
    return path
