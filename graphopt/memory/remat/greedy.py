"""The fast remat solver: greedy knapsack descent with segment splits, then local improvement.

Needs a :class:`~graphopt.memory.remat.problem.RematProblem`; judges every step with the shared
:func:`~graphopt.memory.remat.problem.evaluate`, so the plan it returns fits the budget in exactly
the accounting the exact solver and the tests use. A plan (:class:`Plan`) is the saved set plus
the extra segment starts of values recomputed more than once.

1. **Start** from the no-remat plan with the free pointwise recomputations
   (:func:`~graphopt.memory.remat.baseline.free_saved`), so no budget gives a plan that holds
   more than the default partitioner's.
2. **Descent.** While the held peak is over the budget, look at the peak stage ``t``. Moves that
   free bytes there: recompute a saved value first needed after ``t``; *split* a value held
   across ``t`` but not needed at ``t`` (free it after its last need before ``t``, recompute it
   again at its next need; a saved value keeps its forward copy for the needs before ``t``).
   Rank them by bytes freed per
   unit of recompute cost (the cost of the value plus whatever it needs that nobody holds),
   apply the best ones until they cover the excess, and keep the step if the bytes-over-budget
   shrink (halving the batch, then trying single moves, when they do not). Three rankings
   (bytes to the power 1, 1/2 and 2 per unit cost) each run; the cheapest plan is kept.
3. **Re-save and merge.** Values recomputed needlessly are saved again, and needless splits
   merged, most expensive per byte first, while an upper bound of the new peak stays within the
   budget. Free values cost nothing to recompute, so they are never saved again.
4. **Swaps** (up to 400 candidates; a fixed amount of work, so the plan never depends on the
   machine's speed): force one expensive recomputed value back to saved and redo 2-3 (kicks
   only up to 100 candidates), or exchange one recomputed value for one saved value; keep what
   makes the plan cheaper.

If no descent reaches the budget, a search that ignores the budget (a peak-minimising descent,
then bisection on the budget) finds the lowest peak it can: that is the *feasible minimum*
reported to the user, and any budget at or above it is met by that plan. Deterministic.
:func:`tighten` pushes down the whole step's peak instead (held bytes plus gradients and
backward temporaries) and :func:`cheapen` re-saves what fits: together they give the tightest
plan for a budget below the minimum (:mod:`graphopt.memory.remat.solve`).

Complexity: each descent step costs one evaluation, O(C + E_c + T); steps are few because each
covers the whole excess. Re-save is O(C * T) with numpy slices; swaps a bounded number of
descents.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field

import numpy as np

from graphopt.memory.remat.baseline import free_saved
from graphopt.memory.remat.problem import (
    NONE,
    RECOMPUTED,
    SAVED,
    Evaluation,
    RematProblem,
    Solution,
    evaluate,
)

__all__ = ["solve_greedy", "Plan", "cheapen", "tighten"]

_SWAP_MAX_CANDIDATES = 400
_SWAP_KICK_MAX_CANDIDATES = 100
_SWAP_ROUNDS, _SWAP_TRIES = 12, 32
# Rankings of the descent, bytes**alpha per unit cost: each run is cheap, the best plan wins.
_RANKINGS = (1.0, 0.5, 2.0)


@dataclass
class Plan:
    """The fast solver's decisions: ``saved`` (bool per candidate) and ``splits``, the extra
    segment starts of values recomputed more than once (see
    :mod:`graphopt.memory.remat.problem`)."""

    saved: np.ndarray
    splits: dict[int, tuple[int, ...]] = field(default_factory=dict)

    def copy(self) -> Plan:
        return Plan(self.saved.copy(), dict(self.splits))

    def save(self, values) -> None:
        values = list(values)
        self.saved[values] = True
        for v in values:
            self.splits.pop(v, None)

    def split(self, v: int, stage: int) -> None:
        self.splits[v] = tuple(sorted(set(self.splits.get(v, ())) | {stage}))

    def key(self) -> tuple:
        return tuple(np.flatnonzero(self.saved).tolist()), tuple(sorted(self.splits.items()))


def _evaluate(p: RematProblem, plan: Plan) -> Evaluation:
    """The policy's schedule: each segment at its first need, except that the small outputs of
    a multi-output op (a layer norm's mean and rstd) come with the latest recomputation of a
    large output before they are needed, so the op runs once instead of once per output."""
    ev = evaluate(p, plan.saved, plan.splits)
    at: dict[int, tuple[int, ...]] = {}
    for tup, items in _siblings(p).items():
        rec = [i for i in items if ev.state[i] == RECOMPUTED]
        if len(rec) < 2:
            continue
        small = [i for i in rec if 8 * int(p.hold[i]) <= int(p.work[tup])]
        anchors = sorted({s for i in rec if i not in small for s, _ in ev.segments[i]})
        if not anchors:
            anchors = [min(ev.first[i] for i in rec)]
        for i in small:
            k = bisect.bisect_right(anchors, ev.first[i]) - 1
            if k >= 0 and anchors[k] < ev.first[i]:
                at[i] = (anchors[k], *plan.splits.get(i, ()))
    if not at:
        return ev
    return evaluate(p, plan.saved, {**plan.splits, **at})


def _siblings(p: RematProblem) -> dict[int, list[int]]:
    cached = getattr(p, "_siblings", None)
    if cached is None:
        cached = {t: [i for i in p.users[t] if p.kind[i] == "item"]
                  for t in range(len(p)) if p.kind[t] == "tuple"}
        p._siblings = cached
    return cached


def _repair(p: RematProblem, plan: Plan) -> Evaluation:
    """Evaluate, saving any value that must be saved (not recomputable) until none is missing."""
    ev = _evaluate(p, plan)
    while ev.missing:
        fix = [v for v in ev.missing if p.holdable[v]]
        if not fix:
            break
        plan.save(fix)
        ev = _evaluate(p, plan)
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


def _moves(p: RematProblem, ev: Evaluation, t: int, skip: set[int], alpha: float):
    """Moves that free bytes at stage ``t``, best first: ``(score, v, gain, split, drop)``.

    ``drop``: a saved value first needed after ``t`` is recomputed instead; ``split``: a value
    held across ``t`` but not needed there (saved or recomputed) is freed after its last need
    before ``t`` and recomputed at ``split``, its next need."""
    memo: dict = {}
    ranked = []
    for v in range(len(p)):
        state = ev.state[v]
        if v in skip or not p.holdable[v] or not p.recomputable[v] or state == NONE:
            continue
        drop = state == SAVED and ev.first[v] > t
        split = None
        if not drop:
            needs = ev.needs.get(v, ())
            k = bisect.bisect_right(needs, t)
            if k == len(needs) or (k and needs[k - 1] == t) or not ev.present(v, t):
                continue  # not held across t, or needed at t itself
            split = needs[k]
        cost, pen = _closure(p, ev, v, memo)
        if split is not None:
            pen += sum(int(p.hold[u]) for u in p.inputs[v] if p.holdable[u]
                       and not ev.present(u, t) and not ev.present(u, split))
        gain = int(p.hold[v]) - pen
        if gain > 0:
            ranked.append((-gain ** alpha / (cost + 1e-18), v, gain, split, drop))
    ranked.sort(key=lambda r: r[:2])
    return ranked


def _apply(plan: Plan, moves) -> Plan:
    out = plan.copy()
    for _, v, _, split, drop in moves:
        if drop:
            out.saved[v] = False
        if split is not None:
            out.split(v, split)
    return out


def _descend(p: RematProblem, plan: Plan, budget: int | None, tabu: set[int],
             kicks: int = 1, alpha: float = 1.0, base: np.ndarray | int = 0):
    """Apply moves until the plan fits ``budget`` (None: push the peak of held bytes plus
    ``base`` down).

    When no move helps, a *kick* saves again a value recomputed at the peak stage (recomputing
    it there may have pinned its inputs) and descends from there; kept if it helps.
    Returns ``(plan, evaluation, best_plan, best_evaluation)``; the best is the lowest peak
    seen on the way.
    """
    tabu = set(tabu)
    ev = _repair(p, plan)
    best = (plan.copy(), ev)

    def score(e: Evaluation):
        if budget is not None:
            return e.over(budget)
        total = e.mem + base
        return int(total.max()), float(total.sum())

    def done(e: Evaluation) -> bool:
        return budget is not None and e.peak <= budget

    def height(e: Evaluation) -> int:
        return int((e.mem + base).max()) if len(e.mem) else 0

    rejected: set[int] = set()
    while not done(ev):
        t = int(np.argmax(ev.mem + base)) if budget is None else ev.peak_stage
        excess = int(ev.mem[t]) - (budget if budget is not None else 0)
        ranked = _moves(p, ev, t, tabu | rejected, alpha)
        if not ranked:
            kicked = _kick(p, plan, ev, budget, tabu, score, alpha, base) if kicks else None
            if kicked is None:
                break
            plan, ev, v = kicked
            tabu.add(v)
            if height(ev) < height(best[1]):
                best = (plan.copy(), ev)
            continue
        k, covered = 0, 0
        while k < len(ranked) and covered < excess:
            covered += ranked[k][2]
            k += 1
        tries = []
        while k >= 1:
            tries.append(ranked[:k])
            k //= 2
        tries.extend([[r] for r in ranked[1:9]])
        accepted = False
        for batch in tries:
            trial = _apply(plan, batch)
            ev2 = _repair(p, trial)
            if score(ev2) < score(ev):
                plan, ev, accepted = trial, ev2, True
                break
        if not accepted:
            rejected.update(r[1] for r in ranked[:9])
            continue
        if height(ev) < height(best[1]):
            best = (plan.copy(), ev)
    return plan, ev, best[0], best[1]


def _kick(p: RematProblem, plan: Plan, ev: Evaluation, budget, tabu: set[int], score,
          alpha: float, base: np.ndarray | int = 0, tries: int = 8):
    """Save again one value recomputed at an over-budget stage (recomputing it there pins its
    inputs early), then descend without kicks; the first that helps is kept."""
    mem = ev.mem if budget is not None else ev.mem + base
    limit = budget if budget is not None else int(mem.max()) - 1
    hot = set(np.flatnonzero(mem > limit).tolist())
    pinned = [v for v in ev.recomputed() if p.holdable[v] and v not in tabu
              and any(s in hot for s, _ in ev.segments[v])]

    # Most pinning first: the bytes of the recomputed inputs it makes live at its stage.
    def pins(v: int) -> int:
        return sum(int(p.hold[u]) for u in p.inputs[v] if ev.state[u] == RECOMPUTED
                   and p.holdable[u] and ev.last[u] > ev.first[v])
    for v in sorted(pinned, key=lambda v: (-pins(v), -int(p.hold[v]), v))[:tries]:
        trial = plan.copy()
        trial.save([v])
        p2, e2, _, _ = _descend(p, trial, budget, tabu | {v}, kicks=0, alpha=alpha, base=base)
        if score(e2) < score(ev):
            return p2, e2, v
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
            units.append(((v,), float(p.cost[v]) * len(ev.segments[v])))
    return units


def _resave(p: RematProblem, plan: Plan, budget: int) -> tuple[Plan, Evaluation]:
    """Save again recomputed values, and merge split segments, whose bytes fit: most expensive
    per byte first."""
    ev = _evaluate(p, plan)
    for _ in range(3):
        mem = ev.mem.astype(np.int64).copy()
        # (members, cost avoided, bytes, first and last stage the bytes are added at, merge at)
        options = []
        for members, cost in _units(p, ev):
            segs = [ev.segments[v] for v in members]
            # Saved, a value is held from the start through its last recomputation: at most
            # its bytes more there and before, and never more anywhere else.
            top = max(s[-1][0] if len(s) > 1 else s[0][0] for s in segs)
            options.append((members, cost, int(p.hold[list(members)].sum()), 0, top, None))
        for v, marks in plan.splits.items():
            segs = ev.spans(v)
            if len(segs) < 2 or p.cost[v] <= 0:
                continue
            for (_, end), (start, _) in zip(segs, segs[1:]):
                if start in marks:
                    options.append(((v,), float(p.cost[v]), int(p.hold[v]), end + 1, start,
                                    start))
        options.sort(key=lambda o: (-o[1] / max(o[2], 1), o[0], o[5] or -1))
        changed = False
        for members, _, h, lo, hi, merge in options:
            if merge is None and any(plan.saved[v] for v in members):
                continue
            if int(mem[lo:hi + 1].max()) + h > budget:
                continue
            if merge is not None and merge not in plan.splits.get(members[0], ()):
                continue
            mem[lo:hi + 1] += h
            if merge is None:
                plan.save(members)
            else:
                rest = tuple(s for s in plan.splits[members[0]] if s != merge)
                if rest:
                    plan.splits[members[0]] = rest
                else:
                    del plan.splits[members[0]]
            changed = True
        if not changed:
            break
        ev = _evaluate(p, plan)
    return plan, ev


def cheapen(p: RematProblem, saved: np.ndarray, at: dict, budget: int):
    """Any plan (``saved`` and segment starts ``at``), made cheaper without exceeding
    ``budget``: recomputed values saved again and splits merged where the bytes fit.
    Returns ``(saved, at, evaluation)``."""
    plan = Plan(saved.copy(), {v: tuple(s) if not isinstance(s, (int, np.integer)) else (int(s),)
                               for v, s in at.items()})
    plan, ev = _resave(p, plan, budget)
    return plan.saved, ev.schedule(), ev


def tighten(p: RematProblem, saved: np.ndarray, at: dict):
    """The plan with the least memory on offer, starting from ``saved`` and ``at``: a descent
    that pushes down the step's peak, held bytes plus what no plan changes (``p.base``), and
    keeps the result only if that peak fell. Returns ``(saved, at, evaluation)``."""
    plan = Plan(saved.copy(), {v: tuple(s) if not isinstance(s, (int, np.integer)) else (int(s),)
                               for v, s in at.items()})
    ev = _evaluate(p, plan)
    _, _, low, low_ev = _descend(p, plan.copy(), None, set(), base=p.base)
    if len(ev.mem) and (low_ev.mem + p.base).max() < (ev.mem + p.base).max():
        plan, ev = low, low_ev
    return plan.saved, ev.schedule(), ev


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
    if _repair(p, Plan(base.copy())).missing:  # a view or multi-output op that cannot be rerun
        ev = _evaluate(p, Plan(base))
        return Solution(base, ev.schedule(), ev, "greedy", "infeasible",
                        time.perf_counter() - start, budget, min_peak=p.saved_bytes(base))
    first = Plan(free_saved(p))
    plans, min_peak = [], None
    for alpha in _RANKINGS:
        plan, ev, _, _ = _descend(p, first.copy(), budget, set(), alpha=alpha)
        if ev.peak <= budget:
            plans.append(_resave(p, plan, budget))
    if not plans:
        low_plan, low_ev = _minimum(p, first)
        min_peak = low_ev.peak
        if low_ev.peak > budget:
            return Solution(low_plan.saved, low_ev.schedule(), low_ev, "greedy", "infeasible",
                            time.perf_counter() - start, budget, min_peak=min_peak)
        plans.append(_resave(p, low_plan.copy(), budget))
    if swaps is None:
        swaps = len(p) <= _SWAP_MAX_CANDIDATES
    if swaps:  # local search from every start: a cheaper start is not always a better basin
        plans = [_swap(p, s, e, budget) for s, e in plans]
    plan, ev = min(plans, key=lambda pe: pe[1].cost)
    assert ev.peak <= budget, "re-saving broke the budget"
    return Solution(plan.saved, ev.schedule(), ev, "greedy", "heuristic",
                    time.perf_counter() - start, budget, min_peak=min_peak)


def _minimum(p: RematProblem, first: Plan, rounds: int = 8, tolerance: float = 0.05):
    """The lowest held peak the descent reaches, found without reference to any budget.

    A peak-minimising descent gives a first plan; bisection on the budget between 0 and the
    lowest peak seen so far then keeps the lowest peak any descent reaches (a descent that
    misses its budget may still pass below the best so far), until the bracket is within
    ``tolerance`` of that peak. Independent of the user's budget, so the minimum reported in an
    error is one that a retry at that budget meets.
    """
    _, _, plan, ev = _descend(p, first.copy(), None, set())
    lo = 0
    for _ in range(rounds):
        if ev.peak - lo <= max(1, int(ev.peak * tolerance)):
            break
        mid = (lo + ev.peak) // 2
        for alpha in _RANKINGS:
            p2, e2, bp, be = _descend(p, first.copy(), mid, set(), alpha=alpha)
            if be.peak < ev.peak:
                plan, ev = bp, be
            if e2.peak <= mid:
                if e2.peak < ev.peak or (e2.peak == ev.peak and e2.cost < ev.cost):
                    plan, ev = p2, e2
                break
        else:
            lo = mid
    return plan, ev


def _swap(p: RematProblem, plan: Plan, ev: Evaluation, budget: int):
    """Local search with a fixed amount of work (so plans do not depend on the machine's
    speed): at most ``_SWAP_ROUNDS`` improvements, each trying the ``_SWAP_TRIES`` recomputed
    values that cost the most."""
    tried: set[tuple] = set()
    kicks = int(len(p) <= _SWAP_KICK_MAX_CANDIDATES)  # kicks multiply the work: small graphs only
    for _ in range(_SWAP_ROUNDS):
        improved = False
        for members, _ in sorted(_units(p, ev), key=lambda u: (-u[1], u[0]))[:_SWAP_TRIES]:
            key = (members, plan.key())
            if key in tried:
                continue
            tried.add(key)
            trial = plan.copy()
            trial.save(members)
            trial, ev2, _, _ = _descend(p, trial, budget, set(members), kicks=kicks)
            if ev2.peak > budget:
                continue
            trial, ev2 = _resave(p, trial, budget)
            if ev2.peak <= budget and ev2.cost < ev.cost * (1 - 1e-9):
                plan, ev, improved = trial, ev2, True
                break
        if not improved:
            plan, ev, improved = _exchange(p, plan, ev, budget)
        if not improved:
            break
    return plan, ev


def _exchange(p: RematProblem, plan: Plan, ev: Evaluation, budget: int):
    """One pairwise exchange that makes the plan cheaper: save a recomputed value and recompute
    a saved one in its place (the bytes they free and cost trade differently at every stage)."""
    back = [m for m, _ in sorted(_units(p, ev), key=lambda u: (-u[1], u[0]))]
    out = sorted((v for v in ev.saved() if p.recomputable[v]),
                 key=lambda v: (float(p.cost[v]) / max(int(p.hold[v]), 1), v))
    for r in back[:_SWAP_TRIES]:
        for s in out[:_SWAP_TRIES]:
            trial = plan.copy()
            trial.save(r)
            trial.saved[s] = False
            ev2 = _repair(p, trial)
            if ev2.peak <= budget and ev2.cost < ev.cost * (1 - 1e-9):
                return trial, ev2, True
    return plan, ev, False
