"""The plan every solver starts from: no remat, except the free pointwise recomputations.

A partitioner without rematerialization saves every forward value the backward pass reads
(:meth:`~graphopt.memory.remat.problem.RematProblem.default_saved`). PyTorch's min-cut
partitioner does better at no cost: a pointwise op whose inputs are held anyway (a GELU of a
saved matmul output) is recomputed in the backward pass instead of saved. :func:`free_saved`
does the same with the ops :func:`graphopt.memory.remat.build.is_free` calls free: it turns a
saved free value into a recomputed one whenever its inputs are present at its first need
(saved and still held, recomputed and held across that stage, views of those, or free values
recomputed along with it), then keeps the change only where the shared accounting
(:func:`~graphopt.memory.remat.problem.evaluate`) holds nowhere more bytes than before. Rounds
repeat, so a chain of pointwise ops between two saved values goes as a whole.

The result never holds more, at any stage, than the no-remat plan, and costs 0 (free values
are charged nothing), so a plan from it is never worse than the default partitioner's.

Complexity: a few evaluations per round, O(C + E_c + T) each; at most ``rounds`` rounds.
"""
from __future__ import annotations

import numpy as np

from graphopt.memory.remat.problem import NONE, SAVED, Evaluation, RematProblem, evaluate

__all__ = ["free_saved", "baseline_held"]


def free_saved(p: RematProblem, saved: np.ndarray | None = None, rounds: int = 8) -> np.ndarray:
    """The saved mask of ``saved`` (default: the no-remat plan) with the free recomputations.

    Example:
        >>> saved = free_saved(problem)
        >>> evaluate(problem, saved).peak <= problem.saved_bytes(problem.default_saved())
        True
    """
    if saved is None and rounds == 8:   # the baseline: the budget's reference, the solvers' start
        cached = getattr(p, "_free_saved", None)
        if cached is None:
            cached = p._free_saved = free_saved(p, p.default_saved())
        return cached.copy()
    saved = (p.default_saved() if saved is None else saved).copy()
    if not p.free.any():
        return saved
    ev = evaluate(p, saved)
    for _ in range(rounds):
        flips = [v for v in np.flatnonzero(saved & p.free & p.recomputable).tolist()
                 if ev.state[v] == SAVED and _present(p, ev, p.inputs[v], ev.first[v], set())]
        accepted = False
        while flips:
            trial = saved.copy()
            trial[flips] = False
            ev2 = evaluate(p, trial)
            worse = set(np.flatnonzero(ev2.mem > ev.mem).tolist())
            if not worse and not ev2.missing:
                saved, ev, accepted = trial, ev2, True
                break
            # Keep the flips whose recomputation stages are not where it got worse; halve when
            # that removes nothing.
            keep = [v for v in flips if not worse & _stages(ev2, v)]
            flips = keep if len(keep) < len(flips) else flips[: len(flips) // 2]
        if not accepted:
            break
    return saved


def baseline_held(p: RematProblem) -> int:
    """What a fractional memory budget is a fraction of: the held peak of :func:`free_saved`'s
    plan, the activation bytes the step holds for its backward pass when nothing is recomputed
    at a cost. Budget 1.0 is then that plan (no extra compute, as 1.0 is PyTorch's default
    partitioner for its ``activation_memory_budget``), and every fraction below it binds: 0.75
    asks for a quarter less than what the step holds for free, not a quarter less than a plan
    that saves even free pointwise values."""
    return int(evaluate(p, free_saved(p)).peak)


def _stages(ev: Evaluation, v: int) -> set[int]:
    return {s for s, _ in ev.segments.get(v, ())}


def _present(p: RematProblem, ev: Evaluation, inputs: list[int], t: int, seen: set[int]) -> bool:
    """Whether recomputing a value with these inputs at stage ``t`` holds nothing new: each
    input is held across ``t`` already, or is a view or a free value (not needed otherwise)
    whose own inputs are."""
    for u in inputs:
        if u in seen:
            continue
        seen.add(u)
        if p.holdable[u] and ev.state[u] != NONE:
            if not ev.present(u, t):
                return False
            continue
        cheap = p.kind[u] == "view" or (p.free[u] and ev.state[u] == NONE)
        if not (cheap and p.recomputable[u] and _present(p, ev, p.inputs[u], t, seen)):
            return False
    return True
