"""The fast remat solver: greedy knapsack descent, then local improvement.

Needs a :class:`~graphopt.memory.remat.problem.RematProblem`; judges every step with the shared
:func:`~graphopt.memory.remat.problem.evaluate`, so the plan it returns fits the budget in exactly the
accounting the exact solver and the tests use.

1. **Descent.** Start from what a partitioner without remat saves. While the held peak is over
   the budget, look at the peak stage ``t``: a saved value first needed after ``t`` stops
   being held over ``t`` if it is recomputed instead. Rank those by bytes freed per unit of
   recompute cost (the cost of the value plus whatever it needs that nobody holds), drop the
   best ones until they cover the excess, and keep the move if the bytes-over-budget shrink
   (halving the batch, then trying single values, when they do not). Three rankings (bytes
   to the power 1, 1/2 and 2 per unit cost) each run; the cheapest plan is kept.
2. **Re-save.** Values recomputed needlessly are saved again, most expensive per byte first,
   while an upper bound of the new peak stays within the budget.
3. **Swaps** (up to 400 candidates; a fixed amount of work, so the plan never depends on the
   machine's speed): force one expensive recomputed value back to saved and redo 1-2, or
   exchange one recomputed value for one saved value; keep what makes the plan cheaper.

If no descent reaches the budget, a search that ignores the budget (a peak-minimising descent,
then bisection on the budget) finds the lowest peak it can: that is the *feasible minimum*
reported to the user, and any budget at or above it is met by that plan. Deterministic.

Complexity: each descent step costs one evaluation, O(C + E_c + T); steps are few because each
covers the whole excess. Re-save is O(C * T) with numpy slices; swaps a bounded number of
descents.
"""
from __future__ import annotations

import time

import numpy as np

from graphopt.memory.remat.problem import NONE, SAVED, RECOMPUTED, Evaluation, RematProblem, Solution, \
    evaluate

__all__ = ["solve_greedy"]

_SWAP_MAX_CANDIDATES = 400
_SWAP_ROUNDS, _SWAP_TRIES = 12, 32
# Rankings of the descent, bytes**alpha per unit cost: each run is cheap, the best plan wins.
_RANKINGS = (1.0, 0.5, 2.0)


def _evaluate(p: RematProblem, saved: np.ndarray) -> Evaluation:
    """The policy's schedule: each value at its first need, except that the small outputs of a
    multi-output op (a layer norm's mean and rstd) come with its first recomputed output, so
    the op runs once instead of once per output."""
    ev = evaluate(p, saved)
    at: dict[int, int] = {}
    for tup, items in _siblings(p).items():
        rec = [i for i in items if ev.state[i] == RECOMPUTED]
        if len(rec) < 2:
            continue
        f = min(ev.first[i] for i in rec)
        for i in rec:
            if ev.first[i] > f and 8 * int(p.hold[i]) <= int(p.work[tup]):
                at[i] = f
    return evaluate(p, saved, at) if at else ev


def _siblings(p: RematProblem) -> dict[int, list[int]]:
    cached = getattr(p, "_siblings", None)
    if cached is None:
        cached = {t: [i for i in p.users[t] if p.kind[i] == "item"]
                  for t in range(len(p)) if p.kind[t] == "tuple"}
        p._siblings = cached
    return cached


def _repair(p: RematProblem, saved: np.ndarray) -> Evaluation:
    """Evaluate, saving any value that must be saved (not recomputable) until none is missing."""
    ev = _evaluate(p, saved)
    while ev.missing:
        fix = [v for v in ev.missing if p.holdable[v]]
        if not fix:
            break
        saved[fix] = True
        ev = _evaluate(p, saved)
    return ev


def _closure(p: RematProblem, ev: Evaluation, v: int, memo: dict) -> tuple[float, int]:
    """(extra recompute cost, bytes that must newly be saved) if ``v`` is recomputed."""
    if v in memo:
        return memo[v]
    stack = [(v, False)]
    while stack:
        x, done = stack.pop()
        if x in memo:
            continue
        pending = [u for u in p.inputs[x] if u not in memo and _walks_into(p, ev, u)]
        if not done and pending:
            stack.append((x, True))
            stack.extend((u, False) for u in pending)
            continue
        cost, pen = float(p.cost[x]), 0
        for u in p.inputs[x]:
            if not _walks_into(p, ev, u):
                continue
            if p.holdable[u] and not p.recomputable[u]:
                pen += int(p.hold[u])
                continue
            cu, pu = memo[u]
            cost, pen = cost + cu, pen + pu
        memo[x] = (cost, pen)
    return memo[v]


def _walks_into(p: RematProblem, ev: Evaluation, u: int) -> bool:
    """Whether recomputing a consumer of ``u`` makes new work for ``u``."""
    return not (p.holdable[u] and ev.state[u] != NONE)


def _descend(p: RematProblem, saved: np.ndarray, budget: int | None, tabu: set[int],
             kicks: int = 1, alpha: float = 1.0):
    """Drop saved values until the plan fits ``budget`` (None: push the peak down).

    When no drop helps, a *kick* saves again a value recomputed at the peak stage (recomputing
    it there may have pinned its inputs) and descends from there; kept if it helps.
    Returns ``(saved, evaluation, best_saved, best_evaluation)``; the best is the lowest peak
    seen on the way.
    """
    tabu = set(tabu)
    ev = _repair(p, saved)
    best = (saved.copy(), ev)

    def score(e: Evaluation):
        return e.over(budget) if budget is not None else (e.peak, float(e.mem.sum()))

    def done(e: Evaluation) -> bool:
        return budget is not None and e.peak <= budget

    rejected: set[int] = set()
    while not done(ev):
        t = ev.peak_stage
        excess = int(ev.mem[t]) - (budget if budget is not None else 0)
        memo: dict = {}
        ranked = []
        for v in range(len(p)):
            if (ev.state[v] != SAVED or not p.recomputable[v] or ev.first[v] <= t
                    or v in tabu or v in rejected):
                continue
            cost, pen = _closure(p, ev, v, memo)
            gain = int(p.hold[v]) - pen
            if gain > 0:
                ranked.append((-gain ** alpha / (cost + 1e-18), v, gain))
        if not ranked:
            kicked = _kick(p, saved, ev, budget, tabu, score, alpha) if kicks else None
            if kicked is None:
                break
            saved, ev, v = kicked
            tabu.add(v)
            if ev.peak < best[1].peak:
                best = (saved.copy(), ev)
            continue
        ranked.sort()
        k, covered = 0, 0
        while k < len(ranked) and covered < excess:
            covered += ranked[k][2]
            k += 1
        tries = []
        while k >= 1:
            tries.append([v for _, v, _ in ranked[:k]])
            k //= 2
        tries.extend([[v] for _, v, _ in ranked[1:9]])
        accepted = False
        for batch in tries:
            trial = saved.copy()
            trial[batch] = False
            ev2 = _repair(p, trial)
            if score(ev2) < score(ev):
                saved, ev, accepted = trial, ev2, True
                break
        if not accepted:
            rejected.update(v for _, v, _ in ranked[:9])
            continue
        if ev.peak < best[1].peak:
            best = (saved.copy(), ev)
    return saved, ev, best[0], best[1]


def _kick(p: RematProblem, saved: np.ndarray, ev: Evaluation, budget, tabu: set[int], score,
          alpha: float, tries: int = 8):
    """Save again one value recomputed at an over-budget stage (recomputing it there pins its
    inputs early), then descend without kicks; the first that helps is kept."""
    limit = budget if budget is not None else ev.peak - 1
    hot = set(np.flatnonzero(ev.mem > limit).tolist())
    pinned = [v for v in ev.recomputed() if p.holdable[v] and ev.first[v] in hot
              and v not in tabu]
    # Most pinning first: the bytes of the recomputed inputs it makes live at its stage.
    def pins(v: int) -> int:
        return sum(int(p.hold[u]) for u in p.inputs[v] if ev.state[u] == RECOMPUTED
                   and p.holdable[u] and ev.last[u] > ev.first[v])
    for v in sorted(pinned, key=lambda v: (-pins(v), -int(p.hold[v]), v))[:tries]:
        trial = saved.copy()
        trial[v] = True
        s2, e2, _, _ = _descend(p, trial, budget, tabu | {v}, kicks=0, alpha=alpha)
        if score(e2) < score(ev):
            return s2, e2, v
    return None


def _units(p: RematProblem, ev: Evaluation) -> list[tuple[tuple[int, ...], float]]:
    """What can be saved again, with the recompute cost saving it avoids: a recomputed value on
    its own, or all recomputed outputs of a multi-output op together (saving one output alone
    avoids nothing while another still reruns the op)."""
    units, grouped = [], set()
    for tup, items in _siblings(p).items():
        rec = tuple(i for i in items if ev.state[i] == RECOMPUTED)
        if rec and ev.state[tup] == RECOMPUTED:
            units.append((rec, float(p.cost[tup]) * len(ev.nh_stages.get(tup, [0]))))
            grouped.update(rec)
    for v in ev.recomputed():
        if p.holdable[v] and v not in grouped and p.cost[v] > 0:
            units.append(((v,), float(p.cost[v])))
    return units


def _resave(p: RematProblem, saved: np.ndarray, budget: int) -> tuple[np.ndarray, Evaluation]:
    """Save again recomputed values whose bytes fit, most expensive per byte first."""
    ev = _evaluate(p, saved)
    for _ in range(3):
        mem = ev.mem.astype(np.int64).copy()
        units = sorted(_units(p, ev), key=lambda u: (-u[1] / max(int(p.hold[list(u[0])].sum()),
                                                                 1), u[0]))
        changed = False
        for members, _ in units:
            # Saved, a value is held from the start through its old recompute stage: at most
            # its bytes more there and before, and never more anywhere else.
            f = max(ev.first[v] for v in members)
            h = int(p.hold[list(members)].sum())
            if int(mem[:f + 1].max()) + h > budget:
                continue
            mem[:f + 1] += h
            saved[list(members)] = True
            changed = True
        if not changed:
            break
        ev = _evaluate(p, saved)
    return saved, ev


def solve_greedy(p: RematProblem, budget: int, *, swaps: bool | None = None) -> Solution:
    """Plan ``p`` under ``budget`` held bytes with the fast solver.

    Args:
        p: the problem.
        budget: held-bytes budget (see :mod:`graphopt.memory.remat.problem`).
        swaps: run the swap phase (default: when the problem has at most 400 candidates).

    Example:
        >>> sol = solve_greedy(problem, budget=problem.saved_bytes(problem.default_saved()) // 2)
        >>> sol.evaluation.peak <= sol.budget, sol.evaluation.cost
    """
    start = time.perf_counter()
    base = p.default_saved()
    if _repair(p, base.copy()).missing:  # a view or multi-output op that cannot be rerun
        ev = _evaluate(p, base)
        return Solution(base, _schedule(p, ev), ev, "greedy", "infeasible",
                        time.perf_counter() - start, budget, min_peak=p.saved_bytes(base))
    plans, min_peak = [], None
    for alpha in _RANKINGS:
        saved, ev, _, _ = _descend(p, base.copy(), budget, set(), alpha=alpha)
        if ev.peak <= budget:
            plans.append(_resave(p, saved, budget))
    if not plans:
        low_saved, low_ev = _minimum(p, base)
        min_peak = low_ev.peak
        if low_ev.peak > budget:
            return Solution(low_saved, _schedule(p, low_ev), low_ev, "greedy", "infeasible",
                            time.perf_counter() - start, budget, min_peak=min_peak)
        plans.append(_resave(p, low_saved.copy(), budget))
    if swaps is None:
        swaps = len(p) <= _SWAP_MAX_CANDIDATES
    if swaps:  # local search from every start: a cheaper start is not always a better basin
        plans = [_swap(p, s, e, budget) for s, e in plans]
    saved, ev = min(plans, key=lambda se: se[1].cost)
    assert ev.peak <= budget, "re-saving broke the budget"
    return Solution(saved, _schedule(p, ev), ev, "greedy", "heuristic",
                    time.perf_counter() - start, budget, min_peak=min_peak)


def _schedule(p: RematProblem, ev: Evaluation) -> dict[int, int]:
    """The recompute stage of every recomputed value: ``evaluate(p, saved, at)`` replays it."""
    return {v: ev.first[v] for v in ev.recomputed() if p.holdable[v]}


def _minimum(p: RematProblem, base: np.ndarray, rounds: int = 8):
    """The lowest held peak the descent reaches, found without reference to any budget.

    A peak-minimising descent gives a first plan; bisection on the budget between 0 and its
    peak then keeps the lowest peak a budgeted descent reaches. Independent of the user's
    budget, so the minimum reported in an error is one that a retry at that budget meets.
    """
    _, _, saved, ev = _descend(p, base.copy(), None, set())
    lo, hi = 0, ev.peak
    for _ in range(rounds):
        if hi - lo <= max(1, hi // 1000):
            break
        mid = (lo + hi) // 2
        for alpha in _RANKINGS:
            s2, e2, _, _ = _descend(p, base.copy(), mid, set(), alpha=alpha)
            if e2.peak <= mid:
                saved, ev, hi = s2, e2, e2.peak
                break
        else:
            lo = mid
    return saved, ev


def _swap(p: RematProblem, saved: np.ndarray, ev: Evaluation, budget: int):
    """Local search with a fixed amount of work (so plans do not depend on the machine's
    speed): at most ``_SWAP_ROUNDS`` improvements, each trying the ``_SWAP_TRIES`` recomputed
    values that cost the most."""
    tried: set[tuple[int, ...]] = set()
    for _ in range(_SWAP_ROUNDS):
        improved = False
        for members, _ in sorted(_units(p, ev), key=lambda u: (-u[1], u[0]))[:_SWAP_TRIES]:
            key = (members, *np.flatnonzero(saved).tolist())
            if key in tried:
                continue
            tried.add(key)
            trial = saved.copy()
            trial[list(members)] = True
            trial, ev2, _, _ = _descend(p, trial, budget, set(members))
            if ev2.peak > budget:
                continue
            trial, ev2 = _resave(p, trial, budget)
            if ev2.peak <= budget and ev2.cost < ev.cost * (1 - 1e-9):
                saved, ev, improved = trial, ev2, True
                break
        if not improved:
            saved, ev, improved = _exchange(p, saved, ev, budget)
        if not improved:
            break
    return saved, ev


def _exchange(p: RematProblem, saved: np.ndarray, ev: Evaluation, budget: int):
    """One pairwise exchange that makes the plan cheaper: save a recomputed value and recompute
    a saved one in its place (the bytes they free and cost trade differently at every stage)."""
    back = [m for m, _ in sorted(_units(p, ev), key=lambda u: (-u[1], u[0]))]
    out = sorted((v for v in ev.saved() if p.recomputable[v]),
                 key=lambda v: (float(p.cost[v]) / max(int(p.hold[v]), 1), v))
    for r in back[:_SWAP_TRIES]:
        for s in out[:_SWAP_TRIES]:
            trial = saved.copy()
            trial[list(r)], trial[s] = True, False
            ev2 = _repair(p, trial)
            if ev2.peak <= budget and ev2.cost < ev.cost * (1 - 1e-9):
                return trial, ev2, True
    return saved, ev, False
