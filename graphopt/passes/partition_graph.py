"""Partition the graph across ``k`` devices: set ``info.part`` on every node.

A thin pass over :func:`graphopt.partition.variants.partition_cut_variants` (read it for the
search over ways of cutting nodes into blocks, the ranking and its guarantees).

Needs: a graph with cost annotations (``annotate_costs``) and ``ctx.options["k"]``. Other
options (all optional): ``mode`` (``pipeline`` | ``cut``), ``imbalance`` (a tolerance on the
stages' predicted time, or on their FLOPs with ``balance="flops"``), ``ncuts``, ``tries``,
``link``, ``microbatches``, ``schedule``, ``memory_cap``, ``speeds``, ``time_slack``,
``refine``, ``time_budget``, ``objective``, ``model``, ``balance``, ``split``; the seed is
``ctx.seed`` and the device ``ctx.device``.

``split`` (the option's name, and the CLI's ``--split``, are kept for compatibility; it names
which node *cuts* to compare): ``off`` (default here; ``auto`` from the CLI) partitions the
graph as written; ``auto`` also each cut strategy; ``rows`` or ``nodes`` one of them.

Guarantees: every node gets a part in ``0..k-1`` (parameters the lowest part that uses them);
in ``pipeline`` mode data flows only from lower to higher parts; the plan, a
:class:`~graphopt.partition.plan.Partition`, is left in ``ctx.artifacts["partition"]`` and
is never worse on both bytes and slowest stage than a plan its table prints. The returned
graph is the input one, or a cut copy that computes the same outputs (its cuts in
``ctx.artifacts["split_ops"]``). Deterministic for a fixed seed: running the pass twice gives
the same parts and reports ``modified=False`` the second time.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition.choose import TIME_SLACK
from graphopt.partition.search import PartitionOptions
from graphopt.partition.variants import CUT_CHOICES, partition_cut_variants
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["partition_graph", "options_from", "SPLITS"]

_KEYS = ("mode", "imbalance", "ncuts", "tries", "link", "microbatches", "schedule",
         "memory_cap", "speeds", "time_slack", "refine", "time_budget", "objective", "balance")

SPLITS = CUT_CHOICES        # the ``split`` option's values (the CLI's ``--split``)


def options_from(ctx: PassContext) -> PartitionOptions:
    """The pass options as :class:`PartitionOptions` (``k`` is required)."""
    if "k" not in ctx.options:
        raise PlanError("partition_graph needs options['k'], the number of parts")
    extra = {key: ctx.options[key] for key in _KEYS if ctx.options.get(key) is not None}
    return PartitionOptions(k=ctx.options["k"], seed=ctx.seed, device=ctx.device, **extra)


@dataclass(frozen=True)
class PartitionGraphOptions:
    """The keys of :class:`~graphopt.partition.search.PartitionOptions` (``k`` required; see
    there), plus ``split`` (``auto``/``off``/``rows``/``nodes``: which ways of cutting nodes
    into blocks to compare, see :mod:`graphopt.partition.variants`) and
    ``model`` (the spec recorded in ``partition.json``). Seed and device come from the context."""

    k: int | None = None
    mode: Literal["pipeline", "cut"] = "pipeline"
    imbalance: float = 0.03
    ncuts: int | None = None
    tries: int | None = None
    link: str | None = None
    microbatches: int = 8
    schedule: Literal["gpipe", "1f1b", "interleaved", "zero-bubble"] = "1f1b"
    memory_cap: float | int | None = None
    speeds: tuple[float, ...] | None = None
    time_slack: float = TIME_SLACK
    refine: bool = True
    time_budget: float | None = None
    objective: Literal["volume", "time"] = "volume"
    model: str | None = None
    split: Literal["auto", "off", "rows", "nodes"] = "off"
    balance: Literal["time", "flops"] = "time"


@register_pass("partition_graph", options=PartitionGraphOptions, makes=("partition",))
def partition_graph(graph: Graph, ctx: PassContext) -> PassResult:
    start = time.perf_counter()
    opts = options_from(ctx)
    res = partition_cut_variants(graph, opts, str(ctx.options.get("split", "off")),
                                 model=ctx.options.get("model", graph.name))
    plan, best = res.plan, res.variant
    plan.seconds = time.perf_counter() - start     # every variant: cutting and searching
    changed = plan.apply(res.graph)
    ctx.artifacts["partition"] = plan
    if best.rewrite:
        ctx.artifacts.setdefault("split_ops", {}).update(best.rewrite)
    s = plan.summary()
    stats = {"k": opts.k, "mode": opts.mode, "method": plan.method, "split": best.name,
             "comm_bytes": s["comm_bytes"], "imbalance": round(s["imbalance"], 6),
             "time_imbalance": round(s["time_imbalance"], 6), "acyclic": s["acyclic"],
             "seconds": round(plan.seconds, 4)}
    return PassResult(res.graph, changed or best.name != "whole", stats)
