"""The exact remat solver: a Checkmate-style MILP over the backward stages, solved by HiGHS.

Checkmate (Jain et al., MLSys 2020) decides, for every stage ``t`` and value ``v``, whether ``v``
is computed at ``t`` (``R[t,v]``) and whether it is held entering ``t`` (``S[t,v]``). Here the
forward pass is fixed (it runs once and ``S[0,v]`` says what it saves) and the stages are the
backward nodes that read forward values, which keeps the model small:

* a stage's reads are present: ``S[t,v] + R[t,v] >= 1``;
* recomputing needs the inputs at the same stage: ``R[t,v] <= S[t,u] + R[t,u]``;
* a value is held only if it was held or computed just before: ``S[t+1,v] <= S[t,v] + R[t,v]``;
* a value may be recomputed at several stages, saved or not: each ``R[t,v] = 1`` starts a
  segment (segment checkpointing, see :mod:`graphopt.memory.remat.problem`), which the graph
  rewrite places as a fresh copy; a saved value dropped after its early reads (``S`` falls to
  0) and recomputed later is the accounting's saved value with later segments; views and
  tuples are never held;
* the bytes fit while each stage recomputes, value by value in topological order ``k``:
  ``sum_v hold_v S[t,v] + sum_{j<=k} work_j R[t,j] - sum_{j<k} work_j D[t,j,k] <= budget``,
  where ``D[t,j,k]`` (continuous, Checkmate's FREE) may be 1 only if ``j`` was recomputed at
  ``t``, is not read by stage ``t`` itself, is not held into ``t+1`` and no value ``>= k``
  recomputed at ``t`` reads it (a tuple op's buffer, only once its recomputed outputs are free);

minimising ``sum cost_v R[t,v]``, every segment paying for its recomputation (free pointwise
values cost 0; a vanishing charge per held byte-stage then prefers recomputing them). These are
the shared accounting's rules (:mod:`graphopt.memory.remat.problem`), and the accounting frees
a value at the end of each segment where the MILP may hold it longer, so the plan it returns
holds at most what the MILP counted and costs at most its objective.
``scipy.optimize.milp`` runs HiGHS with a time limit; the reply carries HiGHS's status and gap.

Size: ``2 * C * T`` binaries at most, plus ``O(C^2 * T)`` continuous ``D``, for C candidates
and T stages: meant for graphs of up to a few hundred nodes (the fast solver takes the rest).
"""
from __future__ import annotations

import time

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from graphopt.memory.remat.problem import RematProblem, Solution, evaluate

__all__ = ["solve_milp", "milp_size"]


class _Model:
    """Variable indexing and sparse rows of the stage model."""

    def __init__(self, p: RematProblem):
        self.p = p
        n = len(p)
        reach: list[set[int]] = [set() for _ in range(n)]
        for v in range(n - 1, -1, -1):
            reach[v].update(p.uses[v])
            for w in p.users[v]:
                reach[v] |= reach[w]
        self.horizon = [max(r) if r else -1 for r in reach]
        self.S: dict[tuple[int, int], int] = {}
        self.R: dict[tuple[int, int], int] = {}
        k = 0
        for v in range(n):
            for t in range(self.horizon[v] + 1):
                if p.holdable[v]:
                    self.S[t, v] = k
                    k += 1
                if p.recomputable[v]:
                    self.R[t, v] = k
                    k += 1
        self.nvars = k
        self.binaries = k
        self.continuous: list[int] = []
        self.rows: list[int] = []
        self.cols: list[int] = []
        self.vals: list[float] = []
        self.lb: list[float] = []
        self.ub: list[float] = []

    def add(self, terms: list[tuple[int | None, float]], lb: float, ub: float) -> None:
        r = len(self.lb)
        for col, val in terms:
            if col is not None:
                self.rows.append(r)
                self.cols.append(col)
                self.vals.append(val)
        self.lb.append(lb)
        self.ub.append(ub)

    def build(self, budget_col: int | None, budget: float) -> None:
        """All rows; memory rows are in units of ``scale`` bytes so HiGHS's tolerances bite."""
        p, S, R = self.p, self.S, self.R
        scale = max(float(p.hold.max(initial=0)), float(p.work.max(initial=0)), 1.0)
        self.scale = scale
        for v in range(len(p)):
            for t in p.uses[v]:
                self.add([(S.get((t, v)), 1), (R.get((t, v)), 1)], 1, np.inf)
            for t in range(self.horizon[v] + 1):
                if (t, v) in R:
                    for u in p.inputs[v]:
                        self.add([(R[t, v], 1), (S.get((t, u)), -1), (R.get((t, u)), -1)],
                                 -np.inf, 0)
                if t and (t, v) in S:
                    self.add([(S[t, v], 1), (S.get((t - 1, v)), -1), (R.get((t - 1, v)), -1)],
                             -np.inf, 0)
        for t in range(p.num_stages):
            held = [(S[t, v], float(p.hold[v]) / scale) for v in range(len(p)) if (t, v) in S]
            self._memory_row(held, budget_col, budget)
            self._stage_rows(t, held, budget_col, budget)

    def _memory_row(self, terms, budget_col, budget) -> None:
        if budget_col is None:
            self.add(terms, -np.inf, budget / self.scale)
        else:
            self.add(terms + [(budget_col, -1.0)], -np.inf, 0)

    def _stage_rows(self, t: int, held, budget_col, budget) -> None:
        """Memory while stage ``t`` recomputes, with the FREE variables ``D[t,j,k]``.

        ``D[t,j,k]`` only changes where a reader of ``j`` passes, so one variable stands for
        each stretch of ``k`` between consecutive readers (per ``k`` for tuple ops, whose
        buffer also waits for its outputs); rows are needed only where bytes are added.
        """
        p, S, R = self.p, self.S, self.R
        order = [k for k in range(len(p)) if (t, k) in R]
        if not order:
            return
        frees = [j for j in order if p.work[j] or (p.kind[j] == "item" and any(
            p.kind[a] == "tuple" for a in p.inputs[j]))]
        D: dict[tuple[int, int], int] = {}
        for j in frees:
            readers = sorted(i for i in p.users[j] if (t, i) in R)
            made: dict[int, int] = {}
            for k in order:
                if k <= j:
                    continue
                seg = k if p.kind[j] == "tuple" else sum(1 for i in readers if i < k)
                if seg in made:
                    D[j, k] = made[seg]
                    continue
                D[j, k] = made[seg] = col = self.new_var(continuous=True)
                self.add([(col, 1), (R[t, j], -1)], -np.inf, 0)
                if t in p.uses[j]:
                    self.add([(col, 1)], -np.inf, 0)
                if (t + 1, j) in S:
                    self.add([(col, 1), (S[t + 1, j], 1)], -np.inf, 1)
                for i in readers:
                    if i >= k:
                        self.add([(col, 1), (R[t, i], 1)], -np.inf, 1)
        for (j, k), col in D.items():
            if p.kind[j] != "tuple":
                continue
            for i in p.users[j]:
                if p.kind[i] == "item" and i < k and (t, i) in R:
                    self.add([(col, 1), (D.get((i, k)), -1), (R[t, i], 1)], -np.inf, 1)
        for k in order:
            if not p.work[k]:
                continue  # adds no bytes: the row before it (or the held row) is as tight
            terms = list(held)
            terms += [(R[t, j], float(p.work[j]) / self.scale) for j in order
                      if j <= k and p.work[j]]
            terms += [(D[j, k], -float(p.work[j]) / self.scale) for j in frees
                      if j < k and p.work[j]]
            self._memory_row(terms, budget_col, budget)

    def new_var(self, continuous: bool = False) -> int:
        col = self.nvars
        self.nvars += 1
        if continuous:
            self.continuous.append(col)
        return col

    def solve(self, c: np.ndarray, integrality: np.ndarray, upper: np.ndarray,
              time_limit: float):
        A = coo_array((self.vals, (self.rows, self.cols)), shape=(len(self.lb), len(c))).tocsr()
        return milp(c, integrality=integrality, bounds=Bounds(np.zeros(len(c)), upper),
                    constraints=LinearConstraint(A, self.lb, self.ub),
                    options={"time_limit": float(time_limit), "disp": False})

    def plan(self, x: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[int, ...]]]:
        """The saved set and every holdable value's segment starts (its stages with R = 1)."""
        p = self.p
        saved = np.array([x[self.S[0, v]] > 0.5 if (0, v) in self.S else False
                          for v in range(len(p))], dtype=bool)
        at: dict[int, list[int]] = {}
        for (t, v), col in sorted(self.R.items()):
            if p.holdable[v] and x[col] > 0.5:
                at.setdefault(v, []).append(t)
        return saved, {v: tuple(ts) for v, ts in at.items()}


def milp_size(p: RematProblem) -> int:
    """Number of binary variables the MILP would have (to decide which solver to use)."""
    return _Model(p).binaries


def solve_milp(p: RematProblem, budget: int, *, time_limit: float = 10.0) -> Solution:
    """Plan ``p`` under ``budget`` held bytes exactly (up to HiGHS's gap and time limit).

    Returns a :class:`~graphopt.memory.remat.problem.Solution` with ``status`` ``optimal`` or
    ``feasible`` (time limit hit; ``gap`` tells how far from optimal it may be); when no plan
    fits, ``infeasible`` with ``min_peak`` from a second MILP that minimises the peak.

    Example:
        >>> sol = solve_milp(problem, budget, time_limit=5)
        >>> sol.status, sol.gap, sol.evaluation.cost
    """
    start = time.perf_counter()
    model = _Model(p)
    model.build(None, float(budget))
    if not model.nvars:  # nothing is read by the backward pass: nothing to decide
        ev = evaluate(p, p.default_saved())
        status = "optimal" if ev.peak <= budget else "infeasible"
        return Solution(p.default_saved(), {}, ev, "milp", status, time.perf_counter() - start,
                        budget, gap=0.0, min_peak=None if status == "optimal" else ev.peak)
    # Costs in units of the largest, so HiGHS's absolute gap (1e-6) is not a free pass.
    unit = float(p.cost.max(initial=0)) or 1.0
    c = np.zeros(model.nvars)
    for (_, v), col in model.R.items():
        c[col] = p.cost[v] / unit
    # A vanishing charge per held byte-stage keeps holds that help nothing out of the plan.
    for (_, v), col in model.S.items():
        c[col] = 1e-7 * float(p.hold[v]) / model.scale / max(p.num_stages, 1)
    integrality = np.ones(model.nvars)
    integrality[model.continuous] = 0
    res = model.solve(c, integrality, np.ones(model.nvars), time_limit)
    if res.x is None:
        if res.status == 2:
            return _infeasible(p, budget, start, time_limit)
        return Solution(p.default_saved(), {}, evaluate(p, p.default_saved()), "milp", "timeout",
                        time.perf_counter() - start, budget)
    saved, at = model.plan(res.x)
    ev = evaluate(p, saved, at)
    status = "optimal" if res.status == 0 else "feasible"
    gap = float(getattr(res, "mip_gap", 0.0) or 0.0)
    bound = getattr(res, "mip_dual_bound", None)
    return Solution(saved, at, ev, "milp", status, time.perf_counter() - start, budget,
                    gap=gap, bound=None if bound is None else float(bound) * unit)


def _infeasible(p: RematProblem, budget: int, start: float, time_limit: float) -> Solution:
    """No plan fits: find the smallest reachable held peak with a second MILP."""
    model = _Model(p)
    peak_col = model.new_var(continuous=True)
    model.build(peak_col, 0.0)
    c = np.zeros(model.nvars)
    c[peak_col] = 1.0
    unit = float(p.cost.max(initial=0)) or 1.0
    for (_, v), col in model.R.items():
        c[col] = 1e-6 * p.cost[v] / unit  # among the lowest peaks, the cheapest
    integrality = np.ones(model.nvars)
    integrality[model.continuous] = 0
    upper = np.ones(model.nvars)
    upper[peak_col] = np.inf
    res = model.solve(c, integrality, upper, time_limit)
    if res.x is None:
        saved, at = p.default_saved(), {}
    else:
        saved, at = model.plan(res.x)
    ev = evaluate(p, saved, at)
    return Solution(saved, at, ev, "milp", "infeasible", time.perf_counter() - start, budget,
                    min_peak=ev.peak)
