"""Remove nodes whose results nobody uses.

Needs: a Graph. Guarantees: the outputs are unchanged; side-effecting and random ops stay (fx's
``is_impure``); placeholders stay, so the calling convention is unchanged. O(V + E).
"""
from __future__ import annotations

from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["eliminate_dead_code"]


@register_pass("eliminate_dead_code")
def eliminate_dead_code(graph: Graph, ctx: PassContext) -> PassResult:
    before = len(graph)
    modified = graph.gm.graph.eliminate_dead_code()
    if modified:
        graph.gm.delete_all_unused_submodules()
        graph.gm.recompile()
        graph.info = {n.name: graph.info[n.name] for n in graph.fx_nodes()}
    return PassResult(graph, modified, {"removed": before - len(graph)})
