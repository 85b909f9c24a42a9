"""Search for the plan: every method run side by side, the best kept, the baselines measured.

Needs: a :class:`~graphopt.partition.costgraph.CostGraph` and :class:`PartitionOptions`.
Guarantees: in ``pipeline`` mode the plan is acyclic and stage-ordered; every plan respects the
FLOPs budget (relaxed, with a note, only when no plan meets it) and the memory cap; every node
has a part in ``0..k-1``; the same inputs and seed give the same plan.

``pipeline`` mode candidates, each refined afterwards by :func:`~graphopt.partition.refine.refine`:

1. the exact contiguous-split DP along the graph's own topological order (and the refined
   equal-FLOPs split, so the hand-made plan is always among the candidates);
2. for each METIS run (seed ``seed + t``, best of ``ncuts``): the DP along the topological order
   guided by METIS' repaired labels, and the repaired METIS partition itself after balance-FM.

Each DP runs twice: fewest bytes within ``time_slack`` of its fastest split, and fewest bytes of
any split within the FLOPs budget (the floor of that order,
:func:`~graphopt.partition.floor.contiguous_floor`). Last, the MILP of :mod:`graphopt.partition.milp`
places every node exactly on graphs up to 1,500 nodes, or the nodes near the best plan's
boundaries on larger ones (``milp`` option; 2 s time limit). The plan is chosen
among those within the FLOPs budget and the memory cap by the one ranking rule of
:mod:`graphopt.partition.choose`: bytes first, the step-time estimate only where it differs by
more than ``time_slack`` (10%); ``objective="time"`` takes the fastest instead. ``cut`` mode keeps
the least volume over METIS' general k-way answers after unordered refinement and every
``pipeline`` candidate (a stage-ordered plan is a placement too). Baselines: the equal-FLOPs
contiguous split of the graph order (what a user does by hand) and the optimal contiguous split by
min-max DP (PipeDream).

Complexity: a few METIS runs plus O(k C^2 + E) per DP and O(moves * degree) per refinement pass.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from graphopt.costmodel.presets import DEVICES, LINKS, default_link
from graphopt.costmodel.target import CostModel, Target, as_cost_model
from graphopt.errors import PlanError
from graphopt.partition.acyclic import guided_order, rank_labels, renumber_topologically, repair
from graphopt.partition.choose import OBJECTIVES, TIME_SLACK, best_plan, choice_notes, undominated
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import (
    BALANCE_BY,
    Budget,
    balance_weight,
    cuts_to_parts,
    equal_flops_split,
    make_budget,
    split_order,
)
from graphopt.partition.fits import (
    admissible,
    every_part_works,
    fastest,
    fewest_bytes,
    guard_pool,
    least_feasible_eps,
    memory_error,
    within_budget,
    within_memory,
)
from graphopt.partition.metis import metis_csr, metis_labels
from graphopt.partition.metrics import Metrics, compute_metrics
from graphopt.partition.milp import place, refine_near_boundaries
from graphopt.partition.refine import rebalance, refine

__all__ = ["PartitionOptions", "Candidate", "SearchResult", "search", "check_early", "MODES",
           "OBJECTIVES", "TIME_SLACK", "default_link", "ordered_parts", "within_budget",
           "within_memory", "BALANCE_BY", "guard_pool", "every_part_works", "admissible",
           "fewest_bytes", "fastest"]

MODES = ("pipeline", "cut")
@dataclass
class PartitionOptions:
    """What to partition for. ``None`` fields take defaults that scale with the graph.

    Attributes:
        k: parts (devices / pipeline stages).
        mode: ``pipeline`` (acyclic, stage-ordered) or ``cut`` (any k-way placement).
        imbalance: allowed ``max stage time / (total / k) - 1`` over the stages' predicted
            compute time (``balance="time"``, the default) or their FLOPs (``"flops"``).
        balance: what ``imbalance`` bounds: ``time`` (the cost model's predicted seconds of
            each node, ``CostGraph.seconds``) or ``flops``.
        seed: METIS seed (runs use ``seed``, ``seed + 1``, ...).
        ncuts: METIS' best-of-N cuts per run; tries: METIS runs with different seeds.
        device, link: the cost model stages are priced with (a :class:`~graphopt.costmodel.CostModel`
            or :class:`~graphopt.costmodel.Target` value, or a preset key) and a link key
            overriding its link.
        microbatches: micro-batches per step, for the estimate and in-flight memory.
        schedule: ``1f1b`` or ``gpipe``: how many micro-batches' activations a stage holds.
        memory_cap: bytes per device (default: the device preset's memory).
        speeds: relative device speeds (METIS ``tpwgts`` and the stage-time model).
        time_slack: the time threshold: plans whose estimated slowest stage is within it of
            the fastest count as equally fast (and the DP's bytes pass may spend it).
        refine: run the FM refinement.
        time_budget: seconds after which no new optional step starts.
        objective: ``volume`` (fewest bytes among the plans within ``time_slack`` of the
            fastest) or ``time`` (the fastest); see :mod:`graphopt.partition.choose`.
        milp: refine the best plan near its boundaries by MILP (off for searches whose plan
            only decides which cuts to keep).
    """

    k: int
    mode: str = "pipeline"
    imbalance: float = 0.03
    seed: int = 0
    ncuts: int | None = None
    tries: int | None = None
    device: CostModel | Target | str = "h100"
    link: str | None = None
    microbatches: int = 8
    schedule: str = "1f1b"
    memory_cap: float | None = None
    speeds: list[float] | None = None
    time_slack: float = TIME_SLACK
    refine: bool = True
    time_budget: float | None = None
    objective: str = "volume"
    milp: bool = True
    balance: str = "time"

    @property
    def cost_model(self) -> CostModel:
        """The cost model stages are priced with: ``device`` (a value, or a preset key) over
        ``link`` when one is named."""
        return as_cost_model(self.device, self.link)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        cm = self.cost_model
        d["device"] = cm.target.key
        d["link"] = self.link if isinstance(self.link, str) or self.link is None else \
            cm.target.link_key
        d["priced_for"] = cm.describe()
        return d


@dataclass
class Candidate:
    """One plan the search produced, with its recomputed metrics."""

    method: str
    part: np.ndarray
    metrics: Metrics
    seconds: float = 0.0

    def row(self) -> dict:
        m = self.metrics
        return {"method": self.method, "comm_bytes": m.comm_bytes, "imbalance": m.imbalance,
                "time_imbalance": m.time_imbalance,
                "acyclic": m.acyclic, "stage_ordered": m.stage_ordered,
                "bottleneck_seconds": m.bottleneck_seconds, "seconds": self.seconds}


@dataclass
class SearchResult:
    best: Candidate
    baselines: dict[str, Candidate]
    candidates: list[Candidate]
    budget: Budget
    eps_used: float
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cg: CostGraph | None = None
    # what the ranking rule's choice left on the table (choose.choice_notes); kept apart from
    # ``notes`` so a caller ranking several searches can say it once, for its own choice
    choice: list[str] = field(default_factory=list)

    def equal_admissible(self, eps: float | None = None) -> bool:
        """Whether the equal-FLOPs split meets this search's budget, or the same budget at
        tolerance ``eps`` (to judge it by another plan's tolerance)."""
        eq = self.baselines["equal_flops"]
        b = self.budget
        if eps is not None:
            b = make_budget(self.cg, b.k, eps, speeds=b.speeds, mem_cap=b.mem_cap,
                            inflight=b.inflight, by=b.by)
        return within_budget(self.cg, eq.part, eq.metrics, b)


def check_early(k, imbalance) -> None:
    """The checks that need no graph: ``k`` and the imbalance range."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
        raise PlanError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise PlanError(f"k must be at least 1, got {k}")
    hi = max(1.0, k - 1.0)
    if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float)) or \
            not math.isfinite(imbalance) or not 0.0 <= imbalance <= hi:
        raise PlanError(f"imbalance must be in [0, {hi:g}] for k={k} (the slowest stage over "
                        f"the mean, minus 1, cannot exceed k - 1), got {imbalance}")


def _check(cg: CostGraph, o: PartitionOptions) -> None:
    check_early(o.k, o.imbalance)
    ncomp = cg.compute_count
    if o.k > ncomp:
        raise PlanError(f"k={o.k} is more than the {ncomp} compute nodes of {cg.name}: "
                        f"use k <= {ncomp}")
    if o.mode not in MODES:
        raise PlanError(f"mode must be one of {', '.join(MODES)}, got {o.mode!r}")
    if o.objective not in OBJECTIVES:
        raise PlanError(f"objective must be one of {', '.join(OBJECTIVES)}, got {o.objective!r}")
    if isinstance(o.device, str) and o.device not in DEVICES:
        raise PlanError(f"unknown device {o.device!r}; known: {', '.join(DEVICES)}")
    if isinstance(o.link, str) and o.link not in LINKS:
        raise PlanError(f"unknown link {o.link!r}; known: {', '.join(LINKS)}")
    if int(o.microbatches) < 1:
        raise PlanError(f"microbatches must be at least 1, got {o.microbatches}")
    if o.schedule not in ("1f1b", "gpipe"):
        raise PlanError(f"schedule must be 1f1b or gpipe, got {o.schedule!r}")
    if o.speeds is not None and (len(o.speeds) != o.k or any(not s > 0 for s in o.speeds)):
        raise PlanError(f"speeds needs {o.k} positive numbers, got {o.speeds}")
    if o.memory_cap is not None and not o.memory_cap > 0:
        raise PlanError(f"memory cap must be positive, got {o.memory_cap}")
    if o.balance not in BALANCE_BY:
        raise PlanError(f"balance must be one of {', '.join(BALANCE_BY)}, got {o.balance!r}")
    w, by = balance_weight(cg, o.balance)
    total = float(w.sum())
    if o.k > 1 and total > 0:
        heavy = int(np.argmax(np.where(cg.is_param, -1, w)))
        share = w[heavy] / total
        best = share * o.k - 1.0
        what = "predicted time" if by == "time" else "FLOPs"
        if share > 0.5 and best > o.imbalance:
            raise PlanError(
                f"cannot balance {o.k} parts: node {cg.names[heavy]!r} alone holds {share:.1%} of "
                f"the {what}, more than all other nodes together; the best achievable imbalance "
                f"is {best:.3g} ({cg.names[heavy]!r} alone in its part): pass --imbalance "
                f"{math.ceil(best * 1000) / 1000:g} to accept it, or use fewer parts")


def _inflight(o: PartitionOptions) -> np.ndarray:
    m, k = int(o.microbatches), o.k
    if o.schedule == "gpipe":
        return np.full(k, float(m))
    return np.array([float(min(m, k - s)) for s in range(k)])


class _Run:
    """Shared state of one search: the cost graph, link, budget and the candidate list."""

    def __init__(self, cg: CostGraph, o: PartitionOptions, budget: Budget, deadline: float):
        self.cg, self.o, self.budget, self.deadline = cg, o, budget, deadline
        link = o.cost_model.link
        self.alpha, self.beta = link.alpha, link.beta
        self.speeds = list(budget.speeds)
        self.cands: list[Candidate] = []
        # candidate cuts per stage boundary: the DPs cost O(k C^2), so fewer on huge graphs
        self.max_candidates = 512 if len(cg.movable) <= 50_000 else 256

    def metrics(self, part: np.ndarray) -> Metrics:
        return compute_metrics(self.cg, part, self.o.k, alpha=self.alpha, beta=self.beta,
                               speeds=self.speeds)

    def add(self, method: str, part: np.ndarray | None, start: float) -> Candidate | None:
        if part is None:
            return None
        c = Candidate(method, part, self.metrics(part), time.perf_counter() - start)
        self.cands.append(c)
        return c

    def dp(self, order, *, force=(), comm_time_limit=None, time_slack=None):
        slack = self.o.time_slack if time_slack is None else time_slack
        return split_order(self.cg, order, self.o.k, budget=self.budget, alpha=self.alpha,
                           beta=self.beta, time_slack=slack, force=list(force),
                           comm_time_limit=comm_time_limit, max_candidates=self.max_candidates)

    def refined(self, part, ordered: bool):
        if not self.o.refine or time.perf_counter() > self.deadline:
            return part
        return refine(self.cg, part, self.o.k, self.budget, alpha=self.alpha, beta=self.beta,
                      ordered=ordered, deadline=self.deadline)


def _baselines(run: _Run) -> dict[str, Candidate]:
    cg, k = run.cg, run.o.k
    order = cg.movable
    t0 = time.perf_counter()
    eq = cuts_to_parts(cg, order, equal_flops_split(cg, order, k))
    out = {"equal_flops": Candidate("equal_flops", eq, run.metrics(eq),
                                    time.perf_counter() - t0)}
    t0 = time.perf_counter()
    ub = out["equal_flops"].metrics.bottleneck_seconds
    # the min-max split with no balance asked (a stage may hold all but k - 1 nodes) but
    # within the memory cap, so that it is a plan the search may keep
    free = make_budget(cg, k, max(1.0, k - 1.0), speeds=run.budget.speeds,
                       mem_cap=run.budget.mem_cap, inflight=run.budget.inflight,
                       by=run.budget.by)
    cuts = split_order(cg, order, k, budget=free, alpha=run.alpha, beta=run.beta, time_ub=ub,
                       minimize_comm=False, max_candidates=run.max_candidates)
    if cuts is None:
        cuts = split_order(cg, order, k, budget=None, alpha=run.alpha, beta=run.beta,
                           time_ub=ub, minimize_comm=False, max_candidates=run.max_candidates)
    if cuts is not None:
        part = cuts_to_parts(cg, order, cuts)
        out["contiguous_dp"] = Candidate("contiguous_dp", part, run.metrics(part),
                                         time.perf_counter() - t0)
    return out


def _pipeline_candidates(run: _Run, base: dict[str, Candidate], labels: list[np.ndarray]):
    cg, k = run.cg, run.o.k

    def dp_candidates(name: str, order: np.ndarray, force=()) -> None:
        seen = set()
        # fewest bytes among the splits within the time threshold of the fastest, and the
        # fewest of all within the budget (the order's floor: the chooser weighs its time)
        for tag, limit, slack in (("", None, None), ("+bytes", None, math.inf)):
            if time.perf_counter() > run.deadline and run.cands:
                return
            start = time.perf_counter()
            cuts = run.dp(order, force=force, comm_time_limit=limit, time_slack=slack)
            if cuts is None or tuple(cuts) in seen:
                continue
            seen.add(tuple(cuts))
            run.add(f"dp:{name}{tag}", run.refined(cuts_to_parts(cg, order, cuts), True), start)

    dp_candidates("graph-order", cg.movable, [equal_flops_split(cg, cg.movable, k)])
    start = time.perf_counter()  # the refined hand-made split: a floor for the choice
    run.add("equal_flops+refine", run.refined(base["equal_flops"].part, True), start)
    for t, lab in enumerate(labels):
        if time.perf_counter() > run.deadline:
            return
        stage = repair(cg, rank_labels(cg, lab, k), k)
        dp_candidates(f"metis-order[{t}]", guided_order(cg, stage))
        if cg.n <= 50_000 and time.perf_counter() < run.deadline:
            start = time.perf_counter()
            fixed = rebalance(cg, cg.param_parts(stage, k), k, run.budget, alpha=run.alpha,
                              beta=run.beta, ordered=True, deadline=run.deadline)
            if fixed is not None:
                run.add(f"metis+repair[{t}]", run.refined(fixed, True), start)


_MILP_SECONDS = 2.0      # HiGHS time limit per search (its best plan so far is used after)
_MILP_WHOLE = 1_500      # movable nodes up to which the MILP places every node
_MILP_HOPS = 8           # otherwise: edges around a boundary within which nodes may move


def _milp_candidate(run: _Run) -> None:
    """Exact placement by MILP (:mod:`graphopt.partition.milp`): of every node on small graphs
    (HiGHS proves the optimum in about a second for a few hundred nodes), else of the nodes
    within a few edges of the best plan's boundaries, one part either way, the rest fixed: the
    moves of several nodes together (a projection and its rotary embedding, a norm and both
    branches it feeds) that no single FM move reaches, at a size that follows the boundaries,
    not the graph. It minimizes bytes within the FLOPs caps; the chooser still weighs its time."""
    cg, k = run.cg, run.o.k
    left = run.deadline - time.perf_counter()
    if k < 2 or left <= 0.2 or not run.o.milp:
        return
    start = time.perf_counter()
    limit = min(_MILP_SECONDS, left)
    if len(cg.movable) <= _MILP_WHOLE:
        res = place(cg, k, run.budget, np.zeros(cg.n, dtype=np.int64),
                    np.full(cg.n, k - 1, dtype=np.int64), time_limit=limit)
        name = "milp"
    else:
        pool = [c for c in run.cands if c.metrics.stage_ordered and
                within_budget(cg, c.part, c.metrics, run.budget)]
        if not pool:
            return
        seed = best_plan(pool, lambda c: c.metrics, run.o.objective, run.o.time_slack)
        res = refine_near_boundaries(cg, seed.part, k, run.budget, hops=_MILP_HOPS,
                                     time_limit=limit)
        name = f"milp:near({seed.method})"
    if res is not None and res.part is not None:
        run.add(name, res.part, start)


def _cut_candidates(run: _Run, labels: list[np.ndarray]):
    cg, k = run.cg, run.o.k
    for t, lab in enumerate(labels):
        start = time.perf_counter()
        part = cg.param_parts(np.where(lab < 0, 0, lab), k)
        m = run.metrics(part)
        if m.imbalance > run.budget.eps + 1e-9 and not run.budget.giant.any():
            part = rebalance(cg, part, k, run.budget, alpha=run.alpha, beta=run.beta,
                             ordered=False, deadline=run.deadline)
        if part is not None:
            run.add(f"metis[{t}]", run.refined(part, False), start)
    start = time.perf_counter()
    cuts = run.dp(cg.movable)
    if cuts is not None:
        run.add("dp:graph-order", run.refined(cuts_to_parts(cg, cg.movable, cuts), False), start)


def _choose(run: _Run) -> Candidate | None:
    """The ranking rule's plan among those within the budget, then the guard: no plan the
    search made (the baselines included) that fits the memory cap may send fewer bytes with a
    faster slowest stage (:func:`~graphopt.partition.choose.undominated`)."""
    ordered = [c for c in run.cands if run.o.mode != "pipeline" or c.metrics.stage_ordered
               or run.o.k == 1]
    cands = [c for c in ordered if within_budget(run.cg, c.part, c.metrics, run.budget)]
    # a part holding only parameters is no stage (the contract: every part holds a
    # non-parameter node); the DP's plans never do that, refinement's and METIS' may
    cands = [c for c in cands if every_part_works(run.cg, c.part, run.o.k)] or cands
    if not cands:
        return None
    if run.o.mode == "pipeline":
        best = best_plan(cands, lambda c: c.metrics, run.o.objective, run.o.time_slack)
    else:
        best = min(cands, key=lambda c: (c.metrics.comm_bytes, c.metrics.imbalance))
    return undominated(best, guard_pool(run.cg, ordered, run.budget, run.o.mode),
                       lambda c: c.metrics)


def _search_once(cg: CostGraph, o: PartitionOptions, budget: Budget, deadline: float,
                 labels: list[np.ndarray]):
    run = _Run(cg, o, budget, deadline)
    base = _baselines(run)
    run.cands.extend(base.values())     # the table prints them: they compete like any plan
    _pipeline_candidates(run, base, labels)
    _milp_candidate(run)
    if o.mode == "cut":     # stage-ordered plans are placements too: cut mode never does worse
        _cut_candidates(run, labels)
    return run, base, _choose(run)


def search(cg: CostGraph, o: PartitionOptions) -> SearchResult:
    """Run every method, keep the best plan; raise PlanError for input no plan can satisfy.

    Example:
        >>> res = search(cg, PartitionOptions(k=4, mode="pipeline", imbalance=0.03, seed=0))
        >>> res.best.method, res.best.metrics.comm_bytes, res.baselines["equal_flops"].metrics
    """
    start = time.perf_counter()
    _check(cg, o)
    k = o.k
    mem_cap = float(o.memory_cap) if o.memory_cap is not None else \
        float(o.cost_model.memory)
    nmov = len(cg.movable)
    budget_s = o.time_budget if o.time_budget is not None else \
        (10.0 if nmov <= 5_000 else 0.5 if nmov <= 50_000 else 1.0)
    deadline = start + budget_s
    if k == 1:
        budget = make_budget(cg, 1, o.imbalance, speeds=o.speeds, mem_cap=mem_cap,
                             inflight=_inflight(o), by=o.balance)
        run = _Run(cg, o, budget, deadline)
        part = cg.param_parts(np.zeros(cg.n, dtype=np.int64), 1)
        c = run.add("single", part, start)
        return SearchResult(c, {"equal_flops": c, "contiguous_dp": c}, [c], budget,
                            o.imbalance, seconds=time.perf_counter() - start, cg=cg)
    ncuts = o.ncuts if o.ncuts is not None else (4 if nmov <= 50_000 else 1)
    tries = o.tries if o.tries is not None else (2 if nmov <= 50_000 else 1)
    csr = metis_csr(cg, balance_weight(cg, o.balance)[0])
    labels = [metis_labels(cg, k, seed=o.seed + t, ncuts=ncuts, eps=o.imbalance,
                           speeds=o.speeds, csr=csr) for t in range(tries)]
    notes: list[str] = []
    eps = o.imbalance
    inflight = _inflight(o)
    budget = make_budget(cg, k, eps, speeds=o.speeds, mem_cap=mem_cap, inflight=inflight,
                             by=o.balance)
    run, base, best = _search_once(cg, o, budget, deadline, labels)
    if best is None:
        eps = least_feasible_eps(cg, o, eps, mem_cap, inflight, run.alpha, run.beta)
        if eps is None:
            memory_error(cg, o, mem_cap, inflight, run.alpha, run.beta)
            raise PlanError(f"no {o.mode} plan found for k={k}")
        budget = make_budget(cg, k, eps, speeds=o.speeds, mem_cap=mem_cap, inflight=inflight,
                             by=o.balance)
        run, base, best = _search_once(cg, o, budget, deadline, labels)
        if best is None:
            raise PlanError(f"no {o.mode} plan found for k={k}")
    notes.extend(budget.notes)
    if not within_budget(cg, best.part, best.metrics, budget):
        notes.append(f"kept {best.method} outside the balance tolerance (time imbalance "
                     f"{best.metrics.time_imbalance:.1%}, FLOPs imbalance "
                     f"{best.metrics.imbalance:.1%}): it sends fewer bytes and its slowest stage "
                     "is faster than the plan the ranking rule kept within it")
    if eps > o.imbalance:
        why = "node granularity" + (" and memory cap" if o.memory_cap is not None else "")
        what = "predicted time" if budget.by == "time" else "FLOPs"
        notes.append(f"no plan balances the {what} within {o.imbalance:.1%} at this {why}; "
                     f"the plan keeps every part within {eps:.1%} of its share")
    res = SearchResult(best, base, run.cands, budget, eps, notes, cg=cg)
    few, quick = fewest_bytes(res, o.mode), fastest(res, o.mode)
    res.choice = choice_notes(best.metrics, few.metrics if few else None,
                              base["equal_flops"].metrics, objective=o.objective,
                              time_slack=o.time_slack, imbalance=eps,
                              equal_admissible=res.equal_admissible(),
                              fastest=quick.metrics if quick else None,
                              balance=budget.by)
    res.seconds = time.perf_counter() - start
    return res


def ordered_parts(cg: CostGraph, part: np.ndarray, k: int) -> np.ndarray:
    """Parts renumbered in topological order when the plan is acyclic (unchanged otherwise)."""
    new = renumber_topologically(cg, part, k)
    return cg.param_parts(new, k) if new is not None else part
