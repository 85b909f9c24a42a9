"""Rematerialization under a memory budget: save some activations, recompute the rest late.

Needs: a joint forward+backward graph (aot_autograd's, e.g. from
:func:`graphopt.memory.joint.capture_joint` or a backend ``partition_fn``) and
``ctx.options["memory_budget"]``: a float in (0, 1] is a fraction of the bytes a partitioner
without remat saves for the backward pass, an int is bytes. Optional options: ``num_fwd_outputs``
(from aot_autograd), ``remat_solver`` (``auto``/``greedy``/``milp``), ``remat_time_limit``
(seconds for the exact solver), ``remat_cost`` (``time`` or ``flops``), ``fuse`` (recomputed
pointwise ops are fused, so charged for arithmetic only), ``remat_device`` (the cost model's
device, default the context's).

Guarantees: outputs and gradients are unchanged; random ops, collectives and ops with side
effects are never recomputed; the activation memory held for the backward pass stays within the
budget in the planner's accounting (:mod:`graphopt.memory.remat.problem`), with each recomputation just
before its first use, or at the earlier stage the exact solver picks
(:mod:`graphopt.memory.remat.rewrite`). A budget below the feasible minimum is a
:class:`~graphopt.errors.PlanError` that states the minimum. Running the pass again on its own
output changes nothing; a graph whose nodes carry activation-checkpointing tags
(``torch.utils.checkpoint`` inside the compiled region) is left to them. The plan goes to
``ctx.artifacts["remat"]`` (a :class:`RematReport`).

Complexity: building the problem O(V + E); the fast solver a few evaluations of O(C + E_c + T);
the exact one (small graphs, ``auto`` picks it below 600 binaries) is an MILP with a time limit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.memory.remat.build import build_problem
from graphopt.memory.remat.greedy import solve_greedy
from graphopt.memory.remat.milp import milp_size, solve_milp
from graphopt.memory.remat.problem import RematProblem, Solution, resolve_budget
from graphopt.memory.remat.rewrite import RECOMPUTE_META, apply_plan
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["rematerialize", "solve", "RematReport", "AUTO_MILP_MAX_VARS"]

AUTO_MILP_MAX_VARS = 600
SOLVERS = ("auto", "greedy", "milp")


@dataclass
class RematReport:
    """The plan in numbers: what it saves, what it recomputes, and how it was found."""

    baseline_saved_bytes: int
    budget_bytes: int
    saved_bytes: int
    held_peak_bytes: int
    recompute_flops: int
    recomputed: list[str] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    solver: dict = field(default_factory=dict)
    candidates: int = 0
    stages: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


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
    if not exact.ok or (fast.ok and fast.evaluation.cost < exact.evaluation.cost):
        if not fast.ok and exact.min_peak is not None:
            fast.min_peak = min(fast.min_peak or exact.min_peak, exact.min_peak)
        return fast
    return exact


def _below_minimum(graph: Graph, budget_bytes: int, baseline: int, sol: Solution) -> PlanError:
    low = sol.min_peak if sol.min_peak is not None else sol.evaluation.peak
    frac = math.ceil(low / baseline * 1000) / 1000 if baseline else 1.0
    return PlanError(f"{graph.name}: memory budget of {budget_bytes:,} bytes is below the feasible "
                     f"minimum of {low:,} bytes ({frac:.3f} of the {baseline:,} bytes saved "
                     f"without remat); use a budget of at least {frac:.3f} (or {low} bytes)")


@register_pass("rematerialize")
def rematerialize(graph: Graph, ctx: PassContext) -> PassResult:
    budget = ctx.option("memory_budget")
    if budget is None:
        return PassResult(graph, False, {"skipped": "no memory_budget"})
    if any(RECOMPUTE_META in n.meta for n in graph.fx_nodes()):
        return PassResult(graph, False, {"skipped": "already planned"})
    if any(n.meta.get("recompute") is not None for n in graph.fx_nodes()):
        # torch.utils.checkpoint inside the compiled region: the user chose; keep their plan.
        return PassResult(graph, False, {"skipped": "the graph carries activation-checkpointing "
                                                    "tags"})
    num_fwd = ctx.option("num_fwd_outputs")
    problem = build_problem(graph, device=ctx.option("remat_device") or ctx.device,
                            metric=ctx.option("remat_cost", "time"),
                            fused_pointwise=bool(ctx.option("fuse", True)),
                            num_fwd_outputs=num_fwd)
    if not len(problem):
        return PassResult(graph, False, {"skipped": "no activations saved for a backward pass"})
    base = problem.default_saved()
    baseline = problem.saved_bytes(base)
    budget_bytes = resolve_budget(budget, baseline)
    sol = solve(problem, budget_bytes, ctx.option("remat_solver", "auto"),
                float(ctx.option("remat_time_limit", 10.0)))
    if not sol.ok:
        raise _below_minimum(graph, budget_bytes, baseline, sol)
    ev = sol.evaluation
    created = apply_plan(graph, problem, ev, num_fwd)
    recomputed = [problem.names[v] for v in ev.recomputed() if problem.kind[v] in
                  ("tensor", "tuple")]
    report = RematReport(baseline_saved_bytes=baseline, budget_bytes=budget_bytes,
                         saved_bytes=problem.saved_bytes(ev.saved_mask()),
                         held_peak_bytes=ev.peak, recompute_flops=ev.flops,
                         recomputed=recomputed, saved=[problem.names[v] for v in ev.saved()],
                         solver=sol.stats(), candidates=len(problem),
                         stages=problem.num_stages)
    ctx.artifacts["remat"] = report
    stats = {"baseline_saved_bytes": baseline, "budget_bytes": budget_bytes,
             "saved_bytes": report.saved_bytes, "held_peak_bytes": ev.peak,
             "recomputed": len(recomputed), "recompute_flops": ev.flops,
             "new_nodes": len(created), "solver": sol.solver, "status": sol.status}
    return PassResult(graph, bool(created), stats)
