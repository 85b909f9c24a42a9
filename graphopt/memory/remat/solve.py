"""Choosing the solver, and what a budget below the feasible minimum means.

:func:`solve` picks the exact MILP (:mod:`graphopt.memory.remat.milp`) for small problems and
the fast solver (:mod:`graphopt.memory.remat.greedy`) otherwise. :func:`solve_budget` adds the
policy for a budget no plan meets:

* by default it is a :class:`~graphopt.errors.PlanError` that states the feasible minimum, in
  bytes and as a fraction, so the user can retry with it (``graphopt remat`` exits with code 2);
* with ``clamp=True`` (the torch.compile backend, where a training run must not die on a number
  that only the first call's shapes decide) it warns once with that minimum, as a
  :class:`BudgetBelowMinimumWarning`, and returns the tightest plan: the least memory on offer,
  i.e. from the plan that reached the minimum, the one whose whole step (held bytes plus
  gradients and backward temporaries) peaks lowest
  (:func:`~graphopt.memory.remat.greedy.tighten`), then made cheaper within its held peak. The
  solution records the budget the user asked for in ``requested_budget``; its ``budget`` is
  the held peak of that plan.
"""
from __future__ import annotations

import math
import warnings

from graphopt.errors import PlanError
from graphopt.memory.remat.greedy import cheapen, solve_greedy, tighten
from graphopt.memory.remat.milp import milp_size, solve_milp
from graphopt.memory.remat.problem import RematProblem, Solution

__all__ = ["solve", "solve_budget", "BudgetBelowMinimumWarning", "AUTO_MILP_MAX_VARS", "SOLVERS"]

AUTO_MILP_MAX_VARS = 600
SOLVERS = ("auto", "greedy", "milp")


class BudgetBelowMinimumWarning(UserWarning):
    """A memory budget below the feasible minimum: the tightest feasible plan was used."""


def solve(problem: RematProblem, budget: int, solver: str = "auto",
          time_limit: float = 10.0) -> Solution:
    """Plan with the named solver. ``auto``: the MILP when it is small, keeping the fast
    solver's plan if it is cheaper (or the MILP ran out of time without one); else the fast one.

    Example:
        >>> sol = solve(problem, budget=problem.saved_bytes(problem.default_saved()) // 2)
        >>> sol.solver, sol.status, sol.evaluation.cost
    """
    if solver not in SOLVERS:
        raise PlanError(f"unknown remat solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if solver == "greedy" or (solver == "auto" and milp_size(problem) > AUTO_MILP_MAX_VARS):
        return solve_greedy(problem, budget)
    exact = solve_milp(problem, budget, time_limit=time_limit)
    if solver == "milp":
        return exact
    fast = solve_greedy(problem, budget)
    if not exact.ok and not fast.ok:  # the lower minimum, with its plan
        return min((exact, fast), key=lambda s: (minimum_of(s), s.evaluation.cost))
    if not exact.ok or (fast.ok and fast.evaluation.cost < exact.evaluation.cost):
        if not fast.ok and exact.min_peak is not None:
            fast.min_peak = min(fast.min_peak or exact.min_peak, exact.min_peak)
        return fast
    return exact


def minimum_of(sol: Solution) -> int:
    """The smallest held peak a failed solve reached."""
    return sol.min_peak if sol.min_peak is not None else sol.evaluation.peak


def describe_minimum(name: str, budget: int, baseline: int, low: int) -> str:
    """One line: the budget, the feasible minimum in bytes and as a fraction of ``baseline``."""
    frac = math.ceil(low / baseline * 1000) / 1000 if baseline else 1.0
    return (f"{name}: memory budget of {budget:,} bytes is below the feasible minimum of "
            f"{low:,} bytes ({frac:.3f} of the {baseline:,} bytes held without paid recomputation)")


def solve_budget(problem: RematProblem, budget: int, *, baseline: int, solver: str = "auto",
                 time_limit: float = 10.0, clamp: bool = False, name: str = "graph") -> Solution:
    """:func:`solve`, with the below-minimum policy of the module docstring.

    Args:
        problem, budget, solver, time_limit: as for :func:`solve` (``budget`` in bytes).
        baseline: the held bytes without paid recomputation (what a fractional budget is a
            fraction of: :func:`~graphopt.memory.remat.baseline.baseline_held`).
        clamp: below the minimum, warn and return the tightest plan instead of raising.
        name: the graph's name, for the message.

    Example:
        >>> sol = solve_budget(problem, 1000, baseline=base, clamp=True)   # warns
        >>> sol.requested_budget, sol.budget == sol.evaluation.peak
        (1000, True)
    """
    sol = solve(problem, budget, solver, time_limit)
    if sol.ok:
        return sol
    low = minimum_of(sol)
    message = describe_minimum(name, budget, baseline, low)
    if not clamp or sol.evaluation.missing or sol.evaluation.peak > low:
        frac = math.ceil(low / baseline * 1000) / 1000 if baseline else 1.0
        raise PlanError(f"{message}; use a budget of at least {frac:.3f} (or {low} bytes)")
    # From the plan that reached the minimum, the one whose whole step peaks lowest (held
    # bytes plus gradients and backward temporaries), made cheaper within its held peak.
    saved, at, ev = tighten(problem, sol.saved, sol.at)
    saved, at, ev = cheapen(problem, saved, at, ev.peak)
    tight = Solution(saved, at, ev, sol.solver, "clamped", sol.seconds, max(low, ev.peak),
                     min_peak=low, requested_budget=budget)
    warnings.warn(f"{message}; using the tightest feasible plan, which holds {low:,} bytes",
                  BudgetBelowMinimumWarning, stacklevel=2)
    return tight
