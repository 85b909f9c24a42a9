"""Planning a training step's memory: what ``graphopt remat --train`` and the benchmarks run.

:func:`plan_training_memory` captures a model's forward graph in training mode, traces its
joint forward+backward graph (:mod:`graphopt.memory.joint`), plans which activations to save and
which to recompute so that what the backward pass holds fits the budget (the ``TRAINING_JOINT``
pass list: :mod:`graphopt.passes.rematerialize`, then :mod:`graphopt.passes.plan_memory`), and
returns the ``memory.json`` report with the step's memory before and after the plan
(:func:`graphopt.memory.step.step_memory`), ready to draw
(:func:`graphopt.memory.plot.plot_step_memory`). It runs a pass list, so it lives above the
passes, with the other sessions the CLI runs.

A model whose training-mode step cannot be traced (batch-norm running statistics are in-place
writes aot_autograd cannot differentiate through once exported) is planned in eval mode, and the
report's notes say so.

Cost: one capture and one aot_autograd trace (fake tensors: nothing runs), then the solver
(the MILP under ``time_limit`` on small graphs, the fast solver otherwise).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch.utils._pytree as pytree

from graphopt.capture import capture
from graphopt.errors import GraphoptError
from graphopt.graph import Graph
from graphopt.memory.joint import capture_joint
from graphopt.memory.report import memory_report
from graphopt.memory.step import StepMemory, step_memory
from graphopt.parallel import MemoryBudget
from graphopt.pass_lists import TRAINING_JOINT, run_pipeline
from graphopt.passes import PassContext

__all__ = ["TrainingMemoryPlan", "plan_training_memory"]


@dataclass
class TrainingMemoryPlan:
    """What :func:`plan_training_memory` returns.

    ``report``: the ``memory.json`` document (schema ``graphopt.memory/1``); ``baseline`` and
    ``plan``: the step without and with the plan; ``graph``: the planned joint graph;
    ``budget_bytes``: the budget in bytes (what ``held`` must stay under in the backward pass).
    """

    report: dict
    baseline: StepMemory
    plan: StepMemory
    graph: Graph
    budget_bytes: int | None
    notes: list[str] = field(default_factory=list)


def plan_training_memory(model, inputs, budget, *, kwargs: dict | None = None,
                         solver: str = "auto", time_limit: float = 10.0, cost_model=None,
                         seed: int = 0, capture_mode: str = "auto", name: str | None = None,
                         progress=None) -> TrainingMemoryPlan:
    """Plan the memory of one training step of ``model`` on ``inputs`` under ``budget``.

    Args:
        model: a ``torch.nn.Module`` (put in training mode here).
        inputs: its example positional inputs (a tuple); ``kwargs`` its keyword inputs.
        budget: a :class:`~graphopt.parallel.MemoryBudget`, or what its ``parse`` reads: a
            fraction in (0, 1] of the activation bytes held for the backward pass without paid
            recomputation (a float), or bytes (an int, or ``"256MiB"``). Checked first.
        solver: ``auto`` (the MILP on small graphs), ``greedy`` or ``milp``.
        time_limit: seconds for the MILP.
        cost_model: what prices recomputation (a :class:`graphopt.costmodel.CostModel`);
            None: the pass's default.
        capture_mode: as :func:`graphopt.capture`; ``name`` names the model in the report.
        progress: a :class:`~graphopt.progress.Progress` to report the steps on, or None.

    Returns:
        A :class:`TrainingMemoryPlan`. A budget below the feasible minimum raises
        :class:`~graphopt.errors.PlanError` stating the minimum.

    Example:
        >>> model, inputs = zoo.build("resmlp")
        >>> res = plan_training_memory(model, inputs, 0.5)
        >>> res.report["plan"]["held_peak_bytes"] <= res.budget_bytes
        True
    """
    budget = MemoryBudget.parse(budget, option="budget")
    name = name or type(model).__name__

    def step(text: str):
        return progress.step(text) if progress is not None else contextlib.nullcontext()

    def forward_graph() -> Graph:
        with step(f"capturing {name}"):
            return capture(model, inputs, kwargs or None, mode=capture_mode, name=name)

    notes: list[str] = []
    model.train()
    graph = forward_graph()
    flat = pytree.tree_leaves((inputs, kwargs or {}))
    with step("tracing the training step"):
        try:
            joint = capture_joint(graph, flat)
        except GraphoptError as exc:
            # Train-mode state updates (batch-norm running statistics) are in-place writes
            # aot_autograd cannot differentiate through once exported; plan the eval-mode step.
            model.eval()
            graph = forward_graph()
            joint = capture_joint(graph, flat)
            notes.append(f"planned the step with the model in eval mode: in train mode "
                         f"{str(exc).split(': ', 1)[-1][:160]}")
    before = step_memory(joint.graph)
    ctx = PassContext(options={"memory_budget": budget.value,
                               "num_fwd_outputs": joint.num_fwd_outputs,
                               "remat_solver": solver, "remat_time_limit": time_limit},
                      seed=seed, device=cost_model)
    with step(f"planning under budget {budget}"):
        planned = run_pipeline(joint.graph, TRAINING_JOINT, ctx)
    memory = ctx.artifacts["memory"]
    report = memory_report(model=name, train=True, baseline=before.liveness,
                           plan=memory.liveness, arena=memory.arena,
                           total_flops=planned.total_flops, remat=ctx.artifacts.get("remat"),
                           budget=budget.value)
    report["notes"].extend(notes)
    if "remat" not in ctx.artifacts:
        report["notes"].append("no activation is saved for the backward pass: nothing to plan")
    return TrainingMemoryPlan(report, before, step_memory(planned, memory.liveness), planned,
                              report["budget_bytes"], notes)
