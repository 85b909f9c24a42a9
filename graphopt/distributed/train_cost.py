"""The training step's cost model: what a node costs forward plus backward, what a stage holds.

Weights (the partitioner's balance and stage time): node ``v`` costs ``(1 + b(v))`` times its
forward FLOPs and roofline seconds, with the backward factor ``b`` per op class:

| op class | ``b`` | why |
| --- | --- | --- |
| matmul, conv | operands with a gradient (0-2) | a matmul of the same size per gradient (dX, dW) |
| attention (SDPA) | 2.5 | four matmuls for two forward ones, plus the softmax again |
| normalisation | 2 | mean and variance terms of the input gradient, the affine ones |
| softmax | 1.5 | ``y * (g - sum(g * y))``: a reduction and two pointwise passes |
| pointwise, reductions, gathers | 1 | one pass of the same size (a scatter-add for a gather) |
| views, creation, constants | 0 | nothing to differentiate |

(The first layer's matmul has no ``dX``: its input is data, so ``b = 1``.)

A node whose output depends on no trainable weight has no backward (``b = 0``), whatever its
class. Checked two ways (``bench/train.py`` prints both): summed over a model, forward plus these
backward FLOPs are within 6% of the forward+backward graph aot_autograd traces for it (the joint
graph of :mod:`graphopt.memory.joint`: ratios 1.002 residual MLP, 1.027 GPT-2, 1.055 BERT,
1.025 ViT, 1.046 ResNet, tiny configs); and as time on this project's 2-core CPU machine
(autograd, 1 thread, medians of alternating runs), matmul backward/forward came out 1.5-2.8
with both operands differentiable and 0.7-1.1 with the weight alone, conv 2.3-2.7, SDPA
2.6-2.9, softmax 1.2-1.8, while pointwise ops and layer norm scattered from 1 to 6 from one run
to the next: their time is memory traffic and per-op overhead on a loaded machine, which FLOP
ratios do not describe.

Memory of a pipeline rank: its stages' trainable weights times ``2 + s`` (weights, gradients
and optimizer state ``s``: SGD 0, SGD with momentum 1, AdamW 2), plus buffers and constants once,
plus for each stage the activations one micro-batch leaves for backward (every non-view output
it computes) and the tensors it received (the engine keeps a stage's inputs until its backward,
relayed ones included) times the micro-batches that stage holds at its peak under the schedule
(:func:`graphopt.distributed.schedule.inflight`).

:func:`plan_training` gives the partitioner these numbers without changing it: a
:class:`~graphopt.partition.costgraph.CostGraph` whose FLOPs and seconds are the training
weights and whose parameter bytes are scaled by ``2 + s``, so its memory term (parameters plus
in-flight activations) is a training step's. The plan returned carries the forward costs, as
``partition.json`` defines them.
"""
from __future__ import annotations

import numpy as np
import torch

from graphopt.cost import OpClass, get_link
from graphopt.distributed.plan_costs import on_host_cpu
from graphopt.errors import PlanError
from graphopt.partition.costgraph import CostGraph

__all__ = ["BACKWARD_FACTOR", "backward_factors", "state_factor", "training_cost_graph",
           "plan_training", "stage_memory", "estimate_step", "check_memory"]

BACKWARD_FACTOR = {OpClass.ATTENTION: 2.5, OpClass.NORM: 2.0, OpClass.ELEMENTWISE: 1.0,
                   OpClass.REDUCTION: 1.0, OpClass.INJECTIVE: 1.0, OpClass.RANDOM: 1.0,
                   OpClass.OPAQUE: 1.0}
_SOFTMAX = ("softmax", "log_softmax")


def _trainable(graph) -> dict[str, bool]:
    from graphopt.distributed.lowering import requires_grad_map
    return requires_grad_map(graph)


def backward_factors(graph) -> np.ndarray:
    """``b(v)`` for every node of ``graph`` in node order (see the module docstring)."""
    grad = _trainable(graph)
    out = []
    for node in graph.fx_nodes():
        info = graph.info[node.name]
        if node.op != "call_function" or not grad.get(node.name, False):
            out.append(0.0)
            continue
        cls = info.op_class
        if cls in (OpClass.MATMUL, OpClass.CONV):
            mats = [a for a in node.all_input_nodes
                    if isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].dim() >= 2]
            out.append(float(min(2, sum(1 for a in mats if grad.get(a.name, False)))))
        elif any(s in info.target for s in _SOFTMAX):
            out.append(1.5)
        else:
            out.append(BACKWARD_FACTOR.get(cls, 0.0))
    return np.asarray(out, dtype=np.float64)


def state_factor(optimizer: str, momentum: float = 0.0) -> float:
    """Bytes held per byte of trainable weight: the weight, its gradient, the optimizer state."""
    if optimizer == "adamw":
        return 4.0
    return 3.0 if momentum else 2.0


def training_cost_graph(graph, device: str = "cpu", *, optimizer: str = "sgd",
                        momentum: float = 0.0) -> CostGraph:
    """The forward cost graph with training weights and training parameter bytes."""
    cg = CostGraph.from_graph(graph, device)
    b = backward_factors(graph)
    grad = _trainable(graph)
    scale = state_factor(optimizer, momentum)
    names = cg.names
    trainable = np.array([graph.info[n].op == "get_attr" and grad.get(n, False) for n in names])
    # an embedding's backward is a scatter-add: count its elements where the forward counts 0
    extra = np.array([float(np.prod(graph.info[n].shape or [0])) if
                      b[i] > 0 and cg.flops[i] == 0 and cg.is_compute[i] else 0.0
                      for i, n in enumerate(names)])
    flops = np.round(cg.flops * (1.0 + b) + extra).astype(np.int64)
    return CostGraph(names=names, flops=flops, out_bytes=np.where(
        trainable, np.round(cg.out_bytes * scale), cg.out_bytes).astype(np.int64),
        seconds=cg.seconds * (1.0 + b), is_param=cg.is_param, is_compute=cg.is_compute,
        act_bytes=cg.act_bytes, src=cg.src, dst=cg.dst, ops=cg.ops, targets=cg.targets,
        name=cg.name, output_nodes=cg.output_nodes)


def plan_training(graph, *, k: int, schedule: str, microbatches: int, device: str = "cpu",
                  optimizer: str = "sgd", momentum: float = 0.0, memory_cap: float | None = None,
                  stages_per_rank: int = 1, imbalance: float = 0.03, seed: int = 0,
                  link: str | None = None, model: str = ""):
    """Partition ``graph`` into ``k`` pipeline stages for a training step.

    The per-part memory cap handed to the search is ``memory_cap / stages_per_rank`` (a rank
    holds that many parts); interleaved schedules are searched with 1F1B's in-flight counts over
    the ``k`` parts, which match torch's interleaved warm-up within one micro-batch per rank.
    :func:`check_memory` then checks each rank exactly.

    Returns:
        ``(plan, result)``: a :class:`~graphopt.partition.plan.Partition` with forward costs,
        and the search result (its baselines are on the training weights).
    """
    from graphopt.partition.plan import Partition
    from graphopt.partition.search import PartitionOptions, default_link, search
    tcg = training_cost_graph(graph, device, optimizer=optimizer, momentum=momentum)
    cap = None if memory_cap is None else float(memory_cap) / stages_per_rank
    opts = PartitionOptions(k=k, mode="pipeline", imbalance=imbalance, seed=seed, device=device,
                            link=link, microbatches=microbatches,
                            schedule="gpipe" if schedule == "gpipe" else "1f1b",
                            memory_cap=cap)
    result = search(tcg, opts)
    lk = link or default_link(device)
    ln = get_link(lk)
    options = opts.to_dict()
    options.update({"link": lk, "link_name": ln.name, "alpha": ln.alpha, "beta": ln.beta,
                    "train_schedule": schedule, "weights": "forward+backward"})
    plan = Partition(model=model or graph.name, k=k, mode="pipeline",
                     cost_graph=CostGraph.from_graph(graph, device), part=result.best.part,
                     method=result.best.method, options=options, notes=result.notes,
                     seconds=result.seconds)
    return plan, result


def stage_memory(lowered, graph, placement: list[int], inflight: list[int], *,
                 optimizer: str = "sgd", momentum: float = 0.0) -> list[dict]:
    """Bytes each pipeline rank holds at its peak (see the module docstring)."""
    from graphopt.cost import tensor_bytes
    scale = state_factor(optimizer, momentum)
    ranks = max(placement) + 1
    rows = [{"rank": r, "stages": [], "weights": 0, "activations": 0} for r in range(ranks)]
    for p in lowered.programs:
        row = rows[placement[p.index]]
        row["stages"].append(p.index)
        weights = sum(t.numel() * t.element_size() * (scale if t.requires_grad else 1.0)
                      for t in p.module.parameters())
        weights += sum(t.numel() * t.element_size() for t in p.module.buffers())
        acts = 0
        for node in p.module.graph.nodes:
            info = graph.info.get(node.name)
            if node.op == "call_function" and info is not None and not info.is_param and \
                    info.op_class != OpClass.VIEW:
                acts += tensor_bytes(node.meta.get("val"))
        acts += p.wire_bytes(p.carry_in) if p.index > 0 else 0
        row["weights"] += int(weights)
        row["activations"] += int(acts * inflight[p.index])
    for row in rows:
        row["total"] = row["weights"] + row["activations"]
    return rows


def check_memory(rows: list[dict], memory_cap: float | None, schedule: str,
                 microbatches: int) -> None:
    """PlanError (before any process starts) when a rank needs more than ``memory_cap``."""
    if memory_cap is None:
        return
    worst = max(rows, key=lambda r: r["total"])
    if worst["total"] > memory_cap:
        raise PlanError(
            f"the plan does not fit the memory cap of {memory_cap:.4g} bytes: pipeline rank "
            f"{worst['rank']} needs {worst['total']:.4g} (weights, gradients and optimizer state "
            f"{worst['weights']:.4g}, activations {worst['activations']:.4g} under {schedule} with "
            f"{microbatches} micro-batches); raise --memory-cap, add stages or use 1f1b")


def _simulated(lowered, graph, *, schedule, pp, v, microbatches, dp, device, link, placement,
               optimizer, momentum, prepared=None, threads=None) -> dict | None:
    """The calibrated simulator's estimate, or None where this installation lacks it."""
    try:
        from graphopt.distributed.simulate import node_seconds, simulate_step
    except ImportError:
        return None
    from graphopt.cost import get_device
    spec, ln = get_device(device), get_link(link)
    factor = dict(zip([n.name for n in graph.fx_nodes()], backward_factors(graph)))
    fwd, bwd, grads, params = [], [], [], []
    for p in lowered.programs:
        f = b = 0.0
        for node in p.module.graph.nodes:
            info = graph.info.get(node.name)
            if node.op == "call_function" and info is not None:
                t = node_seconds(info, spec)
                f, b = f + t, b + t * factor.get(node.name, 0.0)
        fwd.append(f)
        bwd.append(b)
        trainable = [t for t in p.module.parameters() if t.requires_grad]
        grads.append(sum(t.numel() * t.element_size() for t in trainable))
        params.append(sum(t.numel() * t.element_size() for t in p.module.parameters()))
    timed = None
    from graphopt.distributed.plan_profile import measured_scale, times_steps
    if prepared is not None and times_steps(spec):
        # The model's own step, timed alone, as the planner scales its stages.
        timed = measured_scale(prepared, sum(fwd), sum(bwd), threads or 1,
                               spec=spec)
        fwd, bwd = [f * timed[0] for f in fwd], [b * timed[1] for b in bwd]
    boundary = [0 if placement[p.index] == placement[p.index + 1] else p.wire_bytes(p.carry_out)
                for p in lowered.programs[:-1]]
    opt = "adamw" if optimizer == "adamw" else ("sgd-momentum" if momentum else "sgd")
    est = simulate_step(fwd, bwd, boundary, ln, schedule, microbatches, dp=dp, virtual_stages=v,
                        grad_bytes_per_stage=grads, param_bytes_per_stage=params, optimizer=opt,
                        overlap_sync=not on_host_cpu(spec, device))
    out = {"step_seconds": float(est.step_seconds), "bubble": float(est.bubble),
           "method": "graphopt.distributed.simulate.simulate_step", "device": device,
           "link": link, "stage_forward_seconds": fwd, "stage_backward_seconds": bwd,
           "allreduce_seconds": float(est.allreduce_seconds)}
    if timed is not None:
        out["timed_step_factors"] = {"forward": timed[0], "backward": timed[1]}
    return out


def estimate_step(plan, lowered, graph, *, schedule: str, pp: int, v: int, microbatches: int,
                  dp: int = 1, device: str = "cpu", link: str | None = None,
                  placement: list[int] | None = None, optimizer: str = "sgd",
                  momentum: float = 0.0, prepared=None, threads: int | None = None) -> dict:
    """Estimated step time and bubble of the lowered plan.

    The calibrated simulator (:func:`graphopt.distributed.simulate.simulate_step`) when it is
    installed: per-stage forward seconds from the device spec, backward from the per-node
    factors above, the relay's real bytes per boundary, DDP's bucketed all-reduce. Otherwise
    :func:`graphopt.partition.metrics.pipeline_estimate` (``(M + P - 1)`` slots of the slowest
    stage, backward twice the forward; for ``v > 1`` a rank runs ``v`` stages per micro-batch
    and the warm-up and drain shrink to ``(P - 1) / v`` micro-batches of its work) plus a ring
    all-reduce of the gradients.
    """
    from graphopt.distributed.schedule import bubble_fraction
    from graphopt.distributed.schedule import placement as place_of
    from graphopt.partition.metrics import BACKWARD_FACTOR as BWD
    from graphopt.partition.metrics import pipeline_estimate
    from graphopt.partition.search import default_link
    link = link or plan.options.get("link") or default_link(device)
    placement = placement or place_of(schedule, pp, v)
    sim = _simulated(lowered, graph, schedule=schedule, pp=pp, v=v, microbatches=microbatches,
                     dp=dp, device=device, link=link, placement=placement, optimizer=optimizer,
                     momentum=momentum, prepared=prepared, threads=threads)
    if sim is not None:
        return sim
    m = plan.metrics()
    if v == 1:
        est = pipeline_estimate(m, microbatches)
        seconds = est["gpipe" if schedule == "gpipe" else "1f1b"]["train_step_seconds"]
    else:
        per_rank = [0.0] * pp
        for s, r in enumerate(placement):
            per_rank[r] += m.stage_seconds[s] * (1.0 + BWD)
        slowest = max(per_rank)
        seconds = microbatches * slowest + (pp - 1) * slowest / v
    ln = get_link(link)
    grad_bytes = sum(t.numel() * t.element_size() for p in lowered.programs
                     for t in p.module.parameters() if t.requires_grad)
    if dp > 1:
        seconds += 2 * (dp - 1) / dp * grad_bytes / ln.beta + 2 * (dp - 1) * ln.alpha
    return {"step_seconds": float(seconds),
            "bubble": float(bubble_fraction(schedule, pp, v, microbatches)),
            "method": "graphopt.partition.metrics.pipeline_estimate", "device": device,
            "link": link}
