"""Run a training job on a pipeline plan and report it.

The job is prepared and planned above the runtime (:mod:`graphopt.planner.training`:
``prepare_model``, ``make_job``); here:

3. :func:`run_job`: launch ``pp * dp`` processes (or join ``torchrun``) running
   :func:`graphopt.distributed.worker.train_worker`, and gather a :class:`TrainRun`;
4. :func:`train_report`: the ``graphopt.train/1`` document.

Example:
    >>> loaded = load_spec("zoo:resmlp")
    >>> cfg = TrainConfig.of(pp=2, schedule="1f1b", microbatches=4, steps=2)
    >>> prep = prepare_model(loaded, cfg)          # graphopt.planner.training
    >>> job, info = make_job(prep, cfg)
    >>> run = run_job(job)
    >>> run.losses, run.step_seconds
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

import torch

from graphopt.distributed.job import TrainConfig, TrainJob
from graphopt.distributed.trace import COMPUTE_KINDS
from graphopt.distributed.worker import train_jobs_worker, train_worker
from graphopt.errors import GraphoptError
from graphopt.launch import join_torchrun, run_workers, under_torchrun

__all__ = ["JobInfo", "TrainRun", "run_job", "run_jobs", "train_report", "measured_bubble",
           "SCHEMA"]

SCHEMA = "graphopt.train/1"


@dataclass
class JobInfo:
    """What planning and lowering decided, for the report."""

    plan: object
    memory: list[dict]
    relay: dict
    direct_bytes: int
    inflight: list[int]
    grad_bytes: int


@dataclass
class TrainRun:
    """The gathered results of every rank."""

    losses: list[float]
    step_seconds: list[float]
    events: dict[int, list]            # rank -> events of the timed step
    timed_step: int
    params: dict[int, dict[str, torch.Tensor]]
    sent_bytes: list[int]              # per step, all ranks together
    ranks: list[dict] = field(default_factory=list)

    @property
    def positions(self) -> dict[int, tuple[int, int]]:
        """rank -> ``(pipeline rank, data-parallel rank)``: what the timeline's rows are named by."""
        return {r["rank"]: (r["pp_rank"], r["dp_rank"]) for r in self.ranks}

    @property
    def median_step_seconds(self) -> float:
        later = self.step_seconds[1:] or self.step_seconds
        return float(statistics.median(later))


def _gather(results: list[dict], cfg: TrainConfig) -> TrainRun:
    steps = cfg.steps
    last = [r for r in results if r["last"]]
    losses = [sum(r["losses"][s] for r in last) / len(last) for s in range(steps)]
    seconds = [max(r["seconds"][s] for r in results) for s in range(steps)]
    later = list(range(1, steps)) or [0]
    timed = min(later, key=lambda s: abs(seconds[s] - statistics.median(seconds[i]
                                                                         for i in later)))
    params: dict[int, dict] = {}
    for r in results:
        for s, named in r["params"].items():
            params[s] = named
    sent = [sum(r["sent_bytes"][s] for r in results) for s in range(steps)]
    return TrainRun(losses=losses, step_seconds=seconds,
                    events={r["rank"]: r["events"][timed] for r in results}, timed_step=timed,
                    params=params, sent_bytes=sent,
                    ranks=[{k: r[k] for k in ("rank", "dp_rank", "pp_rank", "stages")}
                           for r in results])


def run_job(job: TrainJob, *, backend: str | None = None, threads: int | None = None) -> TrainRun | None:
    """Run ``job`` on ``pp * dp`` processes; under torchrun, join it (``None`` off rank 0)."""
    cfg = job.config
    if under_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != cfg.world_size:
            raise GraphoptError(f"torchrun started {world} processes but --pp {cfg.pp} x --dp "
                                f"{cfg.dp} needs {cfg.world_size}")
        results = join_torchrun(train_worker, (job,), timeout_s=cfg.timeout_s, backend=backend)
        return None if results is None else _gather(results, cfg)
    results = run_workers(train_worker, cfg.world_size, (job,), timeout_s=cfg.timeout_s,
                          backend=backend, threads=threads)
    return _gather(results, cfg)


def run_jobs(jobs: list[TrainJob], *, backend: str | None = None,
             threads: int | None = None) -> list[TrainRun]:
    """Run jobs of one world size in a single launch (one process start-up for all)."""
    world = {job.config.world_size for job in jobs}
    if len(world) != 1:
        raise GraphoptError(f"jobs of different world sizes cannot share a launch: {sorted(world)}")
    timeout = sum(job.config.timeout_s for job in jobs)
    per_rank = run_workers(train_jobs_worker, world.pop(), (list(jobs),), timeout_s=timeout,
                           backend=backend, threads=threads)
    return [_gather([ranks[i] for ranks in per_rank], job.config) for i, job in enumerate(jobs)]


def measured_bubble(run: TrainRun) -> float:
    """Idle share of the timed step: 1 - compute time / step time, averaged over the ranks."""
    step = run.step_seconds[run.timed_step]
    if step <= 0:
        return 0.0
    fracs = []
    for events in run.events.values():
        busy = sum(t1 - t0 for kind, _, _, t0, t1 in events if kind in COMPUTE_KINDS)
        fracs.append(max(0.0, 1.0 - busy / step))
    return float(sum(fracs) / len(fracs)) if fracs else 0.0


def train_report(job: TrainJob, info: JobInfo, run: TrainRun, estimate: dict,
                 check: dict | None) -> dict:
    """The ``graphopt.train/1`` document (the contract's fields first, then more)."""
    cfg = job.config
    step = run.median_step_seconds
    relay = info.relay
    per_step = (relay["forward"] + relay["backward"]) * cfg.microbatches * cfg.dp
    doc = {"schema": SCHEMA, "model": job.model, "pp": cfg.pp, "dp": cfg.dp,
           "schedule": cfg.schedule, "microbatches": cfg.microbatches,
           "steps": [{"step": i, "loss": loss, "seconds": sec}
                     for i, (loss, sec) in enumerate(zip(run.losses, run.step_seconds))],
           "measured": {"step_seconds": step,
                        "samples_per_second": job.batches.batch / step if step > 0 else 0.0,
                        "bubble": measured_bubble(run)},
           "estimated": {"step_seconds": estimate["step_seconds"], "bubble": estimate["bubble"]},
           "check": check or {"max_loss_rel_err": None, "max_param_rel_err": None, "ok": None},
           "comm_bytes_per_step": int(per_step)}
    doc.update({
        "lowering": cfg.lowering, "stages_per_rank": cfg.virtual, "dp_wrapper": cfg.dp_wrapper,
        "optimizer": cfg.optimizer, "lr": cfg.lr, "batch": job.batches.batch,
        "micro_batch": job.micro, "loss": job.loss.describe(),
        "placement": job.placement, "inflight": info.inflight,
        "comm": {"forward_bytes_per_microbatch": relay["forward"],
                 "backward_bytes_per_microbatch": relay["backward"],
                 "plan_forward_bytes_per_microbatch": info.direct_bytes,
                 "plan_comm_bytes": info.plan.summary()["comm_bytes"],
                 "measured_p2p_bytes_per_step": run.sent_bytes[run.timed_step],
                 "dp_gradient_bytes": info.grad_bytes if cfg.dp > 1 else 0},
        "memory_per_rank": info.memory, "tied_weights": [[list(m) for m in g] for g in job.tied],
        "plan": {"method": info.plan.method, "parts": info.plan.k,
                 "part_flops": info.plan.summary()["part_flops"]},
        "estimate_detail": estimate, "timed_step": run.timed_step, "ranks": run.ranks})
    return doc
