"""The plan over ways of cutting the graph: the graph as written, and cut first by each strategy.

Needs: a :class:`~graphopt.graph.Graph` with cost annotations (``annotate_costs``) and
:class:`~graphopt.partition.search.PartitionOptions`. :func:`partition_cut_variants` is the one
call: with ``cut="auto"`` the graph is partitioned as written and after each cut strategy of
:mod:`graphopt.partition.cut_plan` (token blocks of row-wise regions; single nodes cut around the
ideal boundaries), and the plan kept is the one the ranking rule of
:mod:`graphopt.partition.choose` prefers (bytes first; time only beyond ``time_slack``; with
equal bytes the plan with fewer blocks, since each costs kernel launches): a boundary inside a
transformer FFN block can send a quarter of what the nearest node boundary sends. ``rows`` or
``nodes`` compares one strategy with the graph as written; ``off`` partitions it as written.

Guarantees: the plan kept is never *dominated* (more bytes and a slower slowest stage) by any
plan any variant's search made, the baselines each prints included (the graph as written's
equal-FLOPs split among them); a graph that was cut already is not cut again; deterministic for
a fixed seed.

Complexity: see :mod:`graphopt.partition.search`, once per variant: with ``cut="auto"`` up to
nineteen searches (each cut variant twice: every offered cut, then only those the plan used,
the second without the MILP; and where the plan used more cuts than it has boundaries and its
slowest stage is over twice the model's compute over ``k``, the same again with one cut per
ideal boundary).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition.choose import FIXED_SLACK, best_plan, choice_notes, undominated
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.cut_plan import BALANCES, STRATEGIES, plan_cuts, prune_cuts
from graphopt.partition.cut_rewrite import apply_cuts
from graphopt.partition.plan import Partition
from graphopt.partition.search import (
    PartitionOptions,
    SearchResult,
    fastest,
    fewest_bytes,
    guard_pool,
    search,
)

__all__ = ["CUT_CHOICES", "Variant", "CutPlan", "partition_cut_variants"]

# what ``cut`` may be: every strategy and the graph as written (``auto``), the graph as written
# only (``off``), or it and one strategy
CUT_CHOICES = ("auto", "off") + STRATEGIES


@dataclass
class Variant:
    """The graph partitioned as written, or cut by one strategy first."""

    name: str
    graph: Graph
    rewrite: dict                 # what the cut rewrite did (``split_ops`` artifact), {} if uncut
    cg: CostGraph | None = None
    result: SearchResult | None = None
    cuts: list = field(default_factory=list)

    @property
    def blocks(self) -> int:
        """Cut points used (each adds a block, and its kernel launches)."""
        return sum(len(c.cuts) for c in self.cuts)


@dataclass
class CutPlan:
    """What :func:`partition_cut_variants` returns: the graph the plan is for (the input one,
    or a cut copy computing the same outputs), the plan, and the variant it came from."""

    graph: Graph
    plan: Partition
    variant: Variant
    variants: list[Variant]


def _searched(name: str, graph: Graph, rewrite: dict, opts: PartitionOptions) -> Variant | None:
    """Partition one variant; a cut variant that admits no plan is skipped (``None``)."""
    v = Variant(name, graph, rewrite, CostGraph.from_graph(graph, opts.cost_model))
    try:
        v.result = search(v.cg, opts)
    except PlanError:
        if name == "whole":
            raise
        return None
    return v


def _cut_variant(graph: Graph, opts: PartitionOptions, strategy: str, balance: str,
                 seen: set, giants: bool = False, floor_seconds: float = 0.0) -> Variant | None:
    """Cut a copy at every offered point and partition it (:func:`_cut_and_search`). Where the
    plan used more cuts than there are boundaries (a decoder layer's token blocks, each cut
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
        cuts = plan_cuts(graph, opts.k, opts.imbalance, opts.speeds, strategy, balance,
                         opts.cost_model, giants, spread=spread)
        key = tuple((tuple(c.nodes), tuple(c.cuts)) for c in cuts)
        if not cuts or key in seen:
            continue
        seen.add(key)
        found = _cut_and_search(graph, opts, name, cuts)
        if found is not None:
            tried.append(found)
        if found is None or found.blocks <= opts.k - 1:
            break
    return _pick(tried, opts) if tried else None


def _cut_and_search(graph: Graph, opts: PartitionOptions, name: str, cuts: list
                    ) -> Variant | None:
    """Partition a copy cut at ``cuts``, then a fresh copy cut at only the points the plan's
    boundaries used (each unused block costs kernel launches); the better plan is kept."""
    g = graph.copy()
    first = _searched(name, g, apply_cuts(g, cuts), opts)
    if first is None:
        return None
    first.cuts = cuts
    parts = dict(zip(first.cg.names, first.result.best.part.tolist()))
    kept = prune_cuts(cuts, parts)
    if not kept:
        return first          # no boundary used a cut: the plan as written covers it
    g = graph.copy()
    rewrite = apply_cuts(g, kept)
    # the first search's exact placement chose these cuts: not repeated (where the second
    # plan sends more, the first is kept)
    second = _searched(first.name, g, rewrite, replace(opts, milp=False))
    if second is None:
        return first
    second.cuts = kept
    return _pick([first, second], opts)


def _floor_seconds(whole: Variant, opts: PartitionOptions) -> float:
    """A lower bound on any plan's slowest stage: the model's compute as written over ``k``
    (cutting a node adds launches, never removes work). 0 with per-device speeds, where the
    bound would need their sum."""
    if opts.speeds:
        return 0.0
    return sum(whole.result.best.metrics.part_seconds) / opts.k


def _variants(graph: Graph, opts: PartitionOptions, cut: str
              ) -> tuple[list[Variant], PlanError | None]:
    if cut not in CUT_CHOICES:
        raise PlanError(f"split must be one of {', '.join(CUT_CHOICES)}, got {cut!r}")
    try:
        out, error = [_searched("whole", graph, {}, opts)], None
    except PlanError as e:          # e.g. one node holds most of the work: cutting it may do
        out, error = [], e
    if cut == "off" or opts.k < 2 or any("split_of" in i.extra for i in graph.nodes()):
        if error is not None:
            raise error
        return out, None
    seen: set = set()
    floor = _floor_seconds(out[0], opts) if out else 0.0
    for strategy in (STRATEGIES if cut == "auto" else (cut,)):
        for balance in BALANCES:
            v = _cut_variant(graph, opts, strategy, balance, seen, floor_seconds=floor)
            if v is not None:
                out.append(v)
        if strategy == "nodes":
            v = _cut_variant(graph, opts, strategy, "flops", seen, giants=True,
                             floor_seconds=floor)
            if v is not None:
                out.append(v)
    if not out:
        raise error
    return out, error


def _pick(found: list[Variant], opts: PartitionOptions) -> Variant:
    """The variant whose plan the library's ranking rule keeps (balance asked for first)."""
    return best_plan(found, lambda v: v.result.best.metrics, opts.objective, opts.time_slack,
                     admissible=lambda v: v.result.eps_used <= opts.imbalance + 1e-12,
                     simplicity=lambda v: v.blocks)


def _guard(best: Variant, found: list[Variant], opts: PartitionOptions
           ) -> tuple[Variant, str | None]:
    """No plan any variant made (stage-ordered in pipeline mode, within the memory cap) may
    dominate the one kept; where one does, it is kept instead, with a note saying why."""
    pool = [(v, c) for v in found
            for c in guard_pool(v.cg, v.result.candidates, v.result.budget, opts.mode)]
    chosen = (best, best.result.best)
    v, c = undominated(chosen, pool, lambda vc: vc[1].metrics)
    if (v, c) == chosen:
        return best, None
    was = best.result.best.metrics
    v.result.best = c
    return v, (f"kept {v.name}'s {c.method} ({c.metrics.comm_bytes:,} B, slowest stage "
               f"{c.metrics.bottleneck_seconds * 1e6:,.1f} us, time imbalance "
               f"{c.metrics.time_imbalance:.1%}) over the ranking rule's {best.name} plan "
               f"({was.comm_bytes:,} B, {was.bottleneck_seconds * 1e6:,.1f} us): it sends "
               "fewer bytes and its slowest stage is faster")


def _choice_notes(best: Variant, found: list[Variant], opts: PartitionOptions) -> list[str]:
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
                        fastest=min(quick, key=lambda m: m.bottleneck_seconds, default=None),
                        balance=best.result.budget.by)


def _summary(v: Variant) -> str:
    m = v.result.best.metrics
    return (f"{v.name}: {m.comm_bytes:,} B sent, time imbalance {m.time_imbalance:.1%}, "
            f"slowest stage {m.bottleneck_seconds * 1e6:,.1f} us")


def partition_cut_variants(graph: Graph, opts: PartitionOptions, cut: str = "off", *,
                           model: str | None = None) -> CutPlan:
    """Partition ``graph`` as written and cut by each strategy ``cut`` names (module
    docstring); the plan kept, with its notes, the graph it is for, and every variant.

    Example:
        >>> res = partition_cut_variants(graph, PartitionOptions(k=4), cut="auto")
        >>> res.plan.summary()["comm_bytes"], res.variant.name, res.plan.splits
    """
    found, unsplit_error = _variants(graph, opts, cut)
    best, guarded = _guard(_pick(found, opts), found, opts)
    plan = Partition.from_search(best.cg, best.result, model=model or graph.name, options=opts)
    plan.options["split"] = best.name
    plan.splits = [c.to_dict() for c in best.cuts]
    plan.notes = list(best.result.notes) + _choice_notes(best, found, opts)
    if guarded:
        plan.notes.append(guarded)
    if unsplit_error is not None:
        plan.notes.append(f"the graph as written admits no plan ({unsplit_error}); cut first")
    if best.cuts:
        plan.notes.append("cut so stage boundaries can land inside: " + ", ".join(
            f"{c.label} -> {len(c.cuts) + 1} blocks" for c in best.cuts))
    if len(found) > 1 or found[0].name != "whole":
        plan.notes.append("plans compared (kept " + best.name + "): " +
                          "; ".join(_summary(v) for v in found))
    if len(found) > 1 and found[0].name == "whole":
        as_written = found[0].result.baselines["equal_flops"]
        plan.baselines["equal_flops_as_written"] = dict(
            as_written.row(), estimate=plan.estimate(as_written.metrics))
    return CutPlan(best.graph, plan, best, found)
