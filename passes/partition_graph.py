"""Partition the graph across ``k`` devices: set ``info.part`` on every node.

Needs: a graph with cost annotations (``annotate_costs``) and ``ctx.options["k"]``. Other
options (all optional): ``mode`` (``pipeline`` | ``cut``), ``imbalance``, ``ncuts``, ``tries``,
``link``, ``microbatches``, ``schedule``, ``memory_cap``, ``speeds``, ``time_slack``, ``refine``,
``time_budget``, ``model``; the seed is ``ctx.seed`` and the device ``ctx.device``.

Guarantees: every node gets a part in ``0..k-1`` (parameters the lowest part that uses them);
in ``pipeline`` mode data flows only from lower to higher parts; the plan, a
:class:`~graphopt.partition_plan.Partition`, is left in ``ctx.artifacts["partition"]``. The fx
graph itself is not changed, so the model still runs as before. Deterministic for a fixed seed:
running the pass twice gives the same parts and reports ``modified=False`` the second time.

Complexity: see :mod:`graphopt.partition_search` (about O(k C^2 + E) per dynamic program plus a
few METIS runs; under a second for 20k nodes).
"""
from __future__ import annotations

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition_costgraph import CostGraph
from graphopt.partition_plan import Partition
from graphopt.partition_search import PartitionOptions, search
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["partition_graph", "options_from"]

_KEYS = ("mode", "imbalance", "ncuts", "tries", "link", "microbatches", "schedule",
         "memory_cap", "speeds", "time_slack", "refine", "time_budget")


def options_from(ctx: PassContext) -> PartitionOptions:
    """The pass options as :class:`PartitionOptions` (``k`` is required)."""
    if "k" not in ctx.options:
        raise PlanError("partition_graph needs options['k'], the number of parts")
    extra = {key: ctx.options[key] for key in _KEYS if ctx.options.get(key) is not None}
    return PartitionOptions(k=ctx.options["k"], seed=ctx.seed, device=ctx.device, **extra)


@register_pass("partition_graph")
def partition_graph(graph: Graph, ctx: PassContext) -> PassResult:
    opts = options_from(ctx)
    cg = CostGraph.from_graph(graph, opts.device)
    result = search(cg, opts)
    plan = Partition.from_search(cg, result, model=ctx.options.get("model", graph.name),
                                 options=opts)
    split = ctx.artifacts.get("split_ops") or {}
    if split:
        plan.notes.append("split for balance (split_ops): " + ", ".join(
            f"{name} -> {sum(1 for n in new if graph.info[n].flops > 0)} pieces"
            for name, new in split.items()))
    modified = plan.apply(graph)
    ctx.artifacts["partition"] = plan
    s = plan.summary()
    stats = {"k": opts.k, "mode": opts.mode, "method": plan.method,
             "comm_bytes": s["comm_bytes"], "imbalance": round(s["imbalance"], 6),
             "acyclic": s["acyclic"], "seconds": round(result.seconds, 4)}
    return PassResult(graph, modified, stats)
