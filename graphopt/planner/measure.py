"""Run planned configurations through the training runtime and compare with the prediction.

Each configuration trains ``steps`` steps on ``dp * pp`` processes of this host with exactly the
stage plan the prediction priced (:meth:`ModelCosts.plan`, handed to
:func:`~graphopt.distributed.trainer.make_job`), and its measured step time is the runtime's:
the median over the steps after the first (``train.json``'s ``measured.step_seconds``).
Configurations of one world size share one launch (:func:`~graphopt.distributed.trainer.run_jobs`):
process start-up is paid once, and every configuration meets the same machine.

A configuration with a ``memory_budget`` is not run: the runtime records the budget but does not
rematerialize, so its time would be that of the configuration without one.

How good a ranking is: :func:`rank_agreement` gives the Spearman rank correlation between
predicted and measured step times (``scipy.stats.spearmanr``) and each row's relative error.

Example:
    >>> measure(costs, result.ranked[:3], steps=4)       # fills measured_step_seconds
    >>> rank_agreement(result.ranked[:3])["spearman"]
"""
from __future__ import annotations

import math
from collections import defaultdict

from graphopt.distributed.job import TrainConfig
from graphopt.distributed.trainer import run_jobs
from graphopt.errors import GraphoptError
from graphopt.launch import WorkerError
from graphopt.planner.training import make_job

__all__ = ["measure", "training_job", "rank_agreement", "MeasureError"]


class MeasureError(GraphoptError):
    """The runtime could not run a configuration (a rank failed or the job timed out)."""


def training_job(costs, cand, *, steps: int, timeout_s: float):
    """The runtime's job for ``cand``: its configuration on the stage plan it was priced with."""
    c = cand.config
    micro = c.microbatch_size or c.split_batch(costs.batch)
    cfg = TrainConfig(c, steps=steps, optimizer=costs.optimizer, seed=costs.seed,
                      timeout_s=timeout_s)
    job, _ = make_job(costs.prepared(micro), cfg, plan=costs.plan(c.n_stages, micro),
                      cost_model=costs.cost_model)
    return job


def measure(costs, candidates, *, steps: int = 4, timeout_s: float = 300.0,
            threads: int | None = None, progress=None) -> list[float | None]:
    """Measured step seconds of each candidate (None for those with a memory budget); each
    candidate's ``measured_step_seconds`` is set too.

    Raises:
        MeasureError: a launch failed; the message names the configurations it held.
    """
    if steps < 2:
        raise GraphoptError(f"measuring needs at least 2 steps (the first warms up), got {steps}")
    by_world: dict[int, list[int]] = defaultdict(list)
    for i, cand in enumerate(candidates):
        if cand.config.memory_budget is None:
            by_world[cand.config.world_size].append(i)
    out: list[float | None] = [None] * len(candidates)
    for world in sorted(by_world):
        idx = by_world[world]
        jobs = [training_job(costs, candidates[i], steps=steps, timeout_s=timeout_s) for i in idx]
        if progress is not None:
            progress(world, [candidates[i] for i in idx])
        try:
            runs = run_jobs(jobs, threads=threads)
        except WorkerError as exc:
            labels = "; ".join(candidates[i].config.label() for i in idx)
            raise MeasureError(f"training {labels} on {world} processes failed: {exc}") from None
        for i, run in zip(idx, runs):
            out[i] = float(run.median_step_seconds)
            candidates[i].measured_step_seconds = out[i]
    return out


def rank_agreement(candidates) -> dict:
    """Spearman between predicted and measured step times, and the error of each row.

    Returns:
        ``{"n", "spearman", "p_value", "errors": [predicted / measured - 1, ...],
        "median_abs_error", "max_abs_error", "best_measured", "best_predicted",
        "chosen_vs_best"}``: ``chosen_vs_best`` is how much slower the configuration predicted
        fastest ran than the fastest one measured (0 when it was the fastest).
    """
    from scipy.stats import spearmanr
    rows = [c for c in candidates if c.measured_step_seconds]
    errors = [c.predicted_step_seconds / c.measured_step_seconds - 1.0 for c in rows]
    out = {"n": len(rows), "spearman": None, "p_value": None, "errors": errors,
           "median_abs_error": None, "max_abs_error": None, "best_measured": None,
           "best_predicted": None, "chosen_vs_best": None}
    if not rows:
        return out
    absolute = sorted(abs(e) for e in errors)
    out["median_abs_error"] = absolute[len(absolute) // 2] if len(absolute) % 2 else \
        0.5 * (absolute[len(absolute) // 2 - 1] + absolute[len(absolute) // 2])
    out["max_abs_error"] = absolute[-1]
    fastest = min(rows, key=lambda c: c.measured_step_seconds)
    predicted = min(rows, key=lambda c: c.predicted_step_seconds)
    out["best_measured"] = fastest.config.to_dict()
    out["best_predicted"] = predicted.config.to_dict()
    out["chosen_vs_best"] = predicted.measured_step_seconds / fastest.measured_step_seconds - 1.0
    if len(rows) >= 3:
        rho, p = spearmanr([c.predicted_step_seconds for c in rows],
                           [c.measured_step_seconds for c in rows])
        out["spearman"] = None if math.isnan(rho) else float(rho)
        out["p_value"] = None if math.isnan(p) else float(p)
    return out
