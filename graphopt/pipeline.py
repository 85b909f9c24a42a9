"""The pipeline: what graphopt does to a graph, in order. Read this file first.

Each step names a registered pass (see :mod:`graphopt.passes`). The CLI and the torch.compile
backend pick a list from here; a step whose pass is disabled in the context is skipped.
"""
from __future__ import annotations

from graphopt.graph import Graph
from graphopt.passes import PassContext, PassManager

__all__ = ["INFERENCE", "TRAINING_FORWARD", "TRAINING_BACKWARD", "run_pipeline"]

# Graphs the backend compiles for inference.
INFERENCE = [
    "eliminate_dead_code",   # drop what no output needs
    "annotate_costs",        # shapes, FLOPs, bytes for every node
]

# The forward and backward halves of a training step, as aot_autograd hands them over.
TRAINING_FORWARD = [
    "annotate_costs",
]
TRAINING_BACKWARD = [
    "eliminate_dead_code",
    "annotate_costs",
]


def run_pipeline(graph: Graph, steps: list[str], ctx: PassContext | None = None) -> Graph:
    """Run ``steps`` over ``graph`` with invariant checks after each."""
    return PassManager(steps).run(graph, ctx or PassContext())
