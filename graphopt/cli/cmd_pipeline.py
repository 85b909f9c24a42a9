"""``graphopt pipeline MODEL -k K``: run the pipeline plan on K processes with torch.distributed.

Partitions MODEL in pipeline mode (or reads ``--plan partition.json``), splits it into K stage
modules, runs ``--microbatches`` micro-batches through K processes (gloo on CPU, NCCL with a GPU
per stage), and prints the measured throughput next to the cost model's estimate. A micro-batch
is one set of inputs shaped like the example inputs; the first is the example itself, the
others are drawn like it from the seed. ``--check`` also runs the single-process model on every
micro-batch and exits 1 when the largest relative error exceeds ``--rtol`` (or anything is NaN).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from graphopt.cli.cmd_partition import add_plan_args, make_plan, plan_options
from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    device_from,
    load_and_capture,
    positive_int,
    preset_note,
    progress_from,
)
from graphopt.errors import GraphoptError, PlanError

ORDER = 25


def pipeline_estimate(graph, plan, microbatches: int, cost_model):
    """The forward-only step of ``plan`` on ``microbatches`` micro-batches, as
    :func:`graphopt.costmodel.step.predict_step` prices it (GPipe order, one stage a process)."""
    from graphopt.costmodel.stage_profile import stage_profile
    from graphopt.costmodel.step import predict_step
    from graphopt.parallel import ParallelConfig
    config = ParallelConfig(pp=plan.k, schedule="gpipe", microbatches=microbatches)
    return predict_step(stage_profile(graph, plan.parts, plan.k, cost_model), config, cost_model,
                        forward_only=True)


def register(sub) -> None:
    p = sub.add_parser("pipeline", help="run the pipeline plan on K processes (torch.distributed)",
                       description="Partition MODEL into K pipeline stages (or use --plan), run "
                       "them on K processes with torch.distributed and report throughput; "
                       "--check compares every output with the single-process model.")
    add_model_args(p)
    p.add_argument("-k", "--k", dest="k", type=int, default=None,
                   help="number of stages (processes); required unless --plan gives it")
    p.add_argument("--microbatches", type=int, default=4, help="micro-batches to run (default 4)")
    p.add_argument("--check", action="store_true",
                   help="compare with the single-process model; exit 1 on mismatch (default: "
                   "off)")
    p.add_argument("--rtol", type=float, default=1e-4,
                   help="largest relative error --check accepts: max |got - want| / max |want| "
                   "(default 1e-4)")
    p.add_argument("--plan", default=None, metavar="FILE", help="a partition.json to run instead "
                   "of partitioning (pipeline mode, made for the same model and shapes)")
    add_device_args(p, default="cpu", prices="the stages for the partition and the "
                    "throughput estimate")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads per process (default: cores / K)")
    add_plan_args(p, mode=False)
    p.set_defaults(func=run)


def _like(t, gen):
    """A fresh input drawn like the example tensor ``t`` (same shape, dtype, value range)."""
    import torch
    if not isinstance(t, torch.Tensor):
        return t
    if t.dtype.is_floating_point:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype)
    if t.dtype == torch.bool:
        return torch.rand(t.shape, generator=gen) < 0.5
    hi = int(t.max().item()) + 1 if t.numel() else 1
    lo = min(int(t.min().item()), 0) if t.numel() else 0
    return torch.randint(lo, max(hi, lo + 1), t.shape, generator=gen, dtype=t.dtype)


def microbatches(loaded, m: int, seed: int) -> list[tuple]:
    import torch
    import torch.utils._pytree as pytree
    flat = pytree.tree_leaves((loaded.inputs, loaded.kwargs or {}))
    gen = torch.Generator().manual_seed(seed + 1)
    return [tuple(flat)] + [tuple(_like(t, gen) for t in flat) for _ in range(m - 1)]


def compare(got: list[tuple], want: list[tuple]) -> tuple[float, float, bool]:
    """(max abs error, max relative error, any NaN where the reference has none)."""
    import torch
    abs_err, rel_err, nan = 0.0, 0.0, False
    for g_mb, w_mb in zip(got, want):
        for g, w in zip(g_mb, w_mb):
            if not isinstance(w, torch.Tensor):
                continue
            g, w = g.double(), w.double()
            if g.shape != w.shape:
                return math.inf, math.inf, True
            nan |= bool((torch.isnan(g) & ~torch.isnan(w)).any())
            d = (g - w).abs().nan_to_num(nan=math.inf)
            if d.numel():
                a = float(d.max())
                abs_err = max(abs_err, a)
                rel_err = max(rel_err, a / max(float(w.abs().nan_to_num(0).max()), 1e-12))
    return abs_err, rel_err, nan


def _reference(loaded, graph, mbs: list[tuple]) -> tuple[list[tuple], str]:
    """The eager model's flat outputs (the graph's, when the leaves do not line up)."""
    import torch
    import torch.utils._pytree as pytree
    n_args = len(pytree.tree_leaves(loaded.inputs))
    out = []
    with torch.no_grad():
        for mb in mbs:
            args = pytree.tree_unflatten(list(mb[:n_args]),
                                         pytree.tree_structure(loaded.inputs))
            res = loaded.model(*args, **(loaded.kwargs or {}))
            out.append(tuple(t for t in pytree.tree_leaves(res) if isinstance(t, torch.Tensor)))
    n_graph = len(graph.output_names())
    if all(len(o) == n_graph for o in out) and not loaded.kwargs:
        return out, "the single-process model"
    with torch.no_grad():
        return [graph.run(*mb) for mb in mbs], "the single-process graph"


def run(args) -> int:
    import torch

    from graphopt.distributed.stage_runtime import run_pipeline
    from graphopt.partition.cut_rewrite import cut_like
    from graphopt.partition.plan import Partition
    from graphopt.partition.search import check_early
    if args.microbatches < 1:
        raise GraphoptError(f"--microbatches must be at least 1, got {args.microbatches}")
    if not (math.isfinite(args.rtol) and args.rtol >= 0):
        raise GraphoptError(f"--rtol must be a finite number >= 0, got {args.rtol:g}")
    if args.plan is None:
        if args.k is None:
            raise PlanError("give -k K (the number of stages) or --plan partition.json")
        check_early(args.k, args.imbalance)
        plan_options(args, args.k, "pipeline")  # option values a user can fix, before capture
    plan = Partition.from_json(Path(args.plan)) if args.plan else None
    if plan is not None and args.k is not None and args.k != plan.k:
        raise PlanError(f"-k {args.k} disagrees with the plan's k={plan.k}")
    device = device_from(args)
    progress = progress_from(args)
    loaded, graph = load_and_capture(args, progress)
    if plan is None:
        with progress.step(f"partitioning into {args.k} stages"):
            graph, plan = make_plan(args, graph, k=args.k, mode="pipeline", device=device)
    else:
        graph = cut_like(graph, plan.splits, plan.source)   # a plan made on a cut graph
        plan.apply(graph)
    stages = plan.split(graph)
    mbs = microbatches(loaded, args.microbatches, args.seed)
    with progress.step(f"running {len(stages)} stages on {len(stages)} processes"):
        start = time.perf_counter()
        result = run_pipeline(stages, mbs, threads=args.threads)
        wall = time.perf_counter() - start
    batch = int(mbs[0][0].shape[0]) if mbs[0] and isinstance(mbs[0][0], torch.Tensor) and \
        mbs[0][0].dim() else 1
    pred = pipeline_estimate(graph, plan, args.microbatches, device)
    est_step = pred.step_seconds
    print(f"pipeline: {plan.k} stages on {result.world_size} processes ({result.backend}), "
          f"{args.microbatches} micro-batches of batch {batch}; plan {plan.method}, "
          f"{plan.summary()['comm_bytes']:,} bytes sent per micro-batch")
    print(f"measured: {result.seconds * 1e3:.2f} ms for the step, "
          f"{result.microbatches_per_second:.2f} micro-batches/s "
          f"({result.microbatches_per_second * batch:.2f} samples/s); {wall:.1f} s with start-up")
    rate = args.microbatches / est_step if est_step > 0 else math.inf
    print(f"estimated ({pred.target}): {est_step * 1e3:.3f} ms for the step, {rate:.2f} "
          f"micro-batches/s; bubble {pred.bubble:.0%}; measured/estimated time "
          f"{result.seconds / est_step:.2f}x" if est_step > 0 else
          "estimated: no compute in the plan")
    note = preset_note(args)
    if note:
        print(note)
    if not args.check:
        return 0
    with progress.step("running the single-process reference"):
        want, what = _reference(loaded, graph, mbs)
    abs_err, rel_err, nan = compare(result.outputs, want)
    ok = not nan and rel_err <= args.rtol
    print(f"check against {what}: max abs error {abs_err:.3g}, max relative error "
          f"{rel_err:.3g} (tolerance {args.rtol:g}){', NaN in the output' if nan else ''}: "
          f"{'match' if ok else 'MISMATCH'}")
    return 0 if ok else 1
