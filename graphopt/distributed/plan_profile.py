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
runs ``share`` times slower (:mod:`graphopt.distributed.plan_engine`), which the planner applies.

Example:
    >>> fwd_scale, bwd_scale = measured_scale(prepared, spec_fwd_s, spec_bwd_s, threads=1)
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ["time_step", "measured_scale", "WARMUP", "STEPS"]

WARMUP, STEPS = 2, 5


def time_step(prepared, threads: int, steps: int = STEPS) -> tuple[float, float]:
    """Median forward and backward seconds of ``prepared``'s graph as one stage, one
    micro-batch (``prepared.micro`` samples), ``threads`` intra-op threads."""
    from graphopt.distributed.lowering import RelayStage, lower
    from graphopt.partition.stages import split_graph
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


def measured_scale(prepared, spec_fwd_s: float, spec_bwd_s: float, threads: int) -> tuple[float,
                                                                                          float]:
    """``(forward, backward)`` factors: measured seconds over the spec's (1.0 where the spec
    predicts nothing)."""
    fwd, bwd = time_step(prepared, threads)
    return (fwd / spec_fwd_s if spec_fwd_s > 0 else 1.0,
            bwd / spec_bwd_s if spec_bwd_s > 0 else 1.0)
