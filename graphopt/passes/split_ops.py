"""Cut nodes so a pipeline stage boundary can land inside them (the rewrite is
:mod:`graphopt.partition.cut_rewrite`; where to cut, :func:`graphopt.partition.cut_plan.plan_cuts`).

Options (:class:`SplitOpsOptions`): ``split``: ``rows`` (default), ``nodes`` or ``off``; ``k``
(required), ``imbalance`` and ``speeds`` as for ``partition_graph``, which also runs this
rewrite itself when asked to compare plans with and without cuts (``split`` option).

Guarantees: the graph computes the same outputs; ``ctx.artifacts["split_ops"]`` maps each cut to
its new nodes. A graph that was cut already is left alone, so the pass is idempotent.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition.cut_plan import plan_cuts
from graphopt.partition.cut_rewrite import apply_cuts
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["split_ops"]


@dataclass(frozen=True)
class SplitOpsOptions:
    """``split``: ``rows`` (token blocks of row-wise regions; ``auto`` means the same here),
    ``nodes`` or ``off``; ``k``, ``imbalance`` and ``speeds`` as for ``partition_graph``: the
    cuts are placed around its ideal stage boundaries."""

    k: int | None = None
    split: Literal["auto", "off", "rows", "nodes"] = "rows"
    imbalance: float = 0.03
    speeds: tuple[float, ...] | None = None


@register_pass("split_ops", options=SplitOpsOptions, makes=("split_ops",))
def split_ops(graph: Graph, ctx: PassContext) -> PassResult:
    opts = ctx.options_for("split_ops")
    if opts.split == "off" or any("split_of" in i.extra for i in graph.nodes()):
        return PassResult(graph, False, {"split": 0})
    if opts.k is None:
        raise PlanError("split_ops needs options['k'], the number of parts")
    strategy = "rows" if opts.split == "auto" else opts.split
    cuts = plan_cuts(graph, opts.k, opts.imbalance, opts.speeds, strategy, device=ctx.device)
    done = apply_cuts(graph, cuts)
    if not done:
        return PassResult(graph, False, {"split": 0})
    ctx.artifacts.setdefault("split_ops", {}).update(done)
    return PassResult(graph, True, {"split": len(done),
                                    "blocks": sum(len(c.blocks) for c in cuts)})
