"""``graphopt train MODEL --pp P [--dp D]``: train the pipeline plan on torch.distributed.

Captures MODEL at the micro-batch size (global batch / (microbatches x dp)), partitions the
training step into ``P x v`` stages (or reads ``--plan``; ``--config parallel.json`` takes the
planner's chosen configuration), lowers them to ``torch.distributed.pipelining`` stages and
trains ``--steps`` steps on ``P x D`` processes it launches (gloo on CPU, NCCL with a GPU per
rank), or as ranks of a ``torchrun`` job. Prints each step's loss and time, the measured step
time and throughput beside the cost model's estimate, and writes ``DIR/train.json`` (schema
``graphopt.train/1``), ``DIR/train_timeline.svg`` and ``DIR/train_trace.json`` (Perfetto).
``--check`` trains the same steps in one process and exits 1 unless every loss and final weight
agrees within ``--rtol``.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from graphopt import units
from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    device_from,
    json_safe,
    output_dir,
    positive_int,
    preset_note,
    progress_from,
)
from graphopt.costmodel.presets import LINKS
from graphopt.errors import GraphoptError, PlanError
from graphopt.parallel import DP_WRAPPERS
from graphopt.progress import Progress
from graphopt.schedules import SCHEDULES

ORDER = 27
# the runtime's choices (graphopt.distributed.job checks them again), here without torch
LOWERINGS, OPTIMIZERS = ("relay", "direct"), ("sgd", "adamw")


def register(sub) -> None:
    p = sub.add_parser("train", help="train the pipeline plan on P x D processes "
                       "(torch.distributed.pipelining + DDP/FSDP2)",
                       description="Partition MODEL's training step into pipeline stages, train "
                       "it on pp x dp processes with torch.distributed.pipelining and DDP or "
                       "FSDP2, and report step time, throughput and the bubble beside the cost "
                       "model's estimate; --check compares with single-process training.")
    add_model_args(p)
    g = p.add_argument_group("parallelism")
    g.add_argument("--pp", type=positive_int, default=None,
                   help="pipeline ranks (required unless --plan or --config gives it)")
    g.add_argument("--dp", type=positive_int, default=None, help="data-parallel replicas "
                   "(default 1); the batch is split by dp rank")
    g.add_argument("--schedule", choices=SCHEDULES, default=None, help="pipeline schedule "
                   "(default 1f1b); interleaved and zero-bubble run 2 stages per rank")
    g.add_argument("--stages-per-rank", type=positive_int, default=None, metavar="V",
                   help="stages per rank for --schedule interleaved (default 2)")
    g.add_argument("--microbatches", type=positive_int, default=None,
                   help="micro-batches per step and dp rank (default 4)")
    g.add_argument("--dp-wrapper", choices=DP_WRAPPERS, default=None, help="how each stage is "
                   "replicated over dp: ddp (default: one all-reduce per step, whole weights "
                   "per rank) or fsdp (FSDP2: weights sharded, gathered per micro-batch)")
    g.add_argument("--lowering", choices=LOWERINGS, default="relay", help="relay (default: "
                   "every schedule; a value for a later stage passes through the stages between) "
                   "or direct (GPipe only: sent straight to each consumer stage)")
    g.add_argument("--plan", default=None, metavar="FILE", help="a partition.json (pipeline "
                   "mode, P x V parts, made for this model and micro-batch shape)")
    g.add_argument("--config", default=None, metavar="FILE", help="a parallel.json from "
                   "graphopt plan: train its chosen dp, pp, schedule and micro-batches")
    g.add_argument("--memory-cap", default=None, metavar="BYTES", help="memory per rank for "
                   "weights, gradients, optimizer state and in-flight activations, e.g. 2GiB; "
                   "a plan that does not fit is refused before anything starts")
    g.add_argument("--imbalance", type=float, default=0.03,
                   help="allowed max stage work / (total / stages) - 1 (default 0.03)")
    g.add_argument("--link", choices=sorted(LINKS), default=None,
                   help="link model for the estimate (default: by device)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=positive_int, default=2, help="training steps (default 2)")
    t.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                   help="sgd (default) or adamw")
    t.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    t.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (default 0)")
    t.add_argument("--check", action="store_true", help="also train in one process; exit 1 "
                   "unless every step's loss and every final weight agree within --rtol")
    t.add_argument("--rtol", type=float, default=1e-5, help="relative error --check accepts "
                   "(default 1e-5)")
    t.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="limit for the whole run; a rank that fails or hangs stops the others "
                   "(default 600)")
    t.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads per process (default: cores / processes)")
    add_device_args(p, default="cpu", prices="stages for the partition and the estimate")
    add_out_arg(p, "train.json, train_timeline.svg and train_trace.json")
    # unset unless given, so that --config's batch is taken rather than refused (default 1)
    p.set_defaults(func=run, batch=None)


def _merge(args, key: str, value, default):
    """A CLI flag agrees with the config (or the plan), or is taken from it."""
    mine = getattr(args, key)
    if value is None:
        return default if mine is None else mine
    if mine is not None and mine != value:
        raise PlanError(f"--{key.replace('_', '-')} {mine} disagrees with the configuration's "
                        f"{value}")
    return value


def _config(args):
    """The run's :class:`TrainConfig`, its plan (``--plan``) or None, from the flags and the
    ``--config`` file's chosen :class:`~graphopt.parallel.ParallelConfig` (they must agree)."""
    from graphopt.distributed.job import TrainConfig
    from graphopt.planner.config_file import read_parallel_config
    from graphopt.schedules import stages_per_rank
    if args.plan and args.config:
        raise PlanError("give --plan or --config, not both")
    chosen = read_parallel_config(args.config, model=args.model, batch=args.batch) \
        if args.config else {}
    if args.batch is None:     # the batch the configuration was priced at, else --batch's 1
        args.batch = chosen.batch if chosen and chosen.batch is not None else 1
    schedule = _merge(args, "schedule", chosen.get("schedule"), "1f1b")
    v = stages_per_rank(schedule, _merge(args, "stages_per_rank", chosen.get("stages_per_rank"),
                                         None))
    pp = _merge(args, "pp", chosen.get("pp"), None)
    plan = None
    if args.plan:
        from graphopt.partition.plan import Partition
        plan = Partition.from_json(Path(args.plan))
        if pp is None:
            if plan.k % v:
                raise PlanError(f"{args.plan} has {plan.k} parts, not a multiple of the {v} "
                                f"stages per rank of --schedule {schedule}")
            pp = plan.k // v
    if pp is None:
        raise PlanError("give --pp P (pipeline ranks), --plan partition.json or --config "
                        "parallel.json")
    for name in ("lr", "rtol", "timeout", "imbalance"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise GraphoptError(f"--{name} must be a positive number, got {value:g}")
    cfg = TrainConfig.of(pp=pp, dp=_merge(args, "dp", chosen.get("dp"), 1), schedule=schedule,
                         microbatches=_merge(args, "microbatches", chosen.get("microbatches"), 4),
                         microbatch_size=chosen.get("microbatch_size"),
                         memory_budget=chosen.get("memory_budget"),
                         steps=args.steps, optimizer=args.optimizer, lr=args.lr,
                         momentum=args.momentum, virtual=v,
                         dp_wrapper=_merge(args, "dp_wrapper", chosen.get("dp_wrapper"), "ddp"),
                         seed=args.seed, timeout_s=args.timeout, lowering=args.lowering)
    return cfg, plan


def run(args) -> int:
    from graphopt.distributed.trainer import run_job
    from graphopt.launch import WorkerError, rank_threads, under_torchrun
    from graphopt.planner.training import estimate_step, make_job, prepare_model
    from graphopt.specs import load_spec, parse_overrides
    cfg, plan = _config(args)
    cfg.parallel.check_runnable()
    cap = units.parse_bytes(args.memory_cap, option="--memory-cap") if args.memory_cap else None
    cost_model = device_from(args)
    rank0 = not under_torchrun() or os.environ.get("RANK", "0") == "0"
    progress = progress_from(args) if rank0 else Progress(False)
    with output_dir(args.out) as out:
        with progress.step(f"loading {args.model}"):
            loaded = load_spec(args.model, overrides=parse_overrides(args.overrides),
                               batch=args.batch, seq=args.seq, image_size=args.image_size,
                               seed=args.seed)
        with progress.step(f"capturing {args.model} at the micro-batch size"):
            prep = prepare_model(loaded, cfg, capture_mode=args.capture)
        with progress.step(f"planning {cfg.stages} stages"):
            job, info = make_job(prep, cfg, plan=plan, memory_cap=cap, cost_model=cost_model,
                                 imbalance=args.imbalance)
        estimate = estimate_step(info.plan, prep, cfg, cost_model,
                                 threads=args.threads or rank_threads(cfg.world_size))
        try:
            with progress.step(f"training on {cfg.world_size} processes"):
                trained = run_job(job, threads=args.threads)
        except WorkerError as exc:
            print(f"graphopt: error: {exc}", file=sys.stderr)
            return 1
        if trained is None:          # a torchrun rank other than 0: rank 0 reports
            return 0
        check = None
        if args.check:
            from graphopt.distributed.reference import compare_runs, reference_training
            with progress.step("training the same steps in one process"):
                ref = reference_training(job, model=prep.model, in_spec=prep.in_spec,
                                         graph=prep.graph)
            check = compare_runs(trained.losses, trained.params, ref, rtol=args.rtol)
        return _report(args, out, job, info, trained, estimate, check)


def _report(args, out: Path, job, info, trained, estimate, check) -> int:
    from graphopt.distributed.timeline import write_chrome_trace, write_timeline_picture
    from graphopt.distributed.trainer import train_report
    from graphopt.export import write_atomic
    cfg = job.config
    budget = cfg.parallel.memory_budget
    doc = train_report(job, info, trained, estimate, check)
    doc["memory_budget"] = None if budget is None else budget.value
    write_atomic(out / "train.json", json.dumps(json_safe(doc), indent=1, default=_plain) + "\n")
    step = trained.step_seconds[trained.timed_step]
    title = (f"{job.model}: pp {cfg.pp} x dp {cfg.dp}, {cfg.schedule}, {cfg.microbatches} "
             f"micro-batches; step {trained.timed_step}: {step * 1e3:.1f} ms, measured bubble "
             f"{doc['measured']['bubble']:.0%}")
    pic = write_timeline_picture(out / "train_timeline.svg", trained.events, step, title=title,
                                 positions=trained.positions)
    trace = write_chrome_trace(out / "train_trace.json", trained.events, step, title=title,
                               positions=trained.positions)
    for row in doc["steps"]:
        print(f"step {row['step']}: loss {row['loss']:.6g}, {row['seconds'] * 1e3:.1f} ms")
    m, e = doc["measured"], doc["estimated"]
    print(f"train: {job.model} on pp {cfg.pp} x dp {cfg.dp} = {cfg.world_size} processes, "
          f"{cfg.schedule}, {cfg.microbatches} micro-batches of {job.micro}, {cfg.optimizer}; "
          f"plan {info.plan.method}; loss: {job.loss.describe()}")
    print(f"measured: {m['step_seconds'] * 1e3:.2f} ms per step (median after the first), "
          f"{m['samples_per_second']:.1f} samples/s, bubble {m['bubble']:.0%}; "
          f"{doc['comm_bytes_per_step']:,} bytes between stages per step")
    ratio = m["step_seconds"] / e["step_seconds"] if e["step_seconds"] > 0 else math.inf
    timed = estimate.get("timed_step_factors")
    scaled = (f"; stages scaled by the model's timed step x{timed['forward']:.2f} forward, "
              f"x{timed['backward']:.2f} backward" if timed else "")
    print(f"estimated ({estimate['priced_for']}{scaled}): "
          f"{e['step_seconds'] * 1e3:.3f} ms per step, bubble {e['bubble']:.0%}; "
          f"measured/estimated {ratio:.2f}x")
    note = preset_note(args)
    if note:
        print(note)
    if budget is not None:
        print(f"note: the configuration's memory_budget {budget} is recorded; training here "
              "does not rematerialize activations")
    for path in (out / "train.json", pic, trace):
        print(f"wrote {path}")
    if check is None:
        return 0
    print(f"check against {check['reference']}: max loss relative error "
          f"{check['max_loss_rel_err']:.3g}, max parameter relative error "
          f"{check['max_param_rel_err']:.3g} ({check['worst_param']}), tolerance "
          f"{check['rtol']:g}: {'match' if check['ok'] else 'MISMATCH'}")
    return 0 if check["ok"] else 1


def _plain(x):
    import numpy as np
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(f"not JSON serializable: {type(x).__name__}")
