"""Recompute every node's shape, dtype, FLOPs and bytes from the graph's example values.

Needs: nodes carrying ``meta['val']`` (capture and aot_autograd set it). Guarantees: NodeInfo
matches the graph again after passes that rewrote it; ``part``/``group`` annotations are kept.
Reports ``modified`` only when a recorded cost actually changed, so it is stable under a
fixed-point loop. O(V + E).
"""
from __future__ import annotations

from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["annotate_costs"]


@register_pass("annotate_costs")
def annotate_costs(graph: Graph, ctx: PassContext) -> PassResult:
    before = dict(graph.info)        # reannotate builds new records: compare them by value
    graph.reannotate()
    return PassResult(graph, before != graph.info, {"flops": graph.total_flops})
