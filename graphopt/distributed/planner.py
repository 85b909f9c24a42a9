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
  stage whatever the schedule, so it is listed once, as ``1f1b``;
* ``memory_budget``: None (save every activation), or a remat fraction such as 0.5 where the
  remat planner can plan the model (see :mod:`graphopt.distributed.plan_model`).

How one is priced (:func:`predict`): the ``pp * v``-stage plan's
:class:`~graphopt.distributed.plan_costs.StageProfile` at micro-batch ``B / (dp * M)`` feeds
:func:`~graphopt.distributed.simulate.simulate_step` (the schedule's timeline, p2p transfers on
the measured link, DDP's bucketed ring all-reduce of each stage's gradients over ``dp``,
overlapped with the backward); weights that stages on different ranks share (a tied embedding
and LM head) have their gradients summed by one ring all-reduce per group of ranks; each rank
then runs its optimizer step. With the engine's
measured costs (:mod:`graphopt.distributed.plan_engine`) every stage action also pays the
engine's per-action time, a message its in-engine latency, a step its fixed cost, and where the
ranks share cores the compute is sped up by how many ranks the timeline leaves idle (processor
sharing, at most the measured ``share``, iterated to a fixed point). With a calibrated CPU spec
the stages' forward and backward seconds are also scaled by the model's own step, timed alone
at that micro-batch size and the rank's thread count (:mod:`graphopt.distributed.plan_profile`),
times ``share`` (all ranks busy). Memory per device:
weights x (2 + optimizer state), buffers, DDP's gradient buckets (a second copy of the
gradients when ``dp > 1``) and the peak of in-flight activations under the schedule.

Example:
    >>> costs = ModelCosts(load_spec("zoo:resmlp"), "cpu")
    >>> result = plan_parallel(costs, devices=4, memory_per_device=2 << 30)
    >>> result.chosen.config, result.chosen.predicted_step_seconds
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.cost import LinkSpec, get_link
from graphopt.distributed.launch import rank_threads
from graphopt.distributed.plan_costs import on_host_cpu, optimizer_seconds
from graphopt.distributed.simulate import placement, ring_allreduce_seconds, simulate_step
from graphopt.errors import GraphoptError, PlanError

__all__ = ["Config", "Candidate", "PlanResult", "NoConfigurationFits", "SCHEDULE_CHOICES",
           "DEFAULT_SCHEDULES", "divisors", "enumerate_configs", "predict", "plan_parallel",
           "links_of", "default_memory", "to_document", "SCHEMA"]

SCHEMA = "graphopt.parallel/1"
SCHEDULE_CHOICES = ("gpipe", "1f1b", "interleaved", "zero-bubble")
DEFAULT_SCHEDULES = ("gpipe", "1f1b", "interleaved")
_V = {"gpipe": 1, "1f1b": 1, "interleaved": 2, "zero-bubble": 2}


class NoConfigurationFits(PlanError):
    """No configuration of the devices holds the model in the memory each has."""


@dataclass(frozen=True, order=True)
class Config:
    """One way to run a step: what ``parallel.json``'s ``chosen`` and ``graphopt train`` take."""

    dp: int
    pp: int
    schedule: str
    microbatches: int
    memory_budget: float | None = None

    @property
    def virtual(self) -> int:
        """Stages per pipeline rank."""
        return _V[self.schedule]

    @property
    def stages(self) -> int:
        return self.pp * self.virtual

    @property
    def devices(self) -> int:
        return self.dp * self.pp

    def micro(self, batch: int) -> int:
        """Samples per micro-batch."""
        return batch // (self.dp * self.microbatches)

    def label(self) -> str:
        budget = "" if self.memory_budget is None else f", remat {self.memory_budget:g}"
        return f"dp {self.dp} x pp {self.pp}, {self.schedule}, M={self.microbatches}{budget}"

    def to_dict(self) -> dict:
        return {"dp": self.dp, "pp": self.pp, "schedule": self.schedule,
                "microbatches": self.microbatches, "memory_budget": self.memory_budget}


@dataclass
class Candidate:
    """A configuration with its prediction (and its measurement, once measured)."""

    config: Config
    predicted_step_seconds: float
    memory_per_device_bytes: int
    fits: bool = True
    detail: dict = field(default_factory=dict)
    measured_step_seconds: float | None = None

    def to_dict(self) -> dict:
        d = self.config.to_dict()
        d.update(predicted_step_seconds=self.predicted_step_seconds,
                 memory_per_device_bytes=int(self.memory_per_device_bytes),
                 measured_step_seconds=self.measured_step_seconds, fits=self.fits,
                 stages_per_rank=self.config.virtual)
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


def _torch_accepts(schedule: str, pp: int, v: int, m: int) -> bool:
    from graphopt.distributed.schedule import check_schedule
    try:
        check_schedule(schedule, pp, v, m)
    except GraphoptError:
        return False
    return True


def enumerate_configs(devices: int, batch: int, layers: int, *,
                      schedules=DEFAULT_SCHEDULES, max_microbatches: int = 16,
                      budgets=(None,)) -> list[Config]:
    """Every configuration of ``devices`` devices the runtime can run (module docstring).

    Example:
        >>> [c.label() for c in enumerate_configs(2, 4, 8, schedules=("1f1b",))]
        ['dp 1 x pp 2, 1f1b, M=2', 'dp 1 x pp 2, 1f1b, M=4', 'dp 2 x pp 1, 1f1b, M=1', ...]
    """
    bad = [s for s in schedules if s not in SCHEDULE_CHOICES]
    if bad:
        raise PlanError(f"unknown schedule {bad[0]!r}; choose from {', '.join(SCHEDULE_CHOICES)}")
    if devices < 1 or batch < 1 or max_microbatches < 1:
        raise PlanError(f"devices, batch and max micro-batches must be >= 1, got {devices}, "
                        f"{batch}, {max_microbatches}")
    out = []
    for pp in divisors(devices):
        dp = devices // pp
        if pp > layers or batch % dp:
            continue
        single = ["1f1b" if "1f1b" in schedules else schedules[0]] if pp == 1 else schedules
        for m in (d for d in divisors(batch // dp) if d <= max_microbatches):
            for schedule in single:
                v = 1 if pp == 1 else _V[schedule]
                if pp * v > layers or (pp > 1 and not _torch_accepts(schedule, pp, v, m)):
                    continue
                out.extend(Config(dp, pp, schedule, m, b) for b in budgets)
    return out


def links_of(costs) -> tuple[LinkSpec, LinkSpec]:
    """``(p2p, all-reduce hop)`` links: the device spec's measured ones, else the preset link."""
    from graphopt.partition.search import default_link
    spec = costs.spec
    p2p = spec.p2p_link or get_link(costs.link or default_link(costs.device))
    return p2p, spec.allreduce_link or p2p


def default_memory(costs, devices: int) -> int:
    """Memory per device when none is given: the device's; processes of one CPU host share it."""
    spec = costs.spec
    return int(spec.memory // devices) if on_host_cpu(spec, costs.device) else int(spec.memory)


def _optimizer_key(optimizer: str, momentum: float) -> str:
    if optimizer == "adamw":
        return "adamw"
    return "sgd-momentum" if momentum else "sgd"


def tied_sync_seconds(prof, place: list[int], ring: LinkSpec) -> float:
    """The runtime's sum of tied weights' gradients over the ranks whose stages hold them (a
    tied embedding and LM head at the two ends of a pipeline): one ring all-reduce per group of
    ranks, after the last backward and before the optimizer, as the worker runs it."""
    groups: dict[tuple[int, ...], int] = {}
    for nbytes, stages in prof.shared:
        ranks = tuple(sorted({place[s] for s in stages}))
        if len(ranks) > 1:
            groups[ranks] = groups.get(ranks, 0) + nbytes
    return sum(ring_allreduce_seconds(b, len(r), ring) for r, b in sorted(groups.items()))


def predict(costs, config: Config, *, momentum: float = 0.0) -> Candidate:
    """Simulated step time and memory per device of ``config`` (module docstring)."""
    micro = config.micro(costs.batch)
    prof = costs.profile(config.stages, micro)
    engine = costs.engines.get(config.devices)
    share = engine.share if engine is not None else 1.0
    timed = costs.step_scale(micro, rank_threads(config.devices))
    fs, bs = timed
    if timed != (1.0, 1.0):      # timed alone: with every rank busy, `share` times slower
        fs, bs = fs * share, bs * share
    fwd = [f * fs for f in prof.fwd_s]
    bwd = [b * bs for b in prof.bwd_s]
    saved = list(prof.saved_bytes)
    effect = None
    if config.memory_budget is not None:
        effect = costs.remat(config.memory_budget)
        if effect is None:
            raise PlanError(f"no remat plan for memory budget {config.memory_budget:g}")
        bwd = [b + effect.recompute * f for b, f in zip(bwd, fwd)]
        saved = [int(s * effect.kept) for s in saved]
    acts = [s + (a - s0) for s, a, s0 in zip(saved, prof.act_bytes, prof.saved_bytes)]
    p2p, ring = links_of(costs)
    action = 0.0
    if engine is not None:      # the pipeline engine's own costs, measured on a probe
        action = engine.action_s
        p2p = LinkSpec(f"{p2p.name}, {engine.transfer_s * 1e6:.0f} us a message in the engine",
                       engine.transfer_s, p2p.beta)
    opt = _optimizer_key(costs.optimizer, momentum)

    def simulate(speed: float):
        return simulate_step([f * speed + action for f in fwd], [b * speed + action for b in bwd],
                             prof.boundary_bytes, p2p, config.schedule, config.microbatches,
                             dp=config.dp, virtual_stages=config.virtual,
                             grad_bytes_per_stage=prof.grad_bytes, allreduce_link=ring,
                             param_bytes_per_stage=prof.grad_bytes, act_bytes_per_stage=acts,
                             optimizer=opt, overlap_sync=not on_host_cpu(costs.spec, costs.device))
    est, speed = simulate(1.0), 1.0
    for _ in range(12 if share > 1.0 else 0):
        # Shared cores: the spec's rates hold with all N ranks busy; with c busy on average
        # (the rest waiting in a bubble) each computes N/c times as fast, up to `share`. The
        # bubble depends on the speed (transfers do not speed up): iterate to the fixed point.
        new = max(1.0 - est.bubble, 1.0 / share)
        if abs(new - speed) <= 1e-3 * speed:
            break
        speed = new
        est = simulate(speed)
    place = placement(config.schedule, config.pp, config.virtual)
    on_rank = [[s for s, r in enumerate(place) if r == rank] for rank in range(config.pp)]
    opt_s = [optimizer_seconds(prof, st, costs.spec, opt) for st in on_rank]
    ends = est.rank_seconds
    tied = tied_sync_seconds(prof, place, ring)
    step = max(end + o for end, o in zip(ends, opt_s)) + tied + (engine.step_s if engine else 0.0)
    memory = []
    for rank, stages in enumerate(on_rank):
        extra = sum(prof.buffer_bytes[s] for s in stages)
        if config.dp > 1:      # DDP copies gradients into its buckets
            extra += sum(prof.grad_bytes[s] for s in stages)
        memory.append(est.memory_bytes[rank] + extra)
    detail = {"micro_batch": micro, "bubble": est.bubble, "pipeline_seconds": est.pipeline_seconds,
              "allreduce_seconds": est.allreduce_seconds,
              "exposed_sync_seconds": est.exposed_sync_seconds,
              "optimizer_seconds": max(opt_s), "tied_sync_seconds": tied,
              "samples_per_second": costs.batch / step,
              "memory_per_rank_bytes": [int(m) for m in memory],
              # the stage imbalance its plan needed: `graphopt train --imbalance` to repeat it
              "imbalance": costs.imbalance_used.get(config.stages, costs.imbalance),
              "boundary_bytes": [int(b) for b in prof.boundary_bytes]}
    if engine is not None:
        detail["engine"] = {"action_s": engine.action_s, "step_s": engine.step_s,
                            "transfer_s": engine.transfer_s, "share": engine.share,
                            "compute_time_factor": speed}
    if timed != (1.0, 1.0):
        detail["timed_step_factors"] = {"forward": timed[0], "backward": timed[1]}
    if effect is not None:
        detail["remat"] = {"kept": effect.kept, "recompute": effect.recompute}
    return Candidate(config=config, predicted_step_seconds=float(step),
                     memory_per_device_bytes=int(max(memory)), detail=detail)


def _rank_key(c: Candidate):
    cfg = c.config
    return (c.predicted_step_seconds, c.memory_per_device_bytes, cfg.dp, cfg.pp,
            SCHEDULE_CHOICES.index(cfg.schedule), cfg.microbatches,
            -1.0 if cfg.memory_budget is None else cfg.memory_budget)


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

