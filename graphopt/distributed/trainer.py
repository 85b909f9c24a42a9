"""Train a captured model on a pipeline plan: prepare the job, run it, report it.

The steps ``graphopt train`` takes, usable from Python:

1. :func:`prepare_model`: add the labels a model's own loss needs, check the batch splits into
   ``dp * M`` equal micro-batches, capture the graph at the micro-batch size (shapes are static
   on the engine);
2. :func:`make_job`: plan (or take a plan), split into stages, lower them
   (:mod:`graphopt.distributed.lowering`), check every rank's memory before any process starts;
3. :func:`run_job`: launch ``pp * dp`` processes (or join ``torchrun``) running
   :func:`graphopt.distributed.worker.train_worker`, and gather a :class:`TrainRun`;
4. :func:`train_report`: the ``graphopt.train/1`` document.

Example:
    >>> loaded = load_spec("zoo:resmlp")
    >>> cfg = TrainConfig(pp=2, schedule="1f1b", microbatches=4, steps=2)
    >>> prep = prepare_model(loaded, cfg)
    >>> job, info = make_job(prep, cfg)
    >>> run = run_job(job)
    >>> run.losses, run.step_seconds
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree

from graphopt.capture import capture
from graphopt.distributed.batches import BatchSpec, add_labels, make_loss, make_target
from graphopt.distributed.job import TrainConfig, TrainJob
from graphopt.distributed.lowering import lower, relay_bytes, tied_parameters
from graphopt.distributed.schedule import check_schedule, inflight, placement
from graphopt.distributed.train_cost import check_memory, plan_training, stage_memory
from graphopt.errors import GraphoptError, PlanError

__all__ = ["Prepared", "JobInfo", "TrainRun", "prepare_model", "make_job", "run_job", "run_jobs",
           "train_report", "measured_bubble", "SCHEMA"]

SCHEMA = "graphopt.train/1"


@dataclass
class Prepared:
    """A model ready to plan: the graph at micro-batch size and the data of every step."""

    spec: str
    model: torch.nn.Module
    graph: object
    batches: BatchSpec
    in_spec: object
    micro: int


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
    def median_step_seconds(self) -> float:
        later = self.step_seconds[1:] or self.step_seconds
        return float(statistics.median(later))


def prepare_model(loaded, cfg: TrainConfig, *, capture_mode: str = "auto") -> Prepared:
    """Labels, batch checks and the capture at micro-batch size (see the module docstring)."""
    kwargs = add_labels(loaded.spec, loaded.model, loaded.inputs, loaded.kwargs)
    batches = BatchSpec.from_inputs(loaded.inputs, kwargs, cfg.seed)
    batch = batches.batch
    per = cfg.microbatches * cfg.dp
    bad = [i for i, t in enumerate(batches.example) if int(t.shape[0]) != batch]
    if bad:
        raise GraphoptError(f"input {bad[0]} has batch {int(batches.example[bad[0]].shape[0])}, "
                            f"input 0 has {batch}: every input must share dimension 0")
    if batch % per:
        raise GraphoptError(f"the batch of {batch} does not split into {cfg.microbatches} "
                            f"micro-batches x dp {cfg.dp} = {per} equal parts; pass a --batch "
                            f"that is a multiple of {per}, or change --microbatches/--dp")
    micro = batch // per
    in_spec = pytree.tree_structure((tuple(loaded.inputs), dict(kwargs)))
    args, kw = pytree.tree_unflatten([t[:micro] for t in batches.example], in_spec)
    graph = capture(loaded.model, args, kw or None, mode=capture_mode, name=loaded.spec)
    return Prepared(spec=loaded.spec, model=loaded.model, graph=graph, batches=batches,
                    in_spec=in_spec, micro=micro)


def _direct_bytes(stages) -> int:
    """What sending each value once per consumer stage would cost (the plan's own count)."""
    total = 0
    for st in stages.stages:
        for name, kind, _ in st.inputs:
            if kind == "recv":
                total += sum(_nbytes(s, d) for s, d in st.specs[name])
    return total


def _nbytes(shape, dtype) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n * torch.empty((), dtype=dtype).element_size()


def make_job(prep: Prepared, cfg: TrainConfig, *, plan=None, memory_cap: float | None = None,
             device: str = "cpu", link: str | None = None, imbalance: float = 0.03,
             fault=None) -> tuple[TrainJob, JobInfo]:
    """Plan (unless ``plan`` is given), lower, check memory; nothing starts yet."""
    cfg.validate()
    k = cfg.stages
    check_schedule(cfg.schedule, cfg.pp, cfg.virtual, cfg.microbatches)
    graph = prep.graph
    if plan is None:
        plan, _ = plan_training(graph, k=k, schedule=cfg.schedule, microbatches=cfg.microbatches,
                                device=device, optimizer=cfg.optimizer, momentum=cfg.momentum,
                                memory_cap=memory_cap, stages_per_rank=cfg.virtual,
                                imbalance=imbalance, seed=cfg.seed, link=link, model=prep.spec)
    else:
        if plan.mode != "pipeline":
            raise PlanError(f"{plan.source}: a {plan.mode}-mode plan cannot run as a pipeline; "
                            "make it with --mode pipeline")
        if plan.k != k:
            raise PlanError(f"{plan.source} has {plan.k} parts but --pp {cfg.pp} x "
                            f"{cfg.virtual} stage(s) per rank needs {k}")
        from graphopt.partition.cut_rewrite import cut_like
        graph = cut_like(graph, plan.splits, plan.source)
        prep.graph = graph
        plan.check_graph(graph)
    stages = plan.split(graph)
    if cfg.lowering == "direct":
        from graphopt.distributed.direct import lower_direct
        lowered = lower_direct(stages, graph)
    else:
        lowered = lower(stages, graph)
    place = placement(cfg.schedule, cfg.pp, cfg.virtual)
    fl = inflight(cfg.schedule, cfg.pp, cfg.virtual, cfg.microbatches)
    memory = stage_memory(lowered, graph, place, fl, optimizer=cfg.optimizer,
                          momentum=cfg.momentum)
    check_memory(memory, memory_cap, cfg.schedule, cfg.microbatches)
    by_name = {n.name: n for n in graph.fx_nodes()}
    out_vals = [by_name[v].meta.get("val") if kind == "value" else v
                for kind, v in stages.results]
    loss = make_loss(out_vals, lowered.result_slots, prep.micro)
    target = make_target(loss, prep.batches.batch, cfg.seed)
    tied = tied_parameters(lowered)
    grad_bytes = sum(p.numel() * p.element_size() for p in graph.gm.parameters() if p.requires_grad)
    job = TrainJob(config=cfg, lowered=lowered, placement=place, batches=prep.batches, loss=loss,
                   target=target, tied=tied, micro=prep.micro, fault=fault, model=prep.spec)
    info = JobInfo(plan=plan, memory=memory, relay=relay_bytes(lowered, place),
                   direct_bytes=_direct_bytes(stages), inflight=fl, grad_bytes=grad_bytes)
    return job, info


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
    from graphopt.distributed.launch import join_torchrun, run_workers, under_torchrun
    from graphopt.distributed.worker import train_worker
    cfg = job.config
    if under_torchrun():
        import os
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
    from graphopt.distributed.launch import run_workers
    from graphopt.distributed.worker import train_jobs_worker
    world = {job.config.world_size for job in jobs}
    if len(world) != 1:
        raise GraphoptError(f"jobs of different world sizes cannot share a launch: {sorted(world)}")
    timeout = sum(job.config.timeout_s for job in jobs)
    per_rank = run_workers(train_jobs_worker, world.pop(), (list(jobs),), timeout_s=timeout,
                           backend=backend, threads=threads)
    return [_gather([ranks[i] for ranks in per_rank], job.config) for i, job in enumerate(jobs)]


def measured_bubble(run: TrainRun) -> float:
    """Idle share of the timed step: 1 - compute time / step time, averaged over the ranks."""
    from graphopt.distributed.trace import COMPUTE_KINDS
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
