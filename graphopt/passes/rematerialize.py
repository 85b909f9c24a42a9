"""Rematerialization under a memory budget: save some activations, recompute the rest late.

Needs: a joint forward+backward graph (aot_autograd's, e.g. from
:func:`graphopt.memory.joint.capture_joint` or a backend ``partition_fn``) and
``ctx.options["memory_budget"]``: a float in (0, 1] is a fraction of the activation bytes the
step holds for the backward pass without paid recomputation (the baseline below, so 1.0 costs
no extra compute and every smaller fraction binds), an int is bytes. Optional options: ``num_fwd_outputs``
(from aot_autograd), ``remat_solver`` (``auto``/``greedy``/``milp``), ``remat_time_limit``
(seconds for the exact solver), ``remat_cost`` (``time`` or ``flops``), ``fuse`` (recomputed
pointwise ops are fused, so charged for arithmetic only), ``remat_device`` (the cost model's
device, default the context's), ``remat_clamp`` (a budget below the feasible minimum gets the
tightest feasible plan and a warning instead of an error; the torch.compile backend sets it).

Guarantees: outputs and gradients are unchanged; random ops, collectives and ops with side
effects are never recomputed; the activation memory held for the backward pass stays within the
budget in the planner's accounting (:mod:`graphopt.memory.remat.problem`); at every budget the
plan holds no more than the default partitioner's, since free pointwise ops are recomputed
(:mod:`graphopt.memory.remat.baseline`); each recomputation sits just before its first use (a
value recomputed in several segments, once per segment), or at the earlier stage the exact
solver picks (:mod:`graphopt.memory.remat.rewrite`). A budget below the feasible minimum is a
:class:`~graphopt.errors.PlanError` that states the minimum, or with ``remat_clamp`` a
:class:`~graphopt.memory.remat.solve.BudgetBelowMinimumWarning` and the tightest plan (the
report's ``budget_bytes`` is then that plan's peak, ``requested_budget_bytes`` what was asked).
Running the pass again on its own
output changes nothing; a graph whose nodes carry activation-checkpointing tags
(``torch.utils.checkpoint`` inside the compiled region) is left to them. The plan goes to
``ctx.artifacts["remat"]`` (a :class:`RematReport`).

Complexity: building the problem O(V + E); the fast solver a few evaluations of O(C + E_c + T);
the exact one (small graphs, ``auto`` picks it below 600 binaries) is an MILP with a time limit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from graphopt.graph import Graph
from graphopt.memory.remat.baseline import baseline_held
from graphopt.memory.remat.build import build_problem
from graphopt.memory.remat.problem import resolve_budget
from graphopt.memory.remat.rewrite import RECOMPUTE_META, apply_plan
from graphopt.memory.remat.solve import AUTO_MILP_MAX_VARS, SOLVERS, solve, solve_budget
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["rematerialize", "solve", "RematReport", "AUTO_MILP_MAX_VARS", "SOLVERS"]


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
    requested_budget_bytes: int | None = None
    baseline_held_bytes: int | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class RematerializeOptions:
    """See the module docstring for each key."""

    memory_budget: float | int | None = None
    num_fwd_outputs: int | None = None
    remat_solver: Literal["auto", "greedy", "milp"] = "auto"
    remat_time_limit: float = 10.0
    remat_cost: Literal["time", "flops"] = "time"
    fuse: bool = True
    remat_device: str | None = None
    remat_clamp: bool = False


@register_pass("rematerialize", options=RematerializeOptions, makes=("remat",))
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
    baseline = problem.saved_bytes(problem.default_saved())
    held = baseline_held(problem)
    budget_bytes = resolve_budget(budget, held)
    sol = solve_budget(problem, budget_bytes, baseline=held,
                       solver=ctx.option("remat_solver", "auto"),
                       time_limit=float(ctx.option("remat_time_limit", 10.0)),
                       clamp=bool(ctx.option("remat_clamp", False)), name=graph.name)
    budget_bytes = sol.budget
    ev = sol.evaluation
    created = apply_plan(graph, problem, ev, num_fwd)
    recomputed = [problem.names[v] for v in ev.recomputed() if problem.kind[v] in
                  ("tensor", "tuple")]
    report = RematReport(baseline_saved_bytes=baseline, budget_bytes=budget_bytes,
                         saved_bytes=problem.saved_bytes(ev.saved_mask()),
                         held_peak_bytes=ev.peak, recompute_flops=ev.flops,
                         recomputed=recomputed, saved=[problem.names[v] for v in ev.saved()],
                         solver=sol.stats(), candidates=len(problem),
                         stages=problem.num_stages, requested_budget_bytes=sol.requested_budget,
                         baseline_held_bytes=held)
    ctx.artifacts["remat"] = report
    stats = {"baseline_saved_bytes": baseline, "baseline_held_bytes": held,
             "budget_bytes": budget_bytes,
             "saved_bytes": report.saved_bytes, "held_peak_bytes": ev.peak,
             "recomputed": len(recomputed), "recompute_flops": ev.flops,
             "new_nodes": len(created), "solver": sol.solver, "status": sol.status,
             "recomputations": ev.recomputations()}
    if sol.requested_budget is not None:
        stats["requested_budget_bytes"] = sol.requested_budget
    return PassResult(graph, bool(created), stats)
