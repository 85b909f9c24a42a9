"""One rank of a training job: its stages on the engine, the DP wrapper, the optimizer, N steps.

Needs: an initialized default process group of ``dp * pp`` ranks and a :class:`TrainJob`.
Layout: a ``(dp, pp)`` device mesh, row-major (global rank ``d * pp + p``); rank ``p`` of each
pipeline replica runs the stages the schedule places there, each a manual ``PipelineStage`` over
the mesh's ``pp`` group. With ``dp > 1`` every stage module is wrapped with DDP or FSDP2 on the
``dp`` group and each replica takes its slice of the global batch. One exception: DDP under a
split-backward schedule (``zero-bubble``), whose weight-gradient pass (``autograd.grad``) DDP's
hooks never see: those stages run unwrapped and their gradients are averaged over dp in one
flat all-reduce after the schedule's step.

A step: barrier (a shared time origin), ``schedule.step`` (the engine averages gradients over the
micro-batches, DDP/FSDP over dp), the dp average where DDP could not do it, sum the gradients
of tied weights over the stages that hold a copy, optimizer step. Guarantees: the same losses
and parameters as single-process training on the whole batch, to float rounding (what
``--check`` verifies).
"""
from __future__ import annotations

import copy
import time

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.pipelining import PipelineStage, build_stage
from torch.nn.parallel import DistributedDataParallel as DDP

from graphopt.distributed.direct import pipe_info, restore_meta
from graphopt.distributed.job import TrainJob, make_optimizer
from graphopt.distributed.lowering import RelayStage
from graphopt.distributed.trace import Recorder
from graphopt.schedules import split_backward, torch_schedule_class

__all__ = ["train_worker", "train_jobs_worker", "build_stages"]


def _device(backend_device: str) -> torch.device:
    if backend_device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _manual_mean(job: TrainJob) -> bool:
    """DDP under a split-backward schedule: torch computes the weight gradients with
    ``autograd.grad`` (its ``W`` pass), so DDP's hooks never fire and its buckets would reduce
    nothing; the stages then run unwrapped and :class:`_GradMean` averages their gradients."""
    cfg = job.config
    return cfg.dp > 1 and cfg.dp_wrapper == "ddp" and split_backward(cfg.schedule)


def _wrap(module: torch.nn.Module, job: TrainJob, mesh, unused: set[str] | None):
    """The DP wrapper on the mesh's dp dimension (none when dp is 1)."""
    cfg = job.config
    if cfg.dp == 1 or not any(p.requires_grad for p in module.parameters()) or _manual_mean(job):
        return module       # nothing to synchronize (a stage may hold no weights at all)
    if cfg.dp_wrapper == "fsdp":
        return fully_shard(module, mesh=mesh["dp"])
    dev = next(module.parameters()).device
    # DDP must look for weights without a gradient only where a stage has some (the engine's
    # no_sync forwards and explicit prepare_for_backward make the plain mode correct otherwise);
    # the flag costs a graph traversal per step and, where nothing is unused, one C++ warning
    # per rank that a Python filter cannot reach.
    return DDP(module, process_group=mesh["dp"].get_group(), find_unused_parameters=unused != set(),
               device_ids=[dev.index] if dev.type == "cuda" else None)


def build_stages(job: TrainJob, pp_rank: int, device: torch.device, mesh=None, pp_group=None):
    """``(stage index, module, PipelineStage)`` for every stage placed on ``pp_rank``.

    Each module gets its own copy of its weights (tied weights included), so a DP wrapper never
    sees a parameter shared with another module.
    """
    out = []
    low = job.lowered
    k = len(low)
    unused = job.unused
    for s, rank in enumerate(job.placement):
        if rank != pp_rank:
            continue
        prog = low.programs[s]
        if low.lowering == "direct":
            module = copy.deepcopy(prog.module).to(device)
            restore_meta(module, prog)
            wrapped = _wrap(module, job, mesh, unused[s]) if mesh is not None else module
            if not hasattr(wrapped, "graph"):
                wrapped.graph = module.graph   # the traced frontend reads it; DDP has none
            stage = build_stage(wrapped, s, pipe_info(low), device, group=pp_group)
        else:
            module = RelayStage(copy.deepcopy(prog),
                                fresh_outputs=job.config.schedule == "zero-bubble").to(device)
            wrapped = _wrap(module, job, mesh, unused[s]) if mesh is not None else module
            stage = PipelineStage(wrapped, s, k, device, input_args=prog.examples(prog.carry_in),
                                  output_args=prog.examples(prog.carry_out), group=pp_group)
        out.append((s, module, stage))
    return out


def _core(module: torch.nn.Module) -> torch.nn.Module:
    """The module holding a stage's weights under their graph names."""
    return getattr(module, "inner", module) if isinstance(module, RelayStage) else module


class _GradMean:
    """DDP's result for stages it cannot wrap (:func:`_manual_mean`): after the schedule's step,
    each gradient becomes its mean over the dp group, in one flat all-reduce. The weights that
    have a gradient are the same on every dp rank (one program), so the layouts agree."""

    def __init__(self, job: TrainJob, mesh, modules: dict[int, torch.nn.Module]):
        self.group = mesh["dp"].get_group() if _manual_mean(job) else None
        self.dp = job.config.dp
        self.params = [p for _, m in sorted(modules.items()) for p in m.parameters()
                       if p.requires_grad]

    def __call__(self) -> None:
        if self.group is None:
            return
        params = [p for p in self.params if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, group=self.group)
        flat.div_(self.dp)
        for p, g in zip(params, torch.split(flat, [p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))


class _TiedSync:
    """Sums the gradients of the copies of each tied weight over the ranks that hold them."""

    def __init__(self, job: TrainJob, dp_rank: int, pp_rank: int, modules: dict[int, torch.nn.Module]):
        cfg = job.config
        by_ranks: dict[tuple[int, ...], list] = {}
        for members in job.tied:
            ranks = tuple(sorted({job.placement[s] for s, _ in members}))
            by_ranks.setdefault(ranks, []).append(members)
        self.jobs = []   # (process group or None, [members, ...]) for this rank
        for ranks, groups in sorted(by_ranks.items()):
            for d in range(cfg.dp):      # every rank creates every group, in the same order
                pg = dist.new_group([cfg.parallel.rank_of(d, r) for r in ranks]) \
                    if len(ranks) > 1 else None
                if d == dp_rank and pp_rank in ranks:
                    self.jobs.append((pg, groups))
        self.modules = modules

    def _params(self, members):
        params = []
        for s, name in members:
            if s in self.modules:
                params.append(dict(_core(self.modules[s]).named_parameters())[name])
        return params

    def __call__(self) -> None:
        for pg, groups in self.jobs:
            sums, owners = [], []
            for members in groups:
                params = self._params(members)
                grads = [_local(p.grad) if p.grad is not None else torch.zeros_like(_local(p))
                         for p in params]
                sums.append(torch.stack(grads).sum(0))
                owners.append(params)
            if pg is not None:
                flat = torch.cat([t.reshape(-1) for t in sums])
                dist.all_reduce(flat, group=pg)
                sums = list(torch.split(flat, [t.numel() for t in sums]))
            for total, params in zip(sums, owners):
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    _local(p.grad).copy_(total.reshape(_local(p.grad).shape))


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def _full_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in _core(module).named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().cpu().clone()
    return out


def train_worker(rank: int, world: int, job: TrainJob) -> dict:
    """Run ``job`` as global rank ``rank``; returns losses, times, events and final weights."""
    cfg = job.config
    if world != cfg.world_size:
        raise RuntimeError(f"the job needs {cfg.world_size} ranks (pp {cfg.pp} x dp {cfg.dp}), "
                           f"got {world}")
    kind = "cuda" if dist.get_backend() == "nccl" else "cpu"
    device = _device(kind)
    torch.manual_seed(cfg.seed)
    mesh = init_device_mesh(kind, (cfg.dp, cfg.pp), mesh_dim_names=("dp", "pp"))
    dp_rank, pp_rank, _ = cfg.parallel.position(rank)
    built = build_stages(job, pp_rank, device, mesh, mesh["pp"].get_group())
    modules = {s: m for s, m, _ in built}
    stages = [st for _, _, st in built]
    recorder = Recorder(rank, job.fault)
    recorder.patch_p2p()
    for st in stages:
        recorder.wrap_stage(st)
    cls = torch_schedule_class(cfg.schedule)
    sched = cls(stages[0] if len(stages) == 1 else stages, n_microbatches=cfg.microbatches,
                loss_fn=job.loss)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params) if params else None
    tied = _TiedSync(job, dp_rank, pp_rank, modules)
    mean = _GradMean(job, mesh, modules)
    first = any(s == 0 for s in modules)
    last = any(s == len(job.lowered) - 1 for s in modules)
    lo, hi = dp_rank * job.shard, (dp_rank + 1) * job.shard
    losses, seconds, events, sent = [], [], [], []
    for step in range(cfg.steps):
        batch = job.batches.draw(step)
        args = tuple(t[lo:hi].to(device) for t in batch) if first else ()
        target = job.target[lo:hi].to(device) if last else None
        mb_losses: list = []
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        dist.barrier()
        recorder.start_step(step)
        t0 = time.perf_counter()
        sched.step(*args, target=target, losses=mb_losses if last else None,
                   return_outputs=False)
        t1 = time.perf_counter()
        mean()
        tied()
        t2 = time.perf_counter()
        if opt is not None:
            opt.step()
        if kind == "cuda":
            torch.cuda.synchronize(device)
        t3 = time.perf_counter()
        recorder.add("sync", -1, -1, t1, t2)
        recorder.add("optimizer", -1, -1, t2, t3)
        seconds.append(t3 - t0)
        events.append(list(recorder.events))
        sent.append(recorder.sent_bytes)
        if last:
            losses.append(float(torch.stack([torch.as_tensor(x).detach().float()
                                             for x in mb_losses]).mean()))
    params_out = {}
    for s, m in modules.items():
        full = _full_params(m)          # a collective under FSDP2: every dp rank calls it
        if dp_rank == 0:
            params_out[s] = full
    return {"rank": rank, "dp_rank": dp_rank, "pp_rank": pp_rank, "stages": sorted(modules),
            "losses": losses, "seconds": seconds, "events": events, "sent_bytes": sent,
            "params": params_out, "last": last}


def train_jobs_worker(rank: int, world: int, jobs: list[TrainJob]) -> list[dict]:
    """Run several jobs of the same world size one after another in one launch (each builds
    its own mesh): one process start-up for many configurations (benchmarks, tests)."""
    return [train_worker(rank, world, job) for job in jobs]
