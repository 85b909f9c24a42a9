"""Per-rank timelines of a training step: an SVG picture and a Chrome trace Perfetto opens.

Input: each rank's events ``(kind, stage, micro-batch, start, end)`` of one step, seconds from
the step's start (see :mod:`graphopt.distributed.trace`). Each rank gets a row: forward and
backward bars labelled ``F3``/``B3`` (micro-batch 3), the tied-weight gradient sum (``sync``)
and the optimizer step; sends and receive waits on a thinner band below, and the time the rank
computes nothing drawn as idle, so the pipeline's bubble is what you see between the bars.
Rows are named by the rank's mesh position where it is given (``positions``: rank ->
``(pipeline rank, data-parallel rank)``, :attr:`TrainRun.positions
<graphopt.distributed.trainer.TrainRun.positions>`): ``rank 3 (pipeline 1, data 1)``.

The trace is the JSON ``traceEvents`` format (complete ``"X"`` events in microseconds): one
process per rank, a ``compute`` and a ``comm`` thread each, idle gaps as their own slices.
"""
from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from graphopt.distributed.trace import COMPUTE_KINDS

__all__ = ["chrome_trace", "write_chrome_trace", "write_timeline_picture", "idle_gaps",
           "rank_label"]

COLORS = {"forward": "#4c78a8", "backward": "#f58518", "backward-input": "#f58518",
          "backward-weight": "#b279a2", "send": "#54a24b", "recv": "#e45756",
          "send-wait": "#88d27a", "optimizer": "#72b7b2", "sync": "#eeca3b", "idle": "#e6e6e6"}
_LETTER = {"forward": "F", "backward": "B", "backward-input": "I", "backward-weight": "W"}


def idle_gaps(events: list, end: float) -> list[tuple[float, float]]:
    """Stretches of ``[0, end]`` with no compute event (forward, backward, optimizer)."""
    busy = sorted((t0, t1) for kind, _, _, t0, t1 in events
                  if kind in COMPUTE_KINDS or kind == "optimizer")
    gaps, at = [], 0.0
    for t0, t1 in busy:
        if t0 > at:
            gaps.append((at, t0))
        at = max(at, t1)
    if end > at:
        gaps.append((at, end))
    return gaps


def rank_label(rank: int, positions: dict[int, tuple[int, int]] | None = None) -> str:
    """``rank 3 (pipeline 1, data 1)``; ``rank 3`` where the position is not known."""
    if positions and rank in positions:
        p, d = positions[rank]
        return f"rank {rank} (pipeline {p}, data {d})"
    return f"rank {rank}"


def chrome_trace(events_by_rank: dict[int, list], step_seconds: float, *, title: str = "",
                 positions: dict[int, tuple[int, int]] | None = None) -> dict:
    """The trace document (see the module docstring)."""
    out = []
    for rank, events in sorted(events_by_rank.items()):
        out.append({"name": "process_name", "ph": "M", "pid": rank,
                    "args": {"name": rank_label(rank, positions)}})
        out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": 0,
                    "args": {"name": "compute"}})
        out.append({"name": "thread_name", "ph": "M", "pid": rank, "tid": 1,
                    "args": {"name": "comm"}})
        for kind, stage, mb, t0, t1 in events:
            comm = kind in ("send", "recv", "send-wait")
            name = f"{_LETTER.get(kind, kind)}{mb} s{stage}" if kind in _LETTER else kind
            out.append({"name": name, "cat": kind, "ph": "X", "pid": rank, "tid": 1 if comm else 0,
                        "ts": t0 * 1e6, "dur": max(t1 - t0, 0.0) * 1e6,
                        "args": {"stage": stage, "microbatch": mb}})
        for t0, t1 in idle_gaps(events, step_seconds):
            out.append({"name": "idle", "cat": "idle", "ph": "X", "pid": rank, "tid": 0,
                        "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6})
    return {"traceEvents": out, "displayTimeUnit": "ms", "otherData": {"title": title}}


def write_chrome_trace(path: Path, events_by_rank: dict[int, list], step_seconds: float, *,
                       title: str = "", positions: dict[int, tuple[int, int]] | None = None
                       ) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(events_by_rank, step_seconds, title=title,
                                            positions=positions)))
    return path


def write_timeline_picture(path: Path, events_by_rank: dict[int, list], step_seconds: float, *,
                           title: str = "", positions: dict[int, tuple[int, int]] | None = None
                           ) -> Path:
    """An SVG (or PNG, by the suffix) with one row per rank (see the module docstring)."""
    ranks = sorted(events_by_rank)
    # A bare Figure draws without pyplot: no global backend switch, no figure registry.
    fig = Figure(figsize=(11, 0.8 + 0.7 * len(ranks)))
    ax = fig.subplots()
    scale = 1e3   # milliseconds
    for row, rank in enumerate(ranks):
        y = len(ranks) - 1 - row
        events = events_by_rank[rank]
        for t0, t1 in idle_gaps(events, step_seconds):
            ax.broken_barh([(t0 * scale, (t1 - t0) * scale)], (y - 0.35, 0.5),
                           facecolors=COLORS["idle"])
        for kind, _, mb, t0, t1 in events:
            comm = kind in ("send", "recv", "send-wait")
            band = (y - 0.45, 0.1) if comm else (y - 0.35, 0.5)
            ax.broken_barh([(t0 * scale, max(t1 - t0, 1e-7) * scale)], band,
                           facecolors=COLORS.get(kind, "#999999"), edgecolor="white",
                           linewidth=0.3)
            if kind in _LETTER and (t1 - t0) > step_seconds / 60:
                ax.text((t0 + t1) / 2 * scale, y - 0.1, f"{_LETTER[kind]}{mb}", ha="center",
                        va="center", fontsize=6, color="white")
    ax.set_yticks(range(len(ranks)))
    ax.set_yticklabels([rank_label(r, positions) for r in reversed(ranks)])
    ax.set_xlabel("milliseconds from the start of the step")
    ax.set_xlim(0, step_seconds * scale * 1.01)
    ax.set_title(title, fontsize=9)
    legend = [Patch(color=COLORS[k], label=k) for k in
              ("forward", "backward", "backward-weight", "send", "send-wait", "recv", "sync",
               "optimizer", "idle")]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(ranks) < 3
              else -0.2), ncol=9, fontsize=7, frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
