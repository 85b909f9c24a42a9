"""Whether a plan fits: the balance caps, the memory cap, a non-parameter node in every part;
the candidates of a search that fit, the fewest-bytes and fastest of them; and the least balance
tolerance at which the graph order admits a plan (or why none fits the memory cap).

The search (:mod:`graphopt.partition.search`) and the variant search
(:mod:`graphopt.partition.variants`) judge plans with these; ``search`` re-exports them.
"""
from __future__ import annotations

import numpy as np

from graphopt.errors import PlanError
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import Budget, cuts_to_parts, make_budget, split_order
from graphopt.partition.metrics import Metrics, compute_metrics

__all__ = ["within_memory", "within_budget", "every_part_works", "guard_pool", "admissible",
           "fewest_bytes", "fastest", "least_feasible_eps", "memory_error"]


def within_memory(metrics: Metrics, budget: Budget) -> bool:
    """Whether every part's parameters and in-flight activations fit the memory cap."""
    k = budget.k
    mem = np.asarray(metrics.part_param_bytes, dtype=np.float64) + \
        budget.inflight[:k] * np.asarray(metrics.part_act_bytes, dtype=np.float64)
    return bool(np.all(mem <= budget.mem_cap))


def every_part_works(cg: CostGraph, part: np.ndarray, k: int) -> bool:
    """Whether every part holds a non-parameter node (the contract's: a stage of parameters
    alone is no stage)."""
    mask = ~cg.is_param
    return bool(np.all(np.bincount(part[mask], minlength=k)[:k] > 0))


def guard_pool(cg: CostGraph, cands: list, budget: Budget, mode: str
               ) -> list:
    """The plans the non-domination guard weighs, balance aside: stage-ordered in ``pipeline``
    mode, within the memory cap, a non-parameter node in every part."""
    k = budget.k
    return [c for c in cands if (mode != "pipeline" or c.metrics.stage_ordered or k == 1)
            and within_memory(c.metrics, budget) and every_part_works(cg, c.part, k)]


def within_budget(cg: CostGraph, part: np.ndarray, metrics: Metrics, budget: Budget) -> bool:
    """Whether a plan keeps every part under its balance cap (predicted time or FLOPs, as the
    budget says) and the memory cap."""
    f, g = budget.part_weights(part)
    caps = np.array([budget.cap(s, g[s]) for s in range(budget.k)])
    return bool(np.all(f <= caps + budget.tol)) and within_memory(metrics, budget)


def admissible(result, mode: str) -> list:
    """The candidates within the budget (and stage-ordered in ``pipeline`` mode)."""
    return [c for c in result.candidates if within_budget(result.cg, c.part, c.metrics,
                                                          result.budget)
            and (mode != "pipeline" or c.metrics.stage_ordered or result.budget.k == 1)]


def fewest_bytes(result, mode: str):
    """The admissible candidate that sends the fewest bytes."""
    return min(admissible(result, mode), key=lambda c: (c.metrics.comm_bytes,
                                                       c.metrics.bottleneck_seconds),
               default=None)


def fastest(result, mode: str):
    """The admissible candidate with the fastest full estimate."""
    return min(admissible(result, mode), key=lambda c: (c.metrics.bottleneck_seconds,
                                                       c.metrics.comm_bytes), default=None)


def least_feasible_eps(cg, o, eps, mem_cap, inflight, alpha, beta) -> float | None:
    """Smallest tolerance (to 1% of the share) at which the graph order has a contiguous split."""
    def ok(e):
        b = make_budget(cg, o.k, e, speeds=o.speeds, mem_cap=mem_cap, inflight=inflight,
                        by=o.balance)
        return split_order(cg, cg.movable, o.k, budget=b, alpha=alpha, beta=beta,
                           minimize_comm=False) is not None
    hi = max(1.0, o.k - 1.0)
    if not ok(hi):
        return None
    lo = eps
    while hi - lo > 0.01:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def memory_error(cg, o, mem_cap, inflight, alpha, beta) -> None:
    """Raise the memory-cap PlanError when a plan exists without the cap."""
    if not np.isfinite(mem_cap):
        return
    free = make_budget(cg, o.k, max(1.0, o.k - 1.0), speeds=o.speeds, inflight=inflight,
                       by=o.balance)
    cuts = split_order(cg, cg.movable, o.k, budget=free, alpha=alpha, beta=beta)
    if cuts is None:
        return
    m = compute_metrics(cg, cuts_to_parts(cg, cg.movable, cuts), o.k, alpha=alpha, beta=beta,
                        speeds=o.speeds)
    need = max(p + a * f for p, a, f in zip(m.part_param_bytes, m.part_act_bytes, inflight))
    raise PlanError(f"no {o.mode} plan fits the memory cap of {mem_cap:.4g} bytes per device "
                    f"(parameters + activations of {int(max(inflight))} micro-batches in flight); "
                    f"a plan ignoring the cap needs {need:.4g}: raise the cap, use more parts or "
                    "fewer micro-batches")
