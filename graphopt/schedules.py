"""The pipeline schedules graphopt knows, read from torch's own registry.

One table: each name maps to a torch class (through
``torch.distributed.pipelining.schedules.get_schedule_class``), a number of stages per rank and a
placement. Every other part of graphopt (the runtime, the simulator, the planner, the CLI's
choices) reads the schedules from here.

| name | torch class | stages per rank ``v`` | stage ``i`` of ``P x v`` runs on rank | trains |
| --- | --- | --- | --- | --- |
| ``gpipe`` | ``ScheduleGPipe`` | 1 | ``i`` | yes |
| ``1f1b`` | ``Schedule1F1B`` | 1 | ``i`` | yes |
| ``interleaved`` | ``ScheduleInterleaved1F1B`` | ``>= 2`` (default 2) | ``i mod P`` (loop) | yes |
| ``zero-bubble`` | ``ScheduleZBVZeroBubble`` | 2 | ``i`` if ``i < P`` else ``2P-1-i`` (V) | yes |
| ``interleaved-zero-bubble`` | ``ScheduleInterleavedZeroBubble`` | ``>= 1`` (default 2) | ``i mod P`` | no |

:data:`SCHEDULES` holds the names the runtime trains with (the CLI's ``--schedule`` choices);
:data:`ALL_SCHEDULES` adds ``interleaved-zero-bubble``, which the step simulator prices only.
``zero-bubble`` is the V-shaped ZBV schedule: with the manual stage frontend it runs on gloo (the
looped ``InterleavedZeroBubble`` needs more micro-batches per round and gains nothing more here).

**Action orders** (:func:`action_orders`) are each rank's compute actions, read from the torch
schedule's ``pipeline_order``: the class is instantiated with placeholder stage objects (as
torch's ``_schedule_visualizer.get_schedule_ops`` does) and its idle slots (``None``) and
``REDUCE_GRAD`` markers dropped. One exception: ``1f1b``. ``Schedule1F1B``'s ``pipeline_order``
(torch 2.13) numbers the last rank's forwards from 1 (its runtime loop, which is what runs, does
``F0 B0 F1 B1 ...``), so that order is derived here as the runtime runs it: ``min(M, P - r)``
warm-up forwards on rank ``r``, then one backward and the next forward while any is left.

An action is :class:`Action` ``(kind, stage, microbatch)``: ``kind`` ``"F"`` forward, ``"B"``
backward (the input-gradient half, torch's ``I``, in a split-backward schedule), ``"W"`` weight
gradient (split-backward schedules only, :func:`split_backward`); ``stage`` the global stage
index; ``microbatch`` from 0.

In-flight micro-batches (what a stage holds activations for at its peak, :func:`inflight`):
counted from the action orders (a forward adds one; a full backward, or a weight-gradient action
in a split-backward schedule, releases one): GPipe ``M`` on every stage, 1F1B ``min(M, P - s)``.

This module does not import torch at its top (the CLI builds its argument choices from it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache

from graphopt.errors import PlanError

__all__ = ["SCHEDULES", "ALL_SCHEDULES", "Schedule", "REGISTRY", "Action", "schedule_info",
           "stages_per_rank", "placement", "torch_schedule_class", "split_backward",
           "check_schedule", "action_orders", "inflight", "bubble_fraction"]


@dataclass(frozen=True)
class Schedule:
    """One registry entry: the torch name (for ``get_schedule_class``), stages per rank
    (``min_stages``..``max_stages``, ``None`` for no upper bound; ``default_stages`` when none is
    asked for), the placement style (``"loop"`` or ``"v"``), whether the backward is split into
    input (``B``) and weight (``W``) gradients, and whether the runtime trains with it."""

    name: str
    torch_name: str
    min_stages: int
    max_stages: int | None
    default_stages: int
    style: str = "loop"
    split_backward: bool = False
    trains: bool = True


REGISTRY: dict[str, Schedule] = {s.name: s for s in (
    Schedule("gpipe", "GPipe", 1, 1, 1),
    Schedule("1f1b", "1F1B", 1, 1, 1),
    Schedule("interleaved", "Interleaved1F1B", 2, None, 2),
    Schedule("zero-bubble", "ZBVZeroBubble", 2, 2, 2, style="v", split_backward=True),
    Schedule("interleaved-zero-bubble", "InterleavedZeroBubble", 1, None, 2,
             split_backward=True, trains=False),
)}
ALL_SCHEDULES: tuple[str, ...] = tuple(REGISTRY)
SCHEDULES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.trains)


@dataclass(frozen=True)
class Action:
    """One compute action of a rank's schedule: ``kind`` ``F``/``B``/``W`` (module docstring)
    of ``stage`` on ``microbatch``."""

    kind: str
    stage: int
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.kind}{self.microbatch}"     # torch's notation: 2F0


def schedule_info(schedule: str) -> Schedule:
    """The registry entry of ``schedule``; a one-line PlanError naming the choices otherwise."""
    try:
        return REGISTRY[schedule]
    except (KeyError, TypeError):
        raise PlanError(f"unknown schedule {schedule!r}; choose one of "
                        f"{', '.join(ALL_SCHEDULES)}") from None


def split_backward(schedule: str) -> bool:
    """Whether ``schedule`` splits a backward into input (``B``) and weight (``W``) gradients."""
    return schedule_info(schedule).split_backward


def stages_per_rank(schedule: str, virtual: int | None = None) -> int:
    """``v``: the stages each rank runs, ``virtual`` checked against the schedule (or its default).

    Example:
        >>> stages_per_rank("1f1b"), stages_per_rank("interleaved"), stages_per_rank("interleaved", 3)
        (1, 2, 3)
    """
    info = schedule_info(schedule)
    if virtual is None:
        return info.default_stages
    v = int(virtual)
    if info.max_stages == 1 and v != 1:
        raise PlanError(f"--schedule {schedule} runs one stage per rank; --stages-per-rank {v} "
                        "needs --schedule interleaved")
    if info.min_stages == info.max_stages and v != info.min_stages:
        raise PlanError(f"--schedule {schedule} runs exactly {info.min_stages} stages per rank, "
                        f"got {v}")
    if v < info.min_stages:
        raise PlanError(f"--schedule {schedule} needs at least {info.min_stages} stages per "
                        f"rank, got {v}")
    return v


def placement(schedule: str, pp: int, v: int = 1) -> list[int]:
    """The pipeline rank of each of the ``pp * v`` stages (torch's ``loop`` or ``v`` mapping).

    Example:
        >>> placement("interleaved", 2, 2), placement("zero-bubble", 2, 2)
        ([0, 1, 0, 1], [0, 1, 1, 0])
    """
    if schedule_info(schedule).style == "v":
        return [i if i < pp else 2 * pp - 1 - i for i in range(pp * v)]
    return [i % pp for i in range(pp * v)]


def torch_schedule_class(schedule: str):
    """torch's schedule class for ``schedule`` (``get_schedule_class`` of its torch name)."""
    from torch.distributed.pipelining.schedules import get_schedule_class
    return get_schedule_class(schedule_info(schedule).torch_name)


def check_schedule(schedule: str, pp: int, v: int, microbatches: int) -> None:
    """Raise PlanError (one line) when torch's schedule cannot run this configuration."""
    stages_per_rank(schedule, v)
    if pp < 1:
        raise PlanError(f"--pp must be at least 1, got {pp}")
    if microbatches < 1:
        raise PlanError(f"--microbatches must be at least 1, got {microbatches}")
    if schedule == "1f1b" and microbatches < pp:
        raise PlanError(f"--schedule 1f1b needs at least as many micro-batches as stages: "
                        f"{microbatches} < {pp}; pass --microbatches {pp} or more, or use gpipe")
    if schedule_info(schedule).max_stages != 1:
        _torch_order(schedule, pp, v, microbatches)


class _Stage:
    """What a schedule class reads from its stages while it builds ``pipeline_order``."""

    def __init__(self, pp: int, v: int, index: int):
        self.group_rank, self.group_size, self.num_stages = 0, pp, pp * v
        self.stage_index, self.submod, self.is_first, self.is_last = index, None, index == 0, False


_KINDS = {"F": "F", "B": "B", "I": "B", "W": "W"}   # torch's computation types -> ours


@lru_cache(maxsize=256)
def _torch_order(schedule: str, pp: int, v: int, microbatches: int) -> tuple[tuple[Action, ...], ...]:
    """Each rank's compute actions from the torch class's ``pipeline_order`` (cached)."""
    from torch.distributed.pipelining.schedules import PipelineScheduleSingle
    cls = torch_schedule_class(schedule)
    stages = [_Stage(pp, v, i) for i in range(v)]
    logger = logging.getLogger("torch.distributed.pipelining.schedules")
    level = logger.level
    logger.setLevel(logging.ERROR)     # torch logs "Using <class>" for every instance
    try:
        inst = cls(stages[0] if issubclass(cls, PipelineScheduleSingle) else stages, microbatches)
    except (ValueError, AssertionError, RuntimeError) as exc:
        text = " ".join(str(exc).split())
        raise PlanError(f"--schedule {schedule} cannot run {microbatches} micro-batches on {pp} "
                        f"ranks x {v} stages: {text}") from None
    finally:
        logger.setLevel(level)
    order = inst.pipeline_order
    if order is None:
        raise PlanError(f"torch's {cls.__name__} has no pipeline_order")
    out = []
    for rank in range(pp):
        acts = []
        for a in order[rank]:
            kind = None if a is None else _KINDS.get(getattr(a.computation_type, "value", None))
            if kind is not None:       # idle slots and REDUCE_GRAD markers are not computed
                acts.append(Action(kind, a.stage_index, a.microbatch_index))
        out.append(tuple(acts))
    return tuple(out)


def _one_f_one_b(pp: int, m: int) -> list[list[Action]]:
    orders = []
    for r in range(pp):
        warm = min(m, pp - r)
        ops = [Action("F", r, i) for i in range(warm)]
        for b in range(m):          # one backward, then the next forward while any is left
            ops += [Action("B", r, b)] + ([Action("F", r, warm + b)] if warm + b < m else [])
        orders.append(ops)
    return orders


def action_orders(schedule: str, pp: int, v: int, microbatches: int) -> list[list[Action]]:
    """Each rank's ordered compute actions under ``schedule``, as torch's schedule orders them.

    Read from the torch class's ``pipeline_order``, except ``1f1b`` (module docstring). Raises
    PlanError where torch's schedule cannot run the configuration.

    Example:
        >>> [str(a) for a in action_orders("1f1b", 2, 1, 3)[0]]
        ['0F0', '0F1', '0B0', '0F2', '0B1', '0B2']
    """
    stages_per_rank(schedule, v)
    if pp < 1 or microbatches < 1:
        raise PlanError(f"pp and micro-batches must be at least 1, got {pp} and {microbatches}")
    if schedule == "1f1b":
        return _one_f_one_b(pp, microbatches)
    return [list(o) for o in _torch_order(schedule, pp, v, microbatches)]


def inflight(schedule: str, pp: int, v: int, microbatches: int) -> list[int]:
    """Peak micro-batches whose activations each of the ``pp * v`` stages holds (module docstring).

    Example:
        >>> inflight("1f1b", 4, 1, 8)
        [4, 3, 2, 1]
    """
    release = "W" if split_backward(schedule) else "B"
    live = [0] * (pp * v)
    peak = [0] * (pp * v)
    for rank_actions in action_orders(schedule, pp, v, microbatches):
        for a in rank_actions:
            if a.kind == "F":
                live[a.stage] += 1
                peak[a.stage] = max(peak[a.stage], live[a.stage])
            elif a.kind == release:
                live[a.stage] -= 1
    return peak


def bubble_fraction(schedule: str, pp: int, v: int, microbatches: int) -> float:
    """The idle share of a step with equal stages: ``(P - 1) / (v M + P - 1)``; 0 for one rank.

    The textbook bubble of GPipe and 1F1B (``v = 1``) and of interleaved 1F1B; for the
    zero-bubble schedules it is an upper bound (weight-gradient work fills part of the warm-up
    and drain).
    """
    schedule_info(schedule)
    if pp <= 1:
        return 0.0
    return (pp - 1) / (v * microbatches + pp - 1)
