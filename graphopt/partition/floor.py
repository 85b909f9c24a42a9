"""The least communication a stage-ordered plan can reach: the yardstick plans are judged by.

Every stage-ordered plan is a contiguous split of *some* topological order (list the stages one
after the other), but the best split over all orders is the NP-hard acyclic-partitioning
problem. Two exact floors that are cheap where they apply:

* :func:`contiguous_floor`: over the contiguous splits of one given topological order (the
  graph's own, by default), the least volume with every stage within the FLOPs budget. Exact by
  the min-sum dynamic program of :func:`~graphopt.partition.dp.split_order` with every position a
  candidate and no time limit: O(k C^2 + E), C the positions a boundary may take.
* :func:`any_order_floor`: over *every* stage-ordered plan of a small graph (any order), by the
  mixed-integer program of :mod:`graphopt.partition.milp` solved with HiGHS: the proven optimum,
  or HiGHS' lower bound when the time limit stops it first (still a floor, maybe not reachable).
  Its FLOPs caps are the budget's loose ones (a giant node's stage cap is not tied to holding
  the giant), so it is a floor for the plans the search may keep.

Both use the budget of :func:`~graphopt.partition.dp.make_budget` (``(1 + eps)`` times each
stage's share; a node heavier than that takes a stage of its own), so a floor and a plan made
under the same tolerance are comparable.
"""
from __future__ import annotations

import numpy as np

from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import cuts_to_parts, make_budget, split_order
from graphopt.partition.metrics import compute_metrics

__all__ = ["contiguous_floor", "any_order_floor"]


def contiguous_floor(cg: CostGraph, k: int, eps: float, order: np.ndarray | None = None
                     ) -> tuple[int, np.ndarray] | None:
    """``(volume, parts)`` of the contiguous split of ``order`` (default: the graph order) that
    sends the fewest bytes with every stage within ``eps``; ``None`` when no split fits.

    Example:
        >>> volume, part = contiguous_floor(cg, 4, 0.03)
    """
    order = cg.movable if order is None else np.asarray(order, dtype=np.int64)
    if k == 1:
        return 0, cg.param_parts(np.zeros(cg.n, dtype=np.int64), 1)
    budget = make_budget(cg, k, eps)
    cuts = split_order(cg, order, k, budget=budget, alpha=0.0, beta=float("inf"),
                       time_slack=float("inf"), max_candidates=len(order) + 1)
    if cuts is None:
        return None
    part = cuts_to_parts(cg, order, cuts)
    return compute_metrics(cg, part, k).comm_bytes, part


def any_order_floor(cg: CostGraph, k: int, eps: float, *, time_limit: float = 30.0,
                    max_nodes: int = 3_000) -> tuple[float, bool] | None:
    """``(floor, proven)`` over every stage-ordered plan within ``eps``, any order: the least
    volume when HiGHS proves it within ``time_limit`` seconds (``proven``), else its lower
    bound. ``None`` for graphs over ``max_nodes`` movable nodes or when no plan fits."""
    from graphopt.partition.milp import place

    if k < 2:
        return 0.0, True
    if len(cg.movable) > max_nodes:
        return None
    res = place(cg, k, make_budget(cg, k, eps), np.zeros(cg.n, dtype=np.int64),
                np.full(cg.n, k - 1, dtype=np.int64), time_limit=time_limit)
    if res is None:
        return None
    if res.optimal and res.part is not None:
        return float(compute_metrics(cg, res.part, k).comm_bytes), True
    return res.bound, False
