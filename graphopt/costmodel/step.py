"""One step prediction: what ``partition``, ``pipeline``, ``train`` and ``plan`` all print.

:func:`predict_step` takes a :class:`~graphopt.costmodel.stage_profile.StageProfile` (per-stage
forward and backward seconds, boundary bytes with the relays, gradient and parameter bytes), a
:class:`~graphopt.parallel.ParallelConfig` (or a training configuration wrapping one) and a
:class:`~graphopt.costmodel.target.CostModel`, and simulates the step
(:func:`graphopt.costmodel.simulate.simulate_step`: the schedule's timeline, p2p transfers on the
target's link, DDP's bucketed ring all-reduce over ``dp``, overlapped with the backward except on
a shared CPU host and under a split-backward schedule, where the runtime averages the gradients
after the step), then adds each rank's optimizer step
and the sum of tied weights' gradients over the ranks that share them. Memory per rank: weights x
(2 + optimizer state), buffers, DDP's bucket copy of the gradients when ``dp > 1`` and the peak
of in-flight activations under the schedule.

Engine costs (measured by the planner's probe, :mod:`graphopt.planner.engine`): every action
pays ``action_s``, a message ``transfer_s``, a step ``step_s``; where the ranks share cores
(``share > 1``) the compute is sped up by how many ranks the timeline leaves idle, up to
``share``, iterated to a fixed point.

Example:
    >>> pred = predict_step(profile, config, CostModel(Target.preset("h100")))
    >>> pred.step_seconds, pred.bubble, pred.memory_per_rank
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.costmodel.collectives import tied_sync_seconds
from graphopt.costmodel.device import LinkSpec
from graphopt.costmodel.optimizer import optimizer_seconds
from graphopt.costmodel.simulate import StepEstimate, simulate_step
from graphopt.costmodel.target import CostModel
from graphopt.parallel import ParallelConfig
from graphopt.schedules import split_backward

__all__ = ["StepPrediction", "EngineCosts", "predict_step", "parallel_of"]


@dataclass(frozen=True)
class EngineCosts:
    """The pipeline engine's own costs (see the module docstring)."""

    action_s: float = 0.0
    transfer_s: float = 0.0
    step_s: float = 0.0
    share: float = 1.0


@dataclass
class StepPrediction:
    """One step of a configuration, as :func:`predict_step` prices it."""

    step_seconds: float
    pipeline_seconds: float
    bubble: float
    allreduce_seconds: float
    exposed_sync_seconds: float
    optimizer_seconds: float
    tied_sync_seconds: float
    memory_per_rank: list[int]
    compute_time_factor: float
    target: str
    estimate: StepEstimate = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"step_seconds": self.step_seconds, "pipeline_seconds": self.pipeline_seconds,
                "bubble": self.bubble, "allreduce_seconds": self.allreduce_seconds,
                "exposed_sync_seconds": self.exposed_sync_seconds,
                "optimizer_seconds": self.optimizer_seconds,
                "tied_sync_seconds": self.tied_sync_seconds,
                "memory_per_rank_bytes": [int(m) for m in self.memory_per_rank],
                "priced_for": self.target}


def parallel_of(config) -> ParallelConfig:
    """The :class:`ParallelConfig` of ``config``: itself, or the one a training configuration
    (:class:`graphopt.distributed.job.TrainConfig`) wraps as ``parallel``."""
    par = getattr(config, "parallel", config)
    if not isinstance(par, ParallelConfig):
        raise TypeError(f"predict_step prices a ParallelConfig, got {type(config).__name__}")
    return par


def predict_step(profile, config, cost_model: CostModel, *, optimizer: str = "sgd",
                 engine: EngineCosts | None = None, forward_only: bool = False) -> StepPrediction:
    """Predicted seconds and memory of one step of ``config`` (module docstring).

    Args:
        profile: the stage profile of the ``pp * v``-stage plan at the configuration's
            micro-batch size (its seconds already scaled where a step was timed).
        config: a :class:`ParallelConfig`, or a configuration wrapping one as ``parallel``.
        cost_model: what the step is priced for.
        optimizer: an optimizer cost key (``sgd``, ``sgd-momentum``, ``adamw``).
        engine: the engine's measured costs, or None.
        forward_only: forwards alone (``graphopt pipeline``): no backward, sync or optimizer.
    """
    config = parallel_of(config)
    v, pp, dp = config.stages_per_rank, config.pp, config.dp
    # DDP overlaps its all-reduce with the backward, except where the ranks share a CPU host's
    # cores and under a split-backward schedule (the runtime averages after the step)
    overlap = not cost_model.target.on_host_cpu and not split_backward(config.schedule)
    target = cost_model.target
    p2p, ring = target.intra, target.allreduce_link
    if engine is not None:      # the engine's measured latency replaces the link's
        p2p = LinkSpec(f"{p2p.name}, {engine.transfer_s * 1e6:.0f} us a message in the engine",
                       engine.transfer_s, p2p.beta)
    engine = engine or EngineCosts()
    fwd, bwd, action = list(profile.fwd_s), list(profile.bwd_s), engine.action_s

    def simulate(speed: float):
        return simulate_step([f * speed + action for f in fwd], [b * speed + action for b in bwd],
                             profile.boundary_bytes, p2p, config.schedule, config.microbatches,
                             dp=dp, virtual_stages=v, grad_bytes_per_stage=profile.grad_bytes,
                             allreduce_link=ring, param_bytes_per_stage=profile.grad_bytes,
                             act_bytes_per_stage=profile.act_bytes, optimizer=optimizer,
                             forward_only=forward_only, overlap_sync=overlap)
    est, speed = simulate(1.0), 1.0
    for _ in range(12 if engine.share > 1.0 else 0):
        # Shared cores: the spec's rates hold with all N ranks busy; with c busy on average
        # (the rest waiting in a bubble) each computes N/c times as fast, up to `share`. The
        # bubble depends on the speed (transfers do not speed up): iterate to the fixed point.
        new = max(1.0 - est.bubble, 1.0 / engine.share)
        if abs(new - speed) <= 1e-3 * speed:
            break
        speed = new
        est = simulate(speed)
    place = list(config.placement)
    on_rank = [config.stages_of(rank) for rank in range(pp)]
    if forward_only:
        opt_s, tied = [0.0] * pp, 0.0
    else:
        opt_s = [optimizer_seconds(profile, st, cost_model.spec, optimizer) for st in on_rank]
        tied = tied_sync_seconds(profile, place, ring)
    step = max(end + o for end, o in zip(est.rank_seconds, opt_s)) + tied + engine.step_s
    memory = []
    for rank, stages in enumerate(on_rank):
        extra = sum(profile.buffer_bytes[s] for s in stages)
        if dp > 1 and not forward_only:      # DDP copies gradients into its buckets
            extra += sum(profile.grad_bytes[s] for s in stages)
        memory.append(int(est.memory_bytes[rank] + extra))
    return StepPrediction(step_seconds=float(step), pipeline_seconds=est.pipeline_seconds,
                          bubble=est.bubble, allreduce_seconds=est.allreduce_seconds,
                          exposed_sync_seconds=est.exposed_sync_seconds,
                          optimizer_seconds=max(opt_s), tied_sync_seconds=tied,
                          memory_per_rank=memory, compute_time_factor=speed,
                          target=cost_model.describe(), estimate=est)
