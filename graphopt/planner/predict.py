"""The parallelism planner: every data x pipeline configuration of N devices, priced and ranked.

Needs: a loaded model (:class:`~graphopt.specs.LoadedModel`), ``N`` devices, a device key (a
preset, or a ``graphopt calibrate`` spec registered by ``--device-spec``) and the memory per
device. Guarantees: every configuration the training runtime can run is enumerated, predicted by
the step simulator, checked against the memory and ranked; the same inputs and seed give the
same ranking.

What is enumerated (:func:`enumerate_configs`), ``B`` being the global batch:

* ``dp * pp = N``, ``dp`` dividing ``B`` (each replica takes ``B / dp`` samples);
* ``M`` micro-batches dividing ``B / dp``, up to ``max_microbatches``;
* schedules ``gpipe``, ``1f1b`` (``M >= pp``), ``interleaved`` (2 stages per rank) and, when
  asked, ``zero-bubble`` (ZBV, 2 per rank), each where torch's schedule accepts ``(pp, v, M)``
  and ``pp * v`` stages fit the model's weight layers; one rank (``pp = 1``) runs a single
  stage whatever the schedule, so it is listed once, as ``1f1b`` (``gpipe`` where 1f1b is not
  asked for);
* ``memory_budget``: None (save every activation), or a remat fraction such as 0.5 where the
  remat planner can plan the model (see :mod:`graphopt.planner.model`).

A configuration is a :class:`~graphopt.parallel.ParallelConfig` (the type ``graphopt train``'s
job wraps and ``parallel.json`` stores), made with its ``microbatch_size`` and ``dp_wrapper``
``ddp`` (what the simulator prices).

How one is priced (:func:`predict`): the ``pp * v``-stage plan's
:class:`~graphopt.costmodel.stage_profile.StageProfile` at micro-batch ``B / (dp * M)`` feeds
:func:`~graphopt.costmodel.simulate.simulate_step` (the schedule's timeline, p2p transfers on
the measured link, DDP's bucketed ring all-reduce of each stage's gradients over ``dp``,
overlapped with the backward); weights that stages on different ranks share (a tied embedding
and LM head) have their gradients summed by one ring all-reduce per group of ranks; each rank
then runs its optimizer step. With the engine's
measured costs (:mod:`graphopt.planner.engine`) every stage action also pays the
engine's per-action time, a message its in-engine latency, a step its fixed cost, and where the
ranks share cores the compute is sped up by how many ranks the timeline leaves idle (processor
sharing, at most the measured ``share``, iterated to a fixed point). With a calibrated CPU spec
the stages' forward and backward seconds are also scaled by the model's own step, timed alone
at that micro-batch size and the rank's thread count (:mod:`graphopt.planner.profile`),
times ``share`` (all ranks busy). Memory per device:
weights x (2 + optimizer state), buffers, DDP's gradient buckets (a second copy of the
gradients when ``dp > 1``) and the peak of in-flight activations under the schedule.

Example:
    >>> costs = ModelCosts(load_spec("zoo:resmlp"), "cpu")
    >>> result = plan_parallel(costs, devices=4, memory_per_device=2 << 30)
    >>> result.chosen.config.label(), result.chosen.predicted_step_seconds
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from graphopt.costmodel.collectives import tied_sync_seconds
from graphopt.costmodel.device import LinkSpec
from graphopt.costmodel.optimizer import optimizer_key
from graphopt.costmodel.stage_profile import scaled
from graphopt.costmodel.step import EngineCosts, predict_step
from graphopt.errors import GraphoptError, PlanError
from graphopt.launch import rank_threads
from graphopt.parallel import MemoryBudget, ParallelConfig
from graphopt.schedules import SCHEDULES

__all__ = ["Candidate", "PlanResult", "NoConfigurationFits", "DEFAULT_SCHEDULES", "divisors",
           "enumerate_configs", "predict", "plan_parallel", "links_of", "default_memory",
           "to_document", "SCHEMA", "tied_sync_seconds"]

SCHEMA = "graphopt.parallel/1"
DEFAULT_SCHEDULES = ("gpipe", "1f1b", "interleaved")


class NoConfigurationFits(PlanError):
    """No configuration of the devices holds the model in the memory each has."""


@dataclass
class Candidate:
    """A configuration with its prediction (and its measurement, once measured)."""

    config: ParallelConfig
    predicted_step_seconds: float
    memory_per_device_bytes: int
    fits: bool = True
    detail: dict = field(default_factory=dict)
    measured_step_seconds: float | None = None

    def to_dict(self) -> dict:
        d = self.config.to_dict()
        d.update(predicted_step_seconds=self.predicted_step_seconds,
                 memory_per_device_bytes=int(self.memory_per_device_bytes),
                 measured_step_seconds=self.measured_step_seconds, fits=self.fits)
        if self.measured_step_seconds:
            d["error"] = self.predicted_step_seconds / self.measured_step_seconds - 1.0
        d.update(self.detail)
        return d


@dataclass
class PlanResult:
    """Every configuration priced: ``ranked`` (fitting, fastest first) and ``rejected``."""

    devices: int
    batch: int
    memory_per_device: int
    ranked: list[Candidate]
    rejected: list[Candidate]
    skipped: list[str] = field(default_factory=list)   # configurations that could not be priced
    notes: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> Candidate:
        return self.ranked[0]


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _runnable(dp: int, pp: int, schedule: str, m: int, micro: int, layers: int
              ) -> ParallelConfig | None:
    """The configuration, where its stages fit the weight layers and torch's schedule runs it."""
    try:
        cfg = ParallelConfig(dp=dp, pp=pp, schedule=schedule, microbatches=m,
                             microbatch_size=micro,
                             stages_per_rank=1 if pp == 1 else None)
        if cfg.n_stages > layers:
            return None
        if pp > 1:
            cfg.check_runnable()
    except GraphoptError:
        return None
    return cfg


def enumerate_configs(devices: int, batch: int, layers: int, *,
                      schedules=DEFAULT_SCHEDULES, max_microbatches: int = 16,
                      budgets=(None,)) -> list[ParallelConfig]:
    """Every configuration of ``devices`` devices the runtime can run (module docstring).

    ``budgets``: memory budgets (None, or anything :meth:`MemoryBudget.parse` reads: a float
    fraction, int bytes); each configuration is listed once per budget.

    Example:
        >>> [c.label() for c in enumerate_configs(2, 4, 8, schedules=("1f1b",))]
        ['dp 2 x pp 1, 1f1b, 1 micro-batch', 'dp 2 x pp 1, 1f1b, 2 micro-batches', ...]
    """
    bad = [s for s in schedules if s not in SCHEDULES]
    if bad:
        raise PlanError(f"unknown schedule {bad[0]!r}; choose from {', '.join(SCHEDULES)}")
    if devices < 1 or batch < 1 or max_microbatches < 1:
        raise PlanError(f"devices, batch and max micro-batches must be >= 1, got {devices}, "
                        f"{batch}, {max_microbatches}")
    budgets = [MemoryBudget.optional(b, option="memory budget") for b in budgets]
    out = []
    for pp in divisors(devices):
        dp = devices // pp
        if pp > layers or batch % dp:
            continue
        # one rank runs one stage whatever the schedule: listed once, single-stage
        single = ["1f1b" if "1f1b" in schedules else "gpipe"] if pp == 1 else schedules
        for m in (d for d in divisors(batch // dp) if d <= max_microbatches):
            for schedule in single:
                cfg = _runnable(dp, pp, schedule, m, batch // (dp * m), layers)
                if cfg is not None:
                    out.extend(dataclasses.replace(cfg, memory_budget=b) for b in budgets)
    return out


def links_of(costs) -> tuple[LinkSpec, LinkSpec]:
    """``(p2p, all-reduce hop)`` links of the costs' target: measured ones, else the preset's."""
    target = costs.cost_model.target
    return target.intra, target.allreduce_link


def default_memory(costs, devices: int) -> int:
    """Memory per device when none is given: the device's; processes of one CPU host share it."""
    return costs.cost_model.memory_per_rank(devices)


def _sized(costs, config: ParallelConfig) -> ParallelConfig:
    """``config`` with the micro-batch size the model's batch gives it (one line where the batch
    does not split, or where a size already set disagrees)."""
    micro = config.split_batch(costs.batch)
    if config.microbatch_size not in (None, micro):
        raise PlanError(f"{config.label()}: micro-batches of {config.microbatch_size} do not "
                        f"make the batch of {costs.batch} ({micro} each)")
    return dataclasses.replace(config, microbatch_size=micro)


def predict(costs, config: ParallelConfig, *, momentum: float = 0.0) -> Candidate:
    """Predicted step time and memory per device of ``config``: the stage profile at its
    micro-batch size (timed-step and remat adjustments applied) through
    :func:`graphopt.costmodel.step.predict_step`, with the engine's measured costs."""
    config = _sized(costs, config)
    micro = config.microbatch_size
    prof = costs.profile(config.n_stages, micro)
    engine = costs.engines.get(config.world_size)
    share = engine.share if engine is not None else 1.0
    timed = costs.step_scale(micro, rank_threads(config.world_size))
    fs, bs = timed
    if timed != (1.0, 1.0):      # timed alone: with every rank busy, `share` times slower
        fs, bs = fs * share, bs * share
    prof = scaled(prof, fs, bs)
    effect = None
    if config.memory_budget is not None:
        effect = costs.remat(config.memory_budget)
        if effect is None:
            raise PlanError(f"no remat plan for memory budget {config.memory_budget}")
        saved = [int(s * effect.kept) for s in prof.saved_bytes]
        prof = dataclasses.replace(
            prof, bwd_s=[b + effect.recompute * f for b, f in zip(prof.bwd_s, prof.fwd_s)],
            act_bytes=[s + (a - s0) for s, a, s0 in zip(saved, prof.act_bytes, prof.saved_bytes)],
            saved_bytes=saved)
    eng = None if engine is None else EngineCosts(engine.action_s, engine.transfer_s,
                                                  engine.step_s, engine.share)
    pred = predict_step(prof, config, costs.cost_model,
                        optimizer=optimizer_key(costs.optimizer, momentum), engine=eng)
    detail = {"bubble": pred.bubble,
              "pipeline_seconds": pred.pipeline_seconds,
              "allreduce_seconds": pred.allreduce_seconds,
              "exposed_sync_seconds": pred.exposed_sync_seconds,
              "optimizer_seconds": pred.optimizer_seconds,
              "tied_sync_seconds": pred.tied_sync_seconds,
              "samples_per_second": costs.batch / pred.step_seconds,
              "memory_per_rank_bytes": list(pred.memory_per_rank),
              # the stage imbalance its plan needed: `graphopt train --imbalance` to repeat it
              "imbalance": costs.imbalance_used.get(config.n_stages, costs.imbalance),
              "boundary_bytes": [int(b) for b in prof.boundary_bytes]}
    if engine is not None:
        detail["engine"] = {"action_s": engine.action_s, "step_s": engine.step_s,
                            "transfer_s": engine.transfer_s, "share": engine.share,
                            "compute_time_factor": pred.compute_time_factor}
    if timed != (1.0, 1.0):
        detail["timed_step_factors"] = {"forward": timed[0], "backward": timed[1]}
    if effect is not None:
        detail["remat"] = {"kept": effect.kept, "recompute": effect.recompute}
    return Candidate(config=config, predicted_step_seconds=pred.step_seconds,
                     memory_per_device_bytes=int(max(pred.memory_per_rank)), detail=detail)


def _rank_key(c: Candidate):
    cfg, budget = c.config, c.config.memory_budget
    return (c.predicted_step_seconds, c.memory_per_device_bytes, cfg.dp, cfg.pp,
            SCHEDULES.index(cfg.schedule), cfg.microbatches,
            (0, 0.0) if budget is None else (1 if budget.is_fraction else 2, budget.value))


def plan_parallel(costs, devices: int, memory_per_device: int | None = None, *,
                  schedules=DEFAULT_SCHEDULES, max_microbatches: int = 16, budgets=(None,),
                  momentum: float = 0.0, progress=None) -> PlanResult:
    """Price every configuration of ``devices`` devices and rank those that fit.

    Raises:
        NoConfigurationFits: none fits ``memory_per_device``; the message gives the least memory
            per device some configuration needs.
    """
    cap = default_memory(costs, devices) if memory_per_device is None else int(memory_per_device)
    layers = costs.layers
    configs = enumerate_configs(devices, costs.batch, layers, schedules=schedules,
                                max_microbatches=max_microbatches, budgets=budgets)
    if not configs:
        raise PlanError(f"no configuration of {devices} devices suits {costs.loaded.spec}: the "
                        f"batch of {costs.batch} and {layers} weight layers allow none "
                        "(a batch that dp divides, pp up to the layers)")
    priced, skipped = [], []
    for cfg in configs:
        if progress is not None:
            progress(cfg)
        try:
            priced.append(predict(costs, cfg, momentum=momentum))
        except GraphoptError as exc:
            skipped.append(f"{cfg.label()}: {str(exc).splitlines()[0][:200]}")
    if not priced:
        raise PlanError(f"no configuration of {devices} devices could be priced; first: "
                        f"{skipped[0] if skipped else '?'}")
    for c in priced:
        c.fits = c.memory_per_device_bytes <= cap
    ranked = sorted((c for c in priced if c.fits), key=_rank_key)
    rejected = sorted((c for c in priced if not c.fits),
                      key=lambda c: (c.memory_per_device_bytes, _rank_key(c)))
    if not ranked:
        least = rejected[0]
        raise NoConfigurationFits(
            f"{devices} devices with {cap:,} bytes each cannot hold {costs.loaded.spec} in any "
            f"of {len(priced)} configurations: the least memory per device that works is "
            f"{least.memory_per_device_bytes:,} bytes ({least.config.label()}); pass "
            f"--memory-per-device {least.memory_per_device_bytes} or more, or more devices")
    return PlanResult(devices=devices, batch=costs.batch, memory_per_device=cap, ranked=ranked,
                      rejected=rejected, skipped=skipped, notes=list(costs.notes))


def to_document(result: PlanResult, *, model: str, device: dict, extra: dict | None = None) -> dict:
    """The ``graphopt.parallel/1`` document: the contract's fields first, then more."""
    chosen = result.chosen.to_dict()
    doc = {"schema": SCHEMA, "model": model,
           "candidates": [dict(c.to_dict(), rank=i) for i, c in enumerate(result.ranked)],
           "chosen": chosen, "devices": result.devices, "batch": result.batch,
           "memory_per_device_bytes": int(result.memory_per_device), "device": device,
           "rejected": [c.to_dict() for c in result.rejected], "skipped": result.skipped,
           "notes": result.notes}
    doc.update(extra or {})
    return doc

