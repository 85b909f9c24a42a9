"""Replace each planned fusion group by one ``call_module`` node running the group's subgraph.

Needs: ``ctx.artifacts["fusion"]`` from ``fuse_ops`` (without it the pass is an error that says
so: outlining nothing would hide a missing step).
Guarantees: each group becomes a submodule named after it (a ``GraphModule`` whose placeholders
are the group's inputs in plan order and which returns the tuple of its outputs in plan order)
called once, with a ``getitem`` per output; the graph computes the same values and stays
topologically sorted (the plan's groups are convex, so a sort always exists). The submodule is
still plain ATen: :func:`graphopt.kernels.bind_kernels` swaps in the generated kernels. Nodes of
the outlined graph carry ``meta['val']``; the call node's ``NodeInfo.group`` names the group.
Idempotent: a second run finds no grouped ``call_function`` nodes left. O(V + E) plus the sort.
"""
from __future__ import annotations

import operator

import torch
import torch.fx
from torch.fx.passes.tools_common import stable_topological_sort

from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["outline_groups", "outline"]


def _subgraph(nodes: list[torch.fx.Node], inputs: list[torch.fx.Node],
              outputs: list[torch.fx.Node], names: list[str]) -> torch.fx.GraphModule:
    sub = torch.fx.Graph()
    env: dict[torch.fx.Node, torch.fx.Node] = {}
    for inp, name in zip(inputs, names):
        ph = sub.placeholder(name)
        ph.meta.update(inp.meta)
        env[inp] = ph
    for n in nodes:
        env[n] = sub.node_copy(n, lambda x: env[x])
    sub.output(tuple(env[o] for o in outputs))
    return torch.fx.GraphModule(torch.nn.Module(), sub)


def outline(gm: torch.fx.GraphModule, name: str, nodes: list[torch.fx.Node],
            inputs: list[torch.fx.Node], outputs: list[torch.fx.Node],
            input_names: list[str] | None = None) -> torch.fx.Node:
    """Outline ``nodes`` into submodule ``name``; returns the new ``call_module`` node.

    ``input_names`` name the submodule's placeholders (default: the input nodes' names).
    """
    sub = _subgraph(nodes, inputs, outputs, input_names or [n.name for n in inputs])
    gm.add_submodule(name, sub)
    graph = gm.graph
    with graph.inserting_after(nodes[-1]):
        call = graph.call_module(name, tuple(inputs))
    call.meta["val"] = tuple(o.meta.get("val") for o in outputs)
    getters = []
    with graph.inserting_after(call):
        for i in range(len(outputs)):
            getters.append(graph.call_function(operator.getitem, (call, i)))
    for out, get in zip(outputs, getters):
        get.meta["val"] = out.meta.get("val")
        out.replace_all_uses_with(get)  # members reading `out` go too, just below
    for n in reversed(nodes):
        graph.erase_node(n)
    return call


@register_pass("outline_groups", needs=("fusion",))
def outline_groups(graph: Graph, ctx: PassContext) -> PassResult:
    plan = ctx.artifact("fusion", "outline_groups")
    if not plan.groups:
        return PassResult(graph, False, {"outlined": 0})
    gm = graph.gm
    by_name = {n.name: n for n in gm.graph.nodes}
    todo = [g for g in plan.groups if all(n in by_name and by_name[n].op == "call_function"
                                          for n in g.nodes)]
    if not todo:
        return PassResult(graph, False, {"outlined": 0})
    calls = {}
    for group in todo:
        call = outline(gm, group.name, [by_name[n] for n in group.nodes],
                       [by_name[n] for n in group.inputs], [by_name[n] for n in group.outputs],
                       input_names=group.inputs)
        calls[call.name] = group.name
        for get in call.users:
            calls[get.name] = group.name
            by_name[group.outputs[get.args[1]]] = get  # later groups read the getitem
    stable_topological_sort(gm)
    gm.graph.lint()
    gm.recompile()
    parts = {g.name: g.part for g in todo}
    graph.reannotate()
    for name, group in calls.items():
        info = graph.info[name]
        info.group = group
        info.part = parts[group] if info.part is None else info.part
    return PassResult(graph, True, {"outlined": len(todo)})
