"""Group memory-bound ops into kernels (the adapter of :mod:`graphopt.fusion.grouping`).

Needs: an ATen graph with ``meta['val']``; ``decompose_ops`` first so norms and softmax fuse.
Options (:class:`FuseOptions`): ``fuse_max_ops``, ``fuse_max_inputs``; the cost rule uses the
context's ``device``. Makes: ``NodeInfo.group`` on every member and the
:class:`~graphopt.fusion.plan.FusionPlan` in ``ctx.artifacts["fusion"]`` (``outline_groups``
needs it). The graph is not rewritten, so the pass is idempotent. Complexity: see the library.
"""
from __future__ import annotations

from dataclasses import dataclass

from graphopt.fusion.grouping import DEFAULT_MAX_INPUTS, DEFAULT_MAX_OPS, plan_fusion
from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["fuse_ops", "FuseOptions"]


@dataclass(frozen=True)
class FuseOptions:
    """``fuse_max_ops``: most ops one kernel holds; ``fuse_max_inputs``: most tensors it reads
    (a Triton kernel's argument list and register pressure grow with both)."""

    fuse_max_ops: int = DEFAULT_MAX_OPS
    fuse_max_inputs: int = DEFAULT_MAX_INPUTS


@register_pass("fuse_ops", options=FuseOptions, makes=("fusion",))
def fuse_ops(graph: Graph, ctx: PassContext) -> PassResult:
    opts = ctx.options_for("fuse_ops")
    before = {name: info.group for name, info in graph.info.items()}
    plan = plan_fusion(graph, max_ops=opts.fuse_max_ops, max_inputs=opts.fuse_max_inputs,
                       device=ctx.device)
    group_of = plan.group_of()
    for name, info in graph.info.items():
        if info.op == "call_function":
            info.group = group_of.get(name)
    ctx.artifacts["fusion"] = plan
    after = {name: info.group for name, info in graph.info.items()}
    summary = plan.summary()
    return PassResult(graph, before != after,
                      {k: summary[k] for k in ("kernels", "fused_ops", "aten_ops",
                                               "bytes_unfused", "bytes_fused")})
