"""Memory over one schedule of a training step: every live byte, and the part held for backward.

:func:`step_memory` reads a joint forward+backward graph (:mod:`graphopt.memory.joint`), planned
or not, in its node order: the liveness of every activation
(:func:`graphopt.memory.liveness.analyze`) and, of it, what the backward pass needs from the
forward (the quantity a memory budget bounds). :func:`graphopt.memory.plot.plot_step_memory`
draws it; :func:`graphopt.planner.memory.plan_training_memory` reports it before and after a
plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphopt.graph import Graph
from graphopt.memory.liveness import Buffer, Liveness, analyze, profile, storage_roots
from graphopt.memory.remat.build import forward_region
from graphopt.memory.remat.rewrite import RECOMPUTE_META

__all__ = ["StepMemory", "step_memory"]


@dataclass
class StepMemory:
    """Memory over one schedule of a training step (the joint graph's node order).

    ``liveness.live[i]`` is every activation byte alive at step ``i`` (gradients and backward
    temporaries included); ``held[i]`` the part of it held for the backward pass (forward values
    still alive once the backward pass starts, and recomputed values), the quantity the budget
    bounds; ``backward_start`` the step where the backward pass begins.
    """

    liveness: Liveness
    held: np.ndarray
    backward_start: int


def step_memory(graph: Graph, liveness: Liveness | None = None) -> StepMemory:
    """The live and held bytes at every step of a joint graph.

    A forward value is held from when it is made to its last read by the backward pass (a
    forward output nothing in the backward reads is not held, though it lives to the end); a
    recomputed value over its whole life.
    """
    liveness = liveness if liveness is not None else analyze(graph)
    forward = forward_region(graph.gm)
    nodes = [n for n in graph.gm.graph.nodes if n.op != "output"]
    index = {n.name: i for i, n in enumerate(nodes)}
    start = next((i for i, n in enumerate(nodes)
                  if n.name not in forward and n.op == "call_function"), len(nodes))
    root = storage_roots(nodes)
    last_read: dict[str, int] = {}  # root name -> its last read by a backward op
    for n in nodes:
        if n.op == "call_function" and n.name not in forward:
            for a in n.all_input_nodes:
                r = root[a].name
                last_read[r] = max(last_read.get(r, -1), index[n.name])
    by_name = {n.name: n for n in nodes}
    held: list[Buffer] = []
    for b in liveness.buffers:
        owner = by_name.get(b.name.split("[", 1)[0])
        if owner is None:
            continue
        if RECOMPUTE_META in owner.meta:
            held.append(b)
        elif owner.name in forward and owner.name in last_read:
            held.append(Buffer(b.name, b.size, b.start, min(b.end, last_read[owner.name])))
    return StepMemory(liveness, profile(held, len(liveness.steps)), start)
