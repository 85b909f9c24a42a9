"""Write a remat plan into the joint graph: recomputation placed just before its first use.

Needs a joint graph, the :class:`~graphopt.memory.remat.problem.RematProblem` built from it and a plan's
:class:`~graphopt.memory.remat.problem.Evaluation`. For every backward stage, in order, the forward
values it reads that the plan does not save are replaced by copies of their forward nodes,
inserted right before the stage (or at the stage the plan chose): a recomputed tensor once per
segment, where the segment starts, then reused until the segment's last need (a value
recomputed in several segments gets a fresh copy at each start, so the previous one dies after
its last reader; a saved value's later segments read copies, so the forward's tensor dies after
its last read before them); a view or tuple op afresh at every stage that needs it. The copies are tagged
``is_backward`` and carry ``meta["recompute_of"]``.

Guarantees: the graph computes the same outputs and gradients (the copies are the same pure ops
on the same values); afterwards the only forward values the backward part reads are the ones the
plan saves, so aot_autograd's default partitioner saves exactly those, and the recomputation
stays where it was placed, so the recomputed tensors are never all alive at once.
Complexity: O(V + E) plus the copies.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.fx
import torch.utils._pytree as pytree

from graphopt.graph import annotate_node
from graphopt.memory.remat.problem import SAVED, Evaluation, RematProblem

__all__ = ["apply_plan", "RECOMPUTE_META"]

RECOMPUTE_META = "recompute_of"


def apply_plan(graph, p: RematProblem, ev: Evaluation,
               num_fwd_outputs: int | None = None) -> list[str]:
    """Rewrite ``graph`` (a :class:`~graphopt.graph.Graph`) in place; returns the new nodes.

    Example:
        >>> sol = solve_greedy(problem, budget)
        >>> new_nodes = apply_plan(graph, problem, sol.evaluation)
    """
    fx = graph.gm.graph
    by_name = {n.name: n for n in fx.nodes}
    cand = {name: i for i, name in enumerate(p.names)}
    at_stage: dict[int, list[int]] = defaultdict(list)
    for v, segs in ev.segments.items():
        for s, _ in segs:
            at_stage[s].append(v)
    made: dict[int, torch.fx.Node] = {}
    created: list[torch.fx.Node] = []

    for t, stage_name in enumerate(p.stage_names):
        stage = by_name[stage_name]
        local: dict[int, torch.fx.Node] = {}
        for v in at_stage.get(t, ()):
            made.pop(v, None)  # a new segment: a fresh copy (the last one dies after its reads)

        def kept(u: int, t: int = t) -> bool:
            """Whether the forward's own copy of ``u`` serves stage ``t``."""
            return ev.state[u] == SAVED and t <= ev.kept[u]

        def value(v: int, local: dict = local, kept=kept) -> torch.fx.Node:
            """The node that holds candidate ``v`` at this stage, creating copies as needed."""
            if kept(v):
                return by_name[p.names[v]]
            memo = made if p.holdable[v] else local
            if v in memo:
                return memo[v]
            # Post-order over not-yet-made inputs, iteratively: chains can be long.
            stack = [(v, False)]
            while stack:
                x, ready = stack.pop()
                xmemo = made if p.holdable[x] else local
                if x in xmemo or kept(x):
                    continue
                orig = by_name[p.names[x]]
                todo = [cand[a.name] for a in orig.all_input_nodes if a.name in cand]
                todo = [u for u in todo if not kept(u)
                        and u not in (made if p.holdable[u] else local)]
                if not ready and todo:
                    stack.append((x, True))
                    stack.extend((u, False) for u in todo)
                    continue
                xmemo[x] = _copy(fx, orig, cand, made, local, by_name, kept, p)
                created.append(xmemo[x])
            return memo[v]

        with fx.inserting_before(stage):
            for v in sorted(at_stage.get(t, ())):
                value(v)
            if stage.op == "output":
                _rewire_outputs(stage, cand, value, num_fwd_outputs or 0)
            else:
                for a in list(dict.fromkeys(stage.all_input_nodes)):
                    if a.name in cand:
                        stage.replace_input_with(a, value(cand[a.name]))

    for node in created:
        graph.info[node.name] = annotate_node(node)
    fx.lint()
    graph.gm.recompile()
    return [n.name for n in created]


def _copy(fx: torch.fx.Graph, orig: torch.fx.Node, cand, made, local, by_name, kept, p):
    def arg(a: torch.fx.Node) -> torch.fx.Node:
        if a.name not in cand:
            return a
        u = cand[a.name]
        if kept(u):
            return by_name[a.name]
        return (made if p.holdable[u] else local)[u]

    args = torch.fx.node.map_arg(orig.args, arg)
    kwargs = torch.fx.node.map_arg(orig.kwargs, arg)
    node = fx.create_node(orig.op, orig.target, args, kwargs, name=f"{orig.name}_recompute")
    node.meta = dict(orig.meta)
    node.meta["partitioner_tag"] = "is_backward"
    node.meta[RECOMPUTE_META] = orig.name
    return node


def _rewire_outputs(out: torch.fx.Node, cand, value, num_fwd: int) -> None:
    """Gradients that are forward values read the plan's copy; forward outputs stay."""
    flat, spec = pytree.tree_flatten(out.args)
    new = [value(cand[a.name]) if i >= num_fwd and isinstance(a, torch.fx.Node) and
           a.name in cand else a for i, a in enumerate(flat)]
    out.args = pytree.tree_unflatten(new, spec)
