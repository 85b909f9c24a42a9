"""The memory pictures: activation bytes over a step, and a training step before and after a plan.

matplotlib on its Agg backend (no display needed). PNG or SVG, chosen by the file suffix;
written through a temporary file so a failure never leaves half a picture.

:func:`plot_step_memory` draws a training step in two panels, the step without recomputation
above the planned one, sharing the y axis. Their x axis is the progress through each phase, the
forward pass from 0 to 1 and the backward pass from 1 to 2, each scaled to its own op count: the
plan adds recomputation to the backward pass, so its step has more ops than the baseline's, and
an axis of op indices would set different moments side by side (and a curve that ends later
would look like a longer step). Each panel shows everything alive (light) and the part held
for the backward pass (dark), which is what the budget bounds; the budget is a dashed line.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from graphopt.memory.liveness import Liveness
    from graphopt.memory.step import StepMemory

__all__ = ["plot_live_memory", "plot_step_memory", "phase_x"]

_COLORS = ["#4E79A7", "#E15759", "#59A14F", "#F28E2B", "#B07AA1"]
_BUDGET = "#333333"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    tmp.replace(path)
    return path


def _budget_line(ax, value: int, label: str) -> None:
    mib = value / 2**20
    ax.axhline(mib, color=_BUDGET, ls="--", lw=1.2, zorder=5)
    ax.annotate(f"{label}: {mib:,.1f} MiB", (1.0, mib), xycoords=("axes fraction", "data"),
                xytext=(-4, 3), textcoords="offset points", ha="right", va="bottom",
                fontsize=8, color=_BUDGET, zorder=6)


def phase_x(steps: int, first: int, backward_start: int) -> np.ndarray:
    """x of each step from ``first`` on: the forward pass spans [0, 1), the backward [1, 2]."""
    i = np.arange(first, steps, dtype=np.float64)
    fwd = max(backward_start - first, 1)
    bwd = max(steps - 1 - backward_start, 1)
    return np.where(i < backward_start, (i - first) / fwd, 1.0 + (i - backward_start) / bwd)


def plot_step_memory(panels: dict[str, StepMemory], path: str | Path, *, title: str = "",
                     budget_bytes: int | None = None, budget_label: str = "budget") -> Path:
    """A training step's memory, one panel per schedule, into ``path`` (.png or .svg).

    Args:
        panels: label -> the step's memory, e.g. ``{"no remat": res.baseline,
            "plan, budget 0.5": res.plan}`` (from :func:`~graphopt.planner.memory.
            plan_training_memory`), drawn top to bottom on a shared y axis.
        budget_bytes: the budget on the bytes held for the backward pass (a dashed line in
            every panel), or None.

    Example:
        >>> res = plan_training_memory(model, inputs, 0.5, name="zoo:resmlp")
        >>> plot_step_memory({"no remat": res.baseline, "plan": res.plan}, "out/memory.png",
        ...                  budget_bytes=res.budget_bytes)
    """
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 2.1 + 2.0 * len(panels)), dpi=110,
                             sharex=True, sharey=True, squeeze=False)
    for i, (ax, (label, sm)) in enumerate(zip(axes[:, 0], panels.items())):
        color = _COLORS[i % len(_COLORS)]
        lv = sm.liveness
        first = min(lv.first_op, sm.backward_start)
        x = phase_x(len(lv.live), first, sm.backward_start)
        live, held = lv.live[first:] / 2**20, sm.held[first:] / 2**20
        ax.fill_between(x, live, step="post", color=color, alpha=0.18, lw=0)
        ax.step(x, live, where="post", color=color, lw=0.8, alpha=0.6,
                label=f"all activations alive (peak {lv.peak / 2**20:,.1f} MiB)")
        ax.step(x, held, where="post", color=color, lw=1.6,
                label=f"held for the backward pass (peak {held.max(initial=0):,.1f} MiB)")
        ax.axvline(1.0, color="#777777", ls=":", lw=1)
        if budget_bytes is not None:
            _budget_line(ax, budget_bytes, budget_label)
        ax.set_title(label, fontsize=10, loc="left")
        ax.set_ylabel("MiB")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        ax.set_ylim(bottom=0)
    ax = axes[-1, 0]
    ax.set_xlim(0, 2)
    ax.set_xticks([0, 0.5, 1, 1.5, 2], ["start", "forward pass", "backward starts",
                                        "backward pass", "end"])
    ax.set_xlabel("progress through the step (each pass scaled to its own op count)")
    fig.suptitle(title or "activation memory over the training step", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_live_memory(curves: dict[str, Liveness], path: str | Path, *, title: str = "",
                     boundaries: dict[str, int] | None = None,
                     hlines: dict[str, int] | None = None) -> Path:
    """Plot live bytes per step for each named schedule into ``path`` (.png or .svg).

    For schedules of one graph (a forward pass); to compare a training step before and after
    a plan, whose schedules differ in length, use :func:`plot_step_memory`.

    Args:
        curves: label -> liveness, e.g. ``{"forward": analyze(graph)}``.
        boundaries: label -> step where the backward pass starts (a dotted line).
        hlines: label -> bytes for horizontal reference lines (e.g. the budget).

    Example:
        >>> plot_live_memory({"forward": analyze(graph)}, "out/memory.png",
        ...                  title="zoo:mlp forward pass")
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for i, (label, lv) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        skip = lv.first_op  # the inputs take no steps worth drawing
        mib = lv.live[skip:] / 2**20
        ax.step(range(len(mib)), mib, where="post", color=color, lw=1.4,
                label=f"{label} (peak {lv.peak / 2**20:,.1f} MiB)")
        if len(mib):
            ax.plot([lv.peak_step - skip], [lv.peak / 2**20], "o", color=color, ms=4)
        if boundaries and label in boundaries:
            ax.axvline(boundaries[label] - skip, color=color, ls=":", lw=1)
    for label, value in (hlines or {}).items():
        _budget_line(ax, value, label)
    ax.set_xlabel("step (op, in schedule order)")
    ax.set_ylabel("live activation memory (MiB)")
    ax.set_title(title or "live memory over the step")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
