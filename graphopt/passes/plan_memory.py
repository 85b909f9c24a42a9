"""Plan memory for the graph's schedule: liveness, peak, and a buffer-reuse arena.

Needs: a Graph whose nodes carry ``meta['val']``; its node order is the schedule (for a joint
graph after :mod:`graphopt.passes.rematerialize`, the planned training step). Option
``count_inputs``: placeholder names that are activations (a backward graph's saved tensors).

Guarantees: the graph is not changed; every node that owns a buffer gets
``info.extra["mem_offset"]`` and ``info.extra["live"] = [first step, last step]``; buffers alive
together never overlap in the arena, and the arena is at least the lower bound (the most bytes
alive at one step). The :class:`MemoryPlan` goes to ``ctx.artifacts["memory"]``.
Complexity: liveness O(V + E); the arena O(B^2) in the worst case for B buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

from graphopt.graph import Graph
from graphopt.memory.arena import Arena, plan_arena
from graphopt.memory.liveness import Liveness, analyze
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["plan_memory", "MemoryPlan"]


@dataclass
class MemoryPlan:
    """Liveness of the schedule and the arena that holds it."""

    liveness: Liveness
    arena: Arena

    def to_dict(self) -> dict:
        return {**self.liveness.summary(), "arena": self.arena.to_dict()}


@dataclass(frozen=True)
class PlanMemoryOptions:
    """``count_inputs``: placeholder names that are activations (a backward graph's saved
    tensors); ``arena_alignment``: bytes every arena offset is a multiple of."""

    count_inputs: tuple[str, ...] | None = None
    arena_alignment: int = 64


@register_pass("plan_memory", options=PlanMemoryOptions, makes=("memory",))
def plan_memory(graph: Graph, ctx: PassContext) -> PassResult:
    lv = analyze(graph, ctx.option("count_inputs"))
    arena = plan_arena(lv.buffers, alignment=int(ctx.option("arena_alignment", 64)))
    for b in lv.buffers:
        info = graph.info.get(b.name)
        if info is not None:
            info.extra["mem_offset"] = arena.offsets[b.name]
            info.extra["live"] = [b.start, b.end]
    plan = MemoryPlan(lv, arena)
    ctx.artifacts["memory"] = plan
    return PassResult(graph, False, {"peak_bytes": lv.peak, "arena_bytes": arena.size,
                                     "lower_bound": arena.lower_bound,
                                     "buffers": len(lv.buffers)})
