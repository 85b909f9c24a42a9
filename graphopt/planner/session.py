"""A planning session: what ``graphopt plan`` runs, usable from Python.

Captures the model's training step (:class:`~graphopt.planner.model.ModelCosts`), measures the
engine's own costs where asked (:mod:`graphopt.planner.engine`), prices and ranks every
configuration (:func:`~graphopt.planner.predict.plan_parallel`), optionally trains the best on
this host (:mod:`graphopt.planner.measure`) and the what-if views (:mod:`graphopt.planner.whatif`),
and returns the ``graphopt.parallel/1`` document.

Example:
    >>> cm = CostModel(Target.preset("cpu"))
    >>> session = plan_session(load_spec("zoo:resmlp"), cm, devices=2)
    >>> session.result.chosen.config.label(), session.document["chosen"]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.planner.engine import engine_overhead
from graphopt.planner.measure import measure, rank_agreement
from graphopt.planner.model import ModelCosts
from graphopt.planner.predict import DEFAULT_SCHEDULES, PlanResult, links_of, plan_parallel, to_document
from graphopt.planner.whatif import scaling_ns, what_if

__all__ = ["PlanSession", "plan_session", "device_document"]


@dataclass
class PlanSession:
    """What a session made: the model's costs, the ranking, the document and files written."""

    costs: ModelCosts
    result: PlanResult
    document: dict
    written: list[Path] = field(default_factory=list)


def device_document(costs: ModelCosts) -> dict:
    """The ``device`` section of ``parallel.json``: what the plan was priced for."""
    p2p, ring = links_of(costs)
    return {"key": costs.device, "name": costs.spec.name,
            "priced_for": costs.cost_model.describe(), "p2p_link": {
                "name": p2p.name, "alpha_s": p2p.alpha, "beta_s_per_byte": 1.0 / p2p.beta},
            "allreduce_link": {"name": ring.name, "alpha_s": ring.alpha,
                               "beta_s_per_byte": 1.0 / ring.beta}}


def plan_session(loaded, cost_model: CostModel, devices: int, *, model: str | None = None,
                 memory_per_device: int | None = None, schedules=DEFAULT_SCHEDULES,
                 budgets=(None,), max_microbatches: int = 16, optimizer: str = "sgd",
                 seed: int = 0, imbalance: float = 0.03, capture_mode: str = "auto",
                 step_timing: bool = True, engine: str = "off", measure_top: int = 0,
                 steps: int = 4, timeout_s: float = 300.0, what_if_dir: Path | None = None,
                 progress=None) -> PlanSession:
    """Plan ``loaded`` on ``devices`` devices priced by ``cost_model`` (module docstring).

    Args:
        engine: ``off``, ``auto`` (cached engine costs, else measured) or ``measure``.
        measure_top: train this many of the best (no remat budget) on this host; 0: none.
        what_if_dir: where the what-if pictures go; None: no what-if views.
        progress: a :class:`~graphopt.progress.Progress`, or None.
    """
    cm = as_cost_model(cost_model)

    def step(text):
        return progress.step(text) if progress is not None else _Nothing()
    with step(f"capturing {loaded.spec}'s training step"):
        costs = ModelCosts(loaded, cm, optimizer=optimizer, seed=seed, imbalance=imbalance,
                           capture_mode=capture_mode, time_steps=None if step_timing else False)
    if engine != "off":
        worlds = {devices} | (set(scaling_ns(devices)) if what_if_dir is not None else set())
        for n in sorted(worlds):
            with step(f"the engine's own costs on {n} processes ({engine})"):
                eng = engine_overhead(n, cm, refresh=engine == "measure")
            if eng is not None:
                costs.engines[n] = eng
    with step(f"pricing the configurations of {devices} devices"):
        result = plan_parallel(costs, devices, memory_per_device, schedules=schedules,
                               max_microbatches=max_microbatches, budgets=budgets)
    extra: dict = {"optimizer": optimizer, "seed": seed,
                   "engine_overhead": {str(n): e.to_dict() for n, e in costs.engines.items()}}
    if measure_top:
        top = [c for c in result.ranked if c.config.memory_budget is None][:measure_top]
        with step(f"training the best {len(top)} on this host"):
            measure(costs, top, steps=steps, timeout_s=timeout_s)
        extra["measured"] = rank_agreement(top)
    written: list[Path] = []
    if what_if_dir is not None:
        kwargs = {"schedules": schedules, "budgets": budgets, "max_microbatches": max_microbatches}
        with step("what-if: gradient sync and scaling over N"):
            extra["what_if"], written = what_if(
                costs, result, what_if_dir, measure=bool(measure_top), steps=steps,
                timeout_s=timeout_s, cap=memory_per_device, plan_kwargs=kwargs)
    doc = to_document(result, model=model or loaded.spec, device=device_document(costs),
                      extra=extra)
    return PlanSession(costs=costs, result=result, document=doc, written=written)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
