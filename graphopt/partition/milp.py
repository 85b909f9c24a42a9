"""Exact stage-ordered placement by mixed-integer programming, over all nodes or a neighbourhood.

The volume of a stage-ordered plan is a sum over (tensor, receiving part) pairs, and stage order
is a set of precedence constraints, so the placement that sends the fewest bytes within the
FLOPs caps is a small integer program. With ``z[v, s] = [part(v) >= s]`` (``s = 1..k-1``):

* ``z[v, s+1] <= z[v, s]`` (a part index), and ``z[u, s] <= z[v, s]`` for each data edge
  ``u -> v`` (data flows to equal or higher parts: stage order);
* ``x[v, q] = z[v, q] - z[v, q+1]`` is the indicator of part ``q``; ``y[u, q] >= x[v, q] -
  x[u, q]`` for each consumer ``v`` of ``u`` makes ``y[u, q]`` one exactly when ``u`` is sent to
  ``q``, and the objective ``sum out_bytes(u) * y[u, q]`` is the contract's volume;
* ``sum_v w(v) * x[v, q] <= cap(q)``: the balance budget of each part (``w``: the budget's
  weight, predicted time or FLOPs).

The precedence part is totally unimodular (a closure problem), so the LP relaxation is nearly
integral and HiGHS proves optimality in well under a second on graphs of a few hundred nodes.
Each node may be confined to a range of parts: everything free gives the floor over every
stage-ordered plan (:func:`~graphopt.partition.floor.any_order_floor`); nodes near a plan's
boundaries free to move one part either way, the rest fixed, gives an exact local refinement
whose size does not grow with the graph (:func:`refine_near_boundaries`).

Complexity: O(E k) constraints for the free nodes; HiGHS time is bounded by ``time_limit``,
after which the best plan found is returned (its optimality unproven).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import Budget

__all__ = ["MilpResult", "place", "refine_near_boundaries"]


@dataclass
class MilpResult:
    """A placement and what HiGHS could say about it.

    Attributes:
        part: a part for every node (parameters follow their consumers); ``None`` when the
            time limit passed before any placement was found (``bound`` still holds).
        optimal: optimality was proven (otherwise the time limit cut the search short).
        bound: a lower bound on the volume of any placement within the node ranges.
    """

    part: np.ndarray
    optimal: bool
    bound: float


class _Builder:
    """Sparse rows ``lo <= a.x <= hi`` of the program, appended one at a time."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def add(self, cols, vals, lo: float, hi: float) -> None:
        r = len(self.lo)
        self.rows.extend([r] * len(cols))
        self.cols.extend(cols)
        self.vals.extend(vals)
        self.lo.append(lo)
        self.hi.append(hi)


def place(cg: CostGraph, k: int, budget: Budget, lo: np.ndarray, hi: np.ndarray, *,
          time_limit: float = 10.0) -> MilpResult | None:
    """The stage-ordered placement sending the fewest bytes with each movable node ``v`` in
    parts ``lo[v]..hi[v]`` (arrays over all nodes; parameters ignored) and each part within its
    balance cap (``budget.loose_cap``: the caller checks giant and memory caps). ``None`` when no
    placement exists (or HiGHS knows nothing after ``time_limit``)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    mov = cg.movable
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    free = np.zeros(cg.n, dtype=bool)
    free[mov] = hi[mov] > lo[mov]
    # z variables: zvar[v, s] for lo[v] < s <= hi[v]
    zvar = np.full((cg.n, k + 1), -1, dtype=np.int64)
    nz = 0
    for v in np.flatnonzero(free).tolist():
        width = int(hi[v] - lo[v])
        zvar[v, lo[v] + 1:hi[v] + 1] = np.arange(nz, nz + width)
        nz += width

    def z(v: int, s: int):
        """(variable, constant): the variable index or -1, and the value when constant."""
        if s <= lo[v]:
            return -1, 1.0
        if s > hi[v]:
            return -1, 0.0
        return int(zvar[v, s]), 0.0

    def x(v: int, q: int):
        """x[v, q] as (columns, coefficients, constant)."""
        a, ca = z(v, q)
        b, cb = z(v, q + 1)
        cols, vals = [], []
        if a >= 0:
            cols.append(a)
            vals.append(1.0)
        if b >= 0:
            cols.append(b)
            vals.append(-1.0)
        return cols, vals, ca - cb

    rows = _Builder()
    for v in np.flatnonzero(free).tolist():
        for s in range(int(lo[v]) + 1, int(hi[v])):
            rows.add([int(zvar[v, s + 1]), int(zvar[v, s])], [1.0, -1.0], -np.inf, 0.0)
    m = ~cg.is_param[cg.src]
    src, dst = cg.src[m], cg.dst[m]
    touch = free[src] | free[dst]
    for u, v in zip(src[touch].tolist(), dst[touch].tolist()):
        for s in range(1, k):
            (a, ca), (b, cb) = z(u, s), z(v, s)
            if a < 0 and b < 0:
                continue
            cols = ([a] if a >= 0 else []) + ([b] if b >= 0 else [])
            vals = ([1.0] if a >= 0 else []) + ([-1.0] if b >= 0 else [])
            rows.add(cols, vals, -np.inf, cb - ca)           # z[u,s] - z[v,s] <= 0
    # y[u, q]: one per producer with a free end and a part it may be sent to
    ycost, ylo = [], []
    ny = 0
    for u in np.unique(src[touch]).tolist():
        succ = [int(v) for v in cg.succs(u) if not cg.is_param[v]]
        for q in range(k):
            xu = x(u, q)
            if not xu[0] and xu[2] == 1.0:
                continue                                       # u surely in q: never sent to q
            floor, terms = 0.0, []
            for v in succ:
                xv = x(v, q)
                if not xv[0] and xv[2] == 0.0:
                    continue                                   # v surely not in q
                if not xv[0] and not xu[0]:
                    floor = max(floor, xv[2] - xu[2])
                else:
                    terms.append(xv)
            if not terms:
                continue
            y = nz + ny
            ny += 1
            ycost.append(float(cg.out_bytes[u]))
            ylo.append(floor)
            for cv, vv, c0 in terms:
                # y - x[v,q] + x[u,q] >= 0
                rows.add([y] + cv + xu[0], [1.0] + [-w for w in vv] + xu[1], c0 - xu[2], np.inf)
    # the balance weight (predicted time or FLOPs), in units of a stage's share: HiGHS'
    # feasibility tolerance is absolute, and seconds are small numbers
    unit = max(float(budget.weight.sum()) / k, 1e-300)
    flops = budget.weight / unit
    fixed = mov[~free[mov]]
    fixed_flops = np.bincount(lo[fixed], weights=flops[fixed], minlength=k)
    heavy_free = [v for v in np.flatnonzero(free).tolist() if flops[v] > 0]
    for q in range(k):
        cols, vals, const = [], [], float(fixed_flops[q])
        for v in heavy_free:
            cv, vv, c0 = x(v, q)
            cols += cv
            vals += [w * flops[v] for w in vv]
            const += c0 * flops[v]
        if cols:
            rows.add(cols, vals, -np.inf, float(budget.loose_cap(q)) / unit - const)
        elif const > budget.loose_cap(q) / unit * (1 + 1e-9):
            return None
    nvar = nz + ny
    part = lo.copy()
    if nvar == 0:
        return MilpResult(_finish(cg, part, k), True, 0.0)
    a = sp.coo_matrix((rows.vals, (rows.rows, rows.cols)), shape=(len(rows.lo), nvar)).tocsr()
    cost = np.concatenate([np.zeros(nz), np.asarray(ycost)])
    lb = np.concatenate([np.zeros(nz), np.asarray(ylo)])
    res = milp(cost, constraints=LinearConstraint(a, rows.lo, rows.hi),
               integrality=np.concatenate([np.ones(nz), np.zeros(ny)]),
               bounds=Bounds(lb, np.ones(nvar)),
               options={"time_limit": max(float(time_limit), 0.1), "disp": False})
    bound = getattr(res, "mip_dual_bound", None)
    if res.x is None:
        if bound is None or not np.isfinite(bound):
            return None
        return MilpResult(None, False, float(bound))
    zval = np.round(res.x[:nz]).astype(np.int64)
    for v in np.flatnonzero(free).tolist():
        part[v] = lo[v] + int(zval[zvar[v, lo[v] + 1:hi[v] + 1]].sum())
    optimal = res.status == 0
    return MilpResult(_finish(cg, part, k), optimal,
                      float(res.fun) if optimal or bound is None else float(bound))


def _finish(cg: CostGraph, part: np.ndarray, k: int) -> np.ndarray:
    return cg.param_parts(part, k)


def refine_near_boundaries(cg: CostGraph, part: np.ndarray, k: int, budget: Budget, *,
                           hops: int = 24, max_free: int = 4_000,
                           time_limit: float = 5.0) -> MilpResult | None:
    """Exact best placement of the nodes within ``hops`` edges of a boundary of the
    stage-ordered plan ``part``, each free to move one part down or up (the rest fixed).
    Fewer hops are used when more than ``max_free`` nodes would be free."""
    mov = cg.movable
    m = ~cg.is_param[cg.src]
    src, dst = cg.src[m], cg.dst[m]
    cross = part[src] != part[dst]
    if not cross.any():
        return None
    n = cg.n
    g = sp.csr_matrix((np.ones(2 * len(src), dtype=np.int8),
                       (np.concatenate([src, dst]), np.concatenate([dst, src]))), shape=(n + 1,
                                                                                        n + 1))
    seeds = np.unique(np.concatenate([src[cross], dst[cross]]))
    g = sp.vstack([g[:n], sp.csr_matrix((np.ones(len(seeds), dtype=np.int8),
                                         (np.zeros(len(seeds), dtype=np.int64), seeds)),
                                        shape=(1, n + 1))]).tocsr()
    order, pred = breadth_first_order(g, n, directed=True, return_predecessors=True)
    depth = np.full(n + 1, -1, dtype=np.int64)
    depth[n] = 0
    for v in order[1:].tolist():
        depth[v] = depth[pred[v]] + 1
    while hops > 1 and int(((depth[:n] >= 1) & (depth[:n] <= hops + 1)).sum()) > max_free:
        hops //= 2
    near = np.zeros(n, dtype=bool)
    near[mov] = (depth[mov] >= 1) & (depth[mov] <= hops + 1)
    lo = np.where(near, np.maximum(part - 1, 0), part)
    hi = np.where(near, np.minimum(part + 1, k - 1), part)
    return place(cg, k, budget, lo, hi, time_limit=time_limit)
