"""The pipeline schedules graphopt trains with, and what each implies for a plan.

| name | torch class | stages per rank | stage ``i`` of ``P x v`` runs on rank |
| --- | --- | --- | --- |
| ``gpipe`` | ``ScheduleGPipe`` | 1 | ``i`` |
| ``1f1b`` | ``Schedule1F1B`` | 1 | ``i`` |
| ``interleaved`` | ``ScheduleInterleaved1F1B`` | ``v >= 2`` | ``i mod P`` (loop) |
| ``zero-bubble`` | ``ScheduleZBVZeroBubble`` | exactly 2 | ``i`` if ``i < P``, else ``2P - 1 - i`` (V) |

A plan for ``interleaved`` or ``zero-bubble`` has ``P * v`` parts in pipeline order; stage ``i``
runs where the table says. ``zero-bubble`` is the V-shaped ZBV schedule: with the manual stage
frontend it runs on gloo (the looped ``InterleavedZeroBubble`` needs more micro-batches per round
and gains nothing more here).

In-flight micro-batches (what a stage holds activations for at its peak): GPipe ``M`` on every
stage, 1F1B ``min(M, P - s)``; for the multi-stage schedules they are counted from torch's own
action lists (a forward adds one, a full backward or a weight-gradient action releases one).
"""
from __future__ import annotations

from graphopt.errors import GraphoptError

__all__ = ["SCHEDULES", "stages_per_rank", "placement", "check_schedule", "inflight",
           "torch_schedule_class", "bubble_fraction"]

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble")
_TORCH = {"gpipe": "ScheduleGPipe", "1f1b": "Schedule1F1B",
          "interleaved": "ScheduleInterleaved1F1B", "zero-bubble": "ScheduleZBVZeroBubble"}
_VIS = {"interleaved": "Interleaved1F1B", "zero-bubble": "ZBVZeroBubble"}


def stages_per_rank(schedule: str, virtual: int | None = None) -> int:
    """``v``: 1 for single-stage schedules, ``virtual`` (default 2) for interleaved, 2 for ZBV."""
    if schedule not in SCHEDULES:
        raise GraphoptError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule in ("gpipe", "1f1b"):
        if virtual not in (None, 1):
            raise GraphoptError(f"--schedule {schedule} runs one stage per rank; --stages-per-rank "
                                f"{virtual} needs --schedule interleaved")
        return 1
    if schedule == "zero-bubble":
        if virtual not in (None, 2):
            raise GraphoptError("--schedule zero-bubble (ZBV) runs exactly 2 stages per rank")
        return 2
    v = 2 if virtual is None else int(virtual)
    if v < 2:
        raise GraphoptError(f"--schedule interleaved needs at least 2 stages per rank, got {v}")
    return v


def placement(schedule: str, pp: int, v: int) -> list[int]:
    """The pp rank of each of the ``pp * v`` stages."""
    if schedule == "zero-bubble":
        return [i if i < pp else 2 * pp - 1 - i for i in range(pp * v)]
    return [i % pp for i in range(pp * v)]


def torch_schedule_class(schedule: str):
    import torch.distributed.pipelining as pipelining
    return getattr(pipelining, _TORCH[schedule])


def check_schedule(schedule: str, pp: int, v: int, microbatches: int) -> None:
    """Raise GraphoptError (one line) when torch's schedule cannot run this many micro-batches."""
    if microbatches < 1:
        raise GraphoptError(f"--microbatches must be at least 1, got {microbatches}")
    if schedule == "1f1b" and microbatches < pp:
        raise GraphoptError(f"--schedule 1f1b needs at least as many micro-batches as stages: "
                            f"{microbatches} < {pp}; pass --microbatches {pp} or more, or use gpipe")
    if schedule in _VIS:
        try:
            _actions(schedule, pp, v, microbatches)
        except (ValueError, AssertionError, RuntimeError) as exc:
            text = " ".join(str(exc).split())
            raise GraphoptError(f"--schedule {schedule} cannot run {microbatches} micro-batches "
                                f"on {pp} ranks x {v} stages: {text}") from None


def _actions(schedule: str, pp: int, v: int, microbatches: int):
    import logging

    from torch.distributed.pipelining._schedule_visualizer import get_schedule_ops
    logger = logging.getLogger("torch.distributed.pipelining.schedules")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return get_schedule_ops(_VIS[schedule], pp, microbatches, v)
    finally:
        logger.setLevel(level)


def inflight(schedule: str, pp: int, v: int, microbatches: int) -> list[int]:
    """Peak micro-batches whose activations each stage holds (see the module docstring)."""
    m = microbatches
    if schedule == "gpipe":
        return [m] * pp
    if schedule == "1f1b":
        return [min(m, pp - s) for s in range(pp)]
    live = [0] * (pp * v)
    peak = [0] * (pp * v)
    for rank_actions in _actions(schedule, pp, v, m):
        for a in rank_actions:
            if a is None:
                continue
            kind = getattr(a.computation_type, "value", str(a.computation_type))
            s = a.stage_index
            if kind == "F":
                live[s] += 1
                peak[s] = max(peak[s], live[s])
            elif kind in ("B", "W"):       # full backward, or the weight half of a split one
                live[s] -= 1
    return peak


def bubble_fraction(schedule: str, pp: int, v: int, microbatches: int) -> float:
    """The idle share of a step with equal stages: ``(P - 1) / (v M + P - 1)``; 0 for one rank.

    The textbook bubble of GPipe and 1F1B (``v = 1``) and of interleaved 1F1B; for ZBV it is an
    upper bound (weight-gradient work fills part of the warm-up and drain).
    """
    if pp <= 1:
        return 0.0
    return (pp - 1) / (v * microbatches + pp - 1)
