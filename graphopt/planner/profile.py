"""The model's own training step, timed once in this process, to correct the per-op roofline.

The device spec prices every op from a handful of measured rates (square matmuls, a mix of
pointwise ops, a fused attention op, dropout's draws, the dispatch cost of an ATen call). On a
small model the sum of those prices misses what the rates cannot see: matmuls of the model's
own thin shapes, caches, the autograd engine's per-node work in the backward pass. On this
2-core CPU the sum came to 0.55-0.75 of the measured step for a 2-layer GPT-2 and a residual
MLP, an error no schedule can make up for. So, where the spec describes the machine the
planner runs on, the planner also times the model: the training graph at each micro-batch
size, as one stage (the runtime's own lowering), forward then backward from its outputs, with
the intra-op threads a rank of that world size gets, the median of a few steps after a warm-up.
The measured forward and backward seconds over the spec's sums are two factors that scale
every stage's forward and backward (the stage split keeps the spec's proportions).

These are the times of one process alone; with every rank of a shared host busy at once each
runs ``share`` times slower (:mod:`graphopt.planner.engine`), which the planner applies.

Timings are cached per machine (as the calibration is: ``<graphopt cache>/steps/``), keyed by the
graph's code and shapes, the micro-batch, the thread count, the machine's calibration key and
the calibrated spec they correct, so planning the same model again gives the same ranking
instead of a new draw of the machine's noise, and a new calibration times the steps again: the
factors divide one measurement by the other, so the two are taken together (this 2-core host's
step times move by a third between hours).

Example:
    >>> fwd_scale, bwd_scale = measured_scale(prepared, spec_fwd_s, spec_bwd_s, threads=1)
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from graphopt.costmodel.calibrate import cache_dir, cache_path
from graphopt.distributed.lowering import RelayStage, lower
from graphopt.partition.stages import split_graph

__all__ = ["times_steps", "time_step", "cached_step", "measured_scale", "cache_file", "WARMUP",
           "STEPS"]

WARMUP, STEPS = 2, 5


def times_steps(spec) -> bool:
    """Whether stage times on ``spec`` are scaled by a timed step: a calibrated CPU spec (it has
    measured matmul curves), which describes the machine the planner runs on."""
    return bool(spec.matmul_curve) and spec.device_type == "cpu"


def time_step(prepared, threads: int, steps: int = STEPS) -> tuple[float, float]:
    """Median forward and backward seconds of ``prepared``'s graph as one stage, one
    micro-batch (``prepared.micro`` samples), ``threads`` intra-op threads."""
    graph = prepared.graph
    one = lower(split_graph(graph, {n: 0 for n in graph.info}, 1), graph)
    module = RelayStage(one.programs[0])
    inputs = tuple(t[:prepared.micro] for t in prepared.batches.example)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    fwd, bwd = [], []
    try:
        for i in range(WARMUP + steps):
            start = time.perf_counter()
            out = module(*inputs)
            loss = sum(t.float().mean() for t in (out if isinstance(out, tuple) else (out,))
                       if isinstance(t, torch.Tensor) and t.requires_grad)
            mid = time.perf_counter()
            if isinstance(loss, torch.Tensor):
                loss.backward()
            end = time.perf_counter()
            module.zero_grad(set_to_none=True)
            if i >= WARMUP:
                fwd.append(mid - start)
                bwd.append(end - mid)
    finally:
        torch.set_num_threads(before)
    return statistics.median(fwd), statistics.median(bwd)


def cache_file(prepared, threads: int, spec=None) -> Path:
    """Where this machine keeps the timing of ``prepared`` at ``threads`` threads, taken for
    the device spec ``spec`` (its every field is in the key)."""
    graph = prepared.graph
    shapes = [(n.name, n.shape, n.dtype) for n in graph.nodes() if n.op == "placeholder"]
    key = json.dumps([graph.gm.code, shapes, prepared.micro, threads, cache_path(1).name,
                      repr(spec) if spec is not None else ""], default=str)
    return cache_dir() / "steps" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def cached_step(prepared, threads: int, spec=None) -> tuple[float, float]:
    """:func:`time_step`, measured once per machine and spec (module docstring)."""
    path = cache_file(prepared, threads, spec)
    try:
        data = json.loads(path.read_text())
        return float(data["forward_s"]), float(data["backward_s"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    fwd, bwd = time_step(prepared, threads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"forward_s": fwd, "backward_s": bwd, "micro": prepared.micro,
                                   "threads": threads}) + "\n")
        tmp.replace(path)
    except OSError:        # a read-only cache: measured each time
        pass
    return fwd, bwd


def measured_scale(prepared, spec_fwd_s: float, spec_bwd_s: float, threads: int,
                   spec=None) -> tuple[float, float]:
    """``(forward, backward)`` factors: measured seconds over the spec's (1.0 where the spec
    predicts nothing); ``spec`` is the device spec the step corrects (see :func:`cache_file`)."""
    fwd, bwd = cached_step(prepared, threads, spec)
    return (fwd / spec_fwd_s if spec_fwd_s > 0 else 1.0,
            bwd / spec_bwd_s if spec_bwd_s > 0 else 1.0)
