"""The pipeline: what graphopt does to a graph, in order. Read this file first.

Each step names a registered pass (see :mod:`graphopt.passes`). The CLI and the torch.compile
backend pick a list from here; a step whose pass is disabled in the context is skipped.
"""
from __future__ import annotations

from graphopt.graph import Graph
from graphopt.passes import PassContext, PassManager

__all__ = ["INFERENCE", "TRAINING_JOINT", "TRAINING_FORWARD", "TRAINING_BACKWARD", "FUSION",
           "FUSION_STEPS", "PARTITION", "run_pipeline"]

# What `graphopt fuse MODEL` runs on a captured graph, and what the backend runs on every graph
# it compiles for inference and on the backward half of a training step.
FUSION = [
    "decompose_ops",         # norms, softmax, GELU -> pointwise + reduction ops (fusion only)
    "eliminate_dead_code",   # drop what no output needs
    "annotate_costs",        # shapes, FLOPs, bytes for every node
    "fuse_ops",              # plan kernels: pointwise chains, reductions + prologue/epilogue
    "outline_groups",        # each kernel becomes one call (bound to Triton by the backend)
]
INFERENCE = FUSION
TRAINING_BACKWARD = FUSION

# The forward half of a training step, as aot_autograd hands it over: the same steps without
# dead-code elimination, since the forward returns the activations the backward half reads.
TRAINING_FORWARD = [step for step in FUSION if step != "eliminate_dead_code"]

# The joint forward+backward graph of a training step, before aot_autograd splits it in two
# (only with a memory_budget: the split then saves exactly what the plan saves).
TRAINING_JOINT = [
    "rematerialize",         # save or recompute each activation to fit the memory budget
    "plan_memory",           # liveness, peak and buffer-reuse arena of the planned step
]

# What `graphopt partition MODEL -k K` and `graphopt pipeline` run on a captured graph.
PARTITION = [
    "eliminate_dead_code",
    "annotate_costs",
    "partition_graph",       # METIS + acyclic DP + refinement: info.part on every node;
                             # with options["split"], also on split_ops' cuts, best plan kept
]

# The steps that exist only for fusion: the backend disables them when it does not fuse.
FUSION_STEPS = ("decompose_ops", "fuse_ops", "outline_groups")


def run_pipeline(graph: Graph, steps: list[str], ctx: PassContext | None = None) -> Graph:
    """Run ``steps`` over ``graph`` with invariant checks after each."""
    return PassManager(steps).run(graph, ctx or PassContext())
