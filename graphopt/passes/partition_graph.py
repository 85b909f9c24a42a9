"""Partition the graph across ``k`` devices: set ``info.part`` on every node.

Needs: a graph with cost annotations (``annotate_costs``) and ``ctx.options["k"]``. Other
options (all optional): ``mode`` (``pipeline`` | ``cut``), ``imbalance``, ``ncuts``, ``tries``,
``link``, ``microbatches``, ``schedule``, ``memory_cap``, ``speeds``, ``time_slack``, ``refine``,
``time_budget``, ``objective``, ``model``, ``split``; the seed is ``ctx.seed`` and the device
``ctx.device``.

``split`` (default ``off`` here, ``auto`` from the CLI): with ``auto`` the graph is partitioned
as written and after each cut strategy of :mod:`graphopt.partition.split_plan` (token blocks of row-wise
regions; single nodes cut around the ideal boundaries), and the plan kept is the one the ranking
rule of :mod:`graphopt.partition.choose` prefers (bytes first; time only beyond ``time_slack``;
with equal bytes the plan with fewer cut blocks, since each costs kernel launches): a boundary
inside a transformer FFN block can send a quarter of what the nearest node boundary sends.
``rows`` or ``nodes`` compares one strategy with the graph as written.

Guarantees: every node gets a part in ``0..k-1`` (parameters the lowest part that uses them);
in ``pipeline`` mode data flows only from lower to higher parts; the plan, a
:class:`~graphopt.partition.plan.Partition`, is left in ``ctx.artifacts["partition"]``. The
returned graph is the input one, or a split copy that computes the same outputs. A graph that was
split already is not split again. Deterministic for a fixed seed: running the pass twice gives
the same parts and reports ``modified=False`` the second time.

Complexity: see :mod:`graphopt.partition.search` (about O(k C^2 + E) per dynamic program plus a
few METIS runs and one MILP of at most two seconds; a second or two for 20k nodes), once per
variant: with ``split="auto"`` up to nineteen searches (each cut variant twice: all offered cuts,
then only those the plan used, the second without the MILP; and where the plan used more cuts
than it has boundaries and its slowest stage is over twice the model's compute over ``k``, the
same again with one cut per ideal boundary).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Literal

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition.choose import FIXED_SLACK, TIME_SLACK, best_plan, choice_notes
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.cut_rewrite import apply_splits
from graphopt.partition.metrics import pipeline_estimate
from graphopt.partition.plan import Partition
from graphopt.partition.search import PartitionOptions, SearchResult, fastest, fewest_bytes, search
from graphopt.partition.split_plan import BALANCES, STRATEGIES, plan_splits, prune_cuts
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["partition_graph", "options_from", "SPLITS"]

_KEYS = ("mode", "imbalance", "ncuts", "tries", "link", "microbatches", "schedule",
         "memory_cap", "speeds", "time_slack", "refine", "time_budget", "objective")


def options_from(ctx: PassContext) -> PartitionOptions:
    """The pass options as :class:`PartitionOptions` (``k`` is required)."""
    if "k" not in ctx.options:
        raise PlanError("partition_graph needs options['k'], the number of parts")
    extra = {key: ctx.options[key] for key in _KEYS if ctx.options.get(key) is not None}
    return PartitionOptions(k=ctx.options["k"], seed=ctx.seed, device=ctx.device, **extra)


SPLITS = ("auto", "off") + STRATEGIES


@dataclass
class _Variant:
    """The graph partitioned as written, or cut by one ``split_ops`` strategy first."""

    name: str
    graph: Graph
    split: dict
    cg: CostGraph | None = None
    result: SearchResult | None = None
    cuts: list = field(default_factory=list)


def _searched(name: str, graph: Graph, split: dict, opts: PartitionOptions) -> _Variant | None:
    """Partition one variant; a cut variant that admits no plan is skipped (``None``)."""
    v = _Variant(name, graph, split, CostGraph.from_graph(graph, opts.device))
    try:
        v.result = search(v.cg, opts)
    except PlanError:
        if name == "whole":
            raise
        return None
    return v


def _split_variant(graph: Graph, opts: PartitionOptions, strategy: str, balance: str,
                   seen: set, giants: bool = False, floor_seconds: float = 0.0
                   ) -> _Variant | None:
    """Cut a copy at every offered point and partition it (:func:`_cut_and_search`). Where the
    plan used more cuts than there are boundaries (a decoder layer's token blocks, each split
    again at its own node boundary), also cut at one point per ideal boundary only. The plan
    the ranking rule prefers is kept.

    That second search can only win on the fixed-cost limit of
    :func:`~graphopt.partition.choose.gives_way`: a slowest stage more than ``1 + FIXED_SLACK``
    times its own. No plan's slowest stage is below ``floor_seconds`` (the model's compute over
    ``k``), so where the first plan is within that factor of it the search is skipped; it
    doubles the time of a large model's partition otherwise."""
    name = f"{strategy}/{balance}" + ("+giants" if giants else "")
    tried = []
    for spread in (True, False):
        if not spread and tried and tried[0].result.best.metrics.bottleneck_seconds <= \
                (1 + FIXED_SLACK) * floor_seconds:
            break
        cuts = plan_splits(graph, opts.k, opts.imbalance, opts.speeds, strategy, balance,
                           opts.device, giants, spread=spread)
        key = tuple((tuple(c.nodes), tuple(c.cuts)) for c in cuts)
        if not cuts or key in seen:
            continue
        seen.add(key)
        found = _cut_and_search(graph, opts, name, cuts)
        if found is not None:
            tried.append(found)
        if found is None or sum(len(c.cuts) for c in found.cuts) <= opts.k - 1:
            break
    return _pick(tried, opts) if tried else None


def _cut_and_search(graph: Graph, opts: PartitionOptions, name: str, cuts: list
                    ) -> _Variant | None:
    """Partition a copy cut at ``cuts``, then a fresh copy cut at only the points the plan's
    boundaries used (each unused block costs kernel launches); the better plan is kept."""
    g = graph.copy()
    first = _searched(name, g, apply_splits(g, cuts), opts)
    if first is None:
        return None
    first.cuts = cuts
    parts = dict(zip(first.cg.names, first.result.best.part.tolist()))
    kept = prune_cuts(cuts, parts)
    if not kept:
        return first          # no boundary used a cut: the plan as written covers it
    g = graph.copy()
    split = apply_splits(g, kept)
    # the first search's exact placement chose these cuts: not repeated (where the second
    # plan sends more, the first is kept)
    second = _searched(first.name, g, split, replace(opts, milp=False))
    if second is None:
        return first
    second.cuts = kept
    return _pick([first, second], opts)


def _floor_seconds(whole: _Variant, opts: PartitionOptions) -> float:
    """A lower bound on any plan's slowest stage: the model's compute as written over ``k``
    (cutting a node adds launches, never removes work). 0 with per-device speeds, where the
    bound would need their sum."""
    if opts.speeds:
        return 0.0
    return sum(whole.result.best.metrics.part_seconds) / opts.k


def _variants(graph: Graph, opts: PartitionOptions, split: str
              ) -> tuple[list[_Variant], PlanError | None]:
    if split not in SPLITS:
        raise PlanError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        out, error = [_searched("whole", graph, {}, opts)], None
    except PlanError as e:          # e.g. one node holds most of the FLOPs: cutting it may do
        out, error = [], e
    if split == "off" or opts.k < 2 or any("split_of" in i.extra for i in graph.nodes()):
        if error is not None:
            raise error
        return out, None
    seen: set = set()
    floor = _floor_seconds(out[0], opts) if out else 0.0
    for strategy in (STRATEGIES if split == "auto" else (split,)):
        for balance in BALANCES:
            v = _split_variant(graph, opts, strategy, balance, seen, floor_seconds=floor)
            if v is not None:
                out.append(v)
        if strategy == "nodes":
            v = _split_variant(graph, opts, strategy, "flops", seen, giants=True,
                               floor_seconds=floor)
            if v is not None:
                out.append(v)
    if not out:
        raise error
    return out, error


def _pick(found: list[_Variant], opts: PartitionOptions) -> _Variant:
    """The variant whose plan the library's ranking rule keeps (balance asked for first)."""
    return best_plan(found, lambda v: v.result.best.metrics, opts.objective, opts.time_slack,
                     admissible=lambda v: v.result.eps_used <= opts.imbalance + 1e-12,
                     simplicity=lambda v: sum(len(c.cuts) for c in v.cuts))


def _choice_notes(best: _Variant, found: list[_Variant], opts: PartitionOptions) -> list[str]:
    """The ranking rule's notes over every variant: a plan sending fewer bytes than the kept
    one, or the hand-made split of the model as written sending fewer, and why not them."""
    same = [v for v in found if v.result.eps_used <= best.result.eps_used + 1e-12]
    fewest = [c.metrics for v in same for c in [fewest_bytes(v.result, opts.mode)] if c]
    quick = [c.metrics for v in same for c in [fastest(v.result, opts.mode)] if c]
    whole = found[0] if found[0].name == "whole" else None
    equal = whole.result.baselines["equal_flops"].metrics if whole else None
    return choice_notes(best.result.best.metrics,
                        min(fewest, key=lambda m: m.comm_bytes, default=None), equal,
                        objective=opts.objective, time_slack=opts.time_slack,
                        imbalance=best.result.eps_used,
                        equal_admissible=whole is not None and
                        whole.result.equal_admissible(best.result.eps_used),
                        fastest=min(quick, key=lambda m: m.bottleneck_seconds, default=None))


def _summary(v: _Variant) -> str:
    m = v.result.best.metrics
    return (f"{v.name}: {m.comm_bytes:,} B sent, imbalance {m.imbalance:.1%}, slowest stage "
            f"{m.bottleneck_seconds * 1e6:,.1f} us")


@dataclass(frozen=True)
class PartitionGraphOptions:
    """The keys of :class:`~graphopt.partition.search.PartitionOptions` (``k`` required; see
    there), plus ``split`` (``auto``/``off``/``rows``/``nodes``, see the module docstring) and
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


@register_pass("partition_graph", options=PartitionGraphOptions, makes=("partition",))
def partition_graph(graph: Graph, ctx: PassContext) -> PassResult:
    start = time.perf_counter()
    opts = options_from(ctx)
    found, unsplit_error = _variants(graph, opts, str(ctx.options.get("split", "off")))
    best = _pick(found, opts)
    graph = best.graph
    plan = Partition.from_search(best.cg, best.result, model=ctx.options.get("model", graph.name),
                                 options=opts)
    plan.options["split"] = best.name
    plan.seconds = time.perf_counter() - start     # every variant: cutting and searching
    plan.splits = [c.to_dict() for c in best.cuts]
    plan.notes = list(best.result.notes) + _choice_notes(best, found, opts)
    if unsplit_error is not None:
        plan.notes.append(f"the graph as written admits no plan ({unsplit_error}); cut first")
    if best.cuts:
        plan.notes.append("cut so stage boundaries can land inside (split_ops): " + ", ".join(
            f"{c.label} -> {len(c.cuts) + 1} blocks" for c in best.cuts))
    if len(found) > 1 or found[0].name != "whole":
        plan.notes.append("plans compared (kept " + best.name + "): " +
                          "; ".join(_summary(v) for v in found))
    if len(found) > 1 and found[0].name == "whole":
        as_written = found[0].result.baselines["equal_flops"]
        plan.baselines["equal_flops_as_written"] = dict(
            as_written.row(), estimate=pipeline_estimate(as_written.metrics, plan.microbatches))
    changed = plan.apply(graph)
    modified = changed or best.name != "whole"
    ctx.artifacts["partition"] = plan
    if best.split:
        ctx.artifacts.setdefault("split_ops", {}).update(best.split)
    s = plan.summary()
    stats = {"k": opts.k, "mode": opts.mode, "method": plan.method, "split": best.name,
             "comm_bytes": s["comm_bytes"], "imbalance": round(s["imbalance"], 6),
             "acyclic": s["acyclic"], "seconds": round(plan.seconds, 4)}
    return PassResult(graph, modified, stats)
