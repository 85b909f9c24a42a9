"""The training job, planned and priced: capture, partition, memory check, job, estimate.

What ``graphopt train`` runs before any process starts, usable from Python:

1. :func:`prepare_model`: add the labels a model's own loss needs, check the batch splits into
   ``dp * M`` equal micro-batches, capture the graph at the micro-batch size;
2. :func:`plan_training`: partition for a training step (forward+backward weights, training
   memory; the partitioner is unchanged, its cost graph carries the training weights);
3. :func:`make_job`: plan (or take a plan), split, lower, check every rank's memory
   (:func:`stage_memory`, :func:`check_memory`);
4. :func:`estimate_step`: the step as :func:`graphopt.costmodel.step.predict_step` prices it,
   the one prediction ``graphopt plan`` ranks by.

Weights (the partitioner's balance and stage time): node ``v`` costs ``(1 + b(v))`` times its
forward FLOPs and seconds, ``b`` its backward factor (:mod:`graphopt.costmodel.backward`, read
from the op table). Memory of a pipeline rank: its stages' trainable weights times ``2 + s``
(weights, gradients and optimizer state ``s``), plus buffers and constants once, plus for each
stage the activations one micro-batch leaves for backward and the tensors it received, times the
micro-batches that stage holds at its peak under the schedule (:func:`graphopt.schedules.inflight`).

Example:
    >>> cm = CostModel(Target.preset("cpu"))
    >>> prep = prepare_model(load_spec("zoo:resmlp"), TrainConfig.of(pp=2, microbatches=4))
    >>> job, info = make_job(prep, prep_cfg, cost_model=cm)
    >>> estimate_step(info.plan, prep, job.config, cm)["step_seconds"]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.utils._pytree as pytree

from graphopt.autodiff import requires_grad_map
from graphopt.capture import capture
from graphopt.cost import OpClass, tensor_bytes
from graphopt.costmodel.backward import backward_factors
from graphopt.costmodel.optimizer import optimizer_key, state_factor
from graphopt.costmodel.stage_profile import scaled, stage_profile
from graphopt.costmodel.step import predict_step
from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.distributed.batches import BatchSpec, add_labels, make_loss, make_target
from graphopt.distributed.direct import lower_direct
from graphopt.distributed.job import TrainConfig, TrainJob
from graphopt.distributed.lowering import lower, relay_bytes, tied_parameters
from graphopt.distributed.trainer import JobInfo
from graphopt.errors import GraphoptError, PlanError
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.cut_rewrite import cut_like
from graphopt.partition.plan import Partition
from graphopt.partition.search import PartitionOptions, search
from graphopt.planner.profile import measured_scale, times_steps
from graphopt.schedules import inflight

__all__ = ["Prepared", "prepare_model", "make_job", "training_cost_graph", "plan_training",
           "stage_memory", "check_memory", "estimate_step"]


@dataclass
class Prepared:
    """A model ready to plan: the graph at micro-batch size and the data of every step."""

    spec: str
    model: torch.nn.Module
    graph: object
    batches: BatchSpec
    in_spec: object
    micro: int


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


def training_cost_graph(graph, cost_model="cpu", *, optimizer: str = "sgd",
                        momentum: float = 0.0) -> CostGraph:
    """The forward cost graph with training weights and training parameter bytes."""
    cg = CostGraph.from_graph(graph, cost_model)
    b = backward_factors(graph)
    grad = requires_grad_map(graph)
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


def plan_training(graph, *, k: int, schedule: str, microbatches: int, cost_model="cpu",
                  optimizer: str = "sgd", momentum: float = 0.0, memory_cap: float | None = None,
                  stages_per_rank: int = 1, imbalance: float = 0.03, seed: int = 0,
                  model: str = ""):
    """Partition ``graph`` into ``k`` pipeline stages for a training step.

    The per-part memory cap handed to the search is ``memory_cap / stages_per_rank`` (a rank
    holds that many parts); interleaved schedules are searched with 1F1B's in-flight counts over
    the ``k`` parts, which match torch's interleaved warm-up within one micro-batch per rank.
    :func:`check_memory` then checks each rank exactly.

    Returns:
        ``(plan, result)``: a :class:`~graphopt.partition.plan.Partition` with forward costs,
        and the search result (its baselines are on the training weights).
    """
    cm = as_cost_model(cost_model)
    tcg = training_cost_graph(graph, cm, optimizer=optimizer, momentum=momentum)
    cap = None if memory_cap is None else float(memory_cap) / stages_per_rank
    opts = PartitionOptions(k=k, mode="pipeline", imbalance=imbalance, seed=seed, device=cm,
                            microbatches=microbatches,
                            schedule="gpipe" if schedule == "gpipe" else "1f1b",
                            memory_cap=cap)
    result = search(tcg, opts)
    ln = cm.link
    options = opts.to_dict()
    options.update({"link": cm.target.link_key, "link_name": ln.name, "alpha": ln.alpha,
                    "beta": ln.beta, "train_schedule": schedule, "weights": "forward+backward"})
    plan = Partition(model=model or graph.name, k=k, mode="pipeline",
                     cost_graph=CostGraph.from_graph(graph, cm), part=result.best.part,
                     method=result.best.method, options=options, notes=result.notes,
                     seconds=result.seconds)
    return plan, result


def stage_memory(lowered, graph, placement: list[int], inflight: list[int], *,
                 optimizer: str = "sgd", momentum: float = 0.0) -> list[dict]:
    """Bytes each pipeline rank holds at its peak (see the module docstring)."""
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


def _direct_bytes(stages) -> int:
    """What sending each value once per consumer stage would cost (the plan's own count)."""
    total = 0
    for st in stages.stages:
        for name, kind, _ in st.inputs:
            if kind == "recv":
                total += sum(int(np.prod([int(s) for s in shape])) *
                             torch.empty((), dtype=dtype).element_size()
                             for shape, dtype in st.specs[name])
    return total


def make_job(prep: Prepared, cfg: TrainConfig, *, plan=None, memory_cap: float | None = None,
             cost_model="cpu", imbalance: float = 0.03, fault=None) -> tuple[TrainJob, JobInfo]:
    """Plan (unless ``plan`` is given), lower, check memory; nothing starts yet."""
    cfg.validate()
    k = cfg.stages
    cfg.parallel.check_runnable()
    graph = prep.graph
    if plan is None:
        plan, _ = plan_training(graph, k=k, schedule=cfg.schedule, microbatches=cfg.microbatches,
                                cost_model=cost_model, optimizer=cfg.optimizer,
                                momentum=cfg.momentum, memory_cap=memory_cap,
                                stages_per_rank=cfg.virtual, imbalance=imbalance, seed=cfg.seed,
                                model=prep.spec)
    else:
        if plan.mode != "pipeline":
            raise PlanError(f"{plan.source}: a {plan.mode}-mode plan cannot run as a pipeline; "
                            "make it with --mode pipeline")
        if plan.k != k:
            raise PlanError(f"{plan.source} has {plan.k} parts but --pp {cfg.pp} x "
                            f"{cfg.virtual} stage(s) per rank needs {k}")
        graph = cut_like(graph, plan.splits, plan.source)
        prep.graph = graph
        plan.check_graph(graph)
    stages = plan.split(graph)
    lowered = lower_direct(stages, graph) if cfg.lowering == "direct" else lower(stages, graph)
    place = list(cfg.placement)
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


def estimate_step(plan, prep: Prepared, cfg, cost_model: CostModel, *,
                  threads: int | None = None) -> dict:
    """The predicted step of ``cfg`` on ``plan`` (:func:`~graphopt.costmodel.step.predict_step`
    over the plan's :class:`~graphopt.costmodel.stage_profile.StageProfile`); with a calibrated
    CPU spec the stages are scaled by the model's own step, timed alone, as the planner does.
    ``cfg`` is a :class:`~graphopt.distributed.job.TrainConfig` (its ``parallel`` and its
    ``optimizer`` and ``momentum``) or a :class:`~graphopt.parallel.ParallelConfig` (SGD)."""
    cm = as_cost_model(cost_model)
    prof = stage_profile(prep.graph, plan.parts, plan.k, cm)
    timed = None
    if times_steps(cm.spec):
        timed = measured_scale(prep, sum(prof.fwd_s), sum(prof.bwd_s), threads or 1, spec=cm.spec)
        prof = scaled(prof, *timed)
    opt = optimizer_key(getattr(cfg, "optimizer", "sgd"), getattr(cfg, "momentum", 0.0))
    pred = predict_step(prof, cfg, cm, optimizer=opt)
    out = {"step_seconds": pred.step_seconds, "bubble": float(pred.bubble),
           "method": "graphopt.costmodel.predict_step", "priced_for": cm.describe(),
           "device": cm.target.key, "link": cm.target.link_key,
           "stage_forward_seconds": list(prof.fwd_s), "stage_backward_seconds": list(prof.bwd_s),
           "allreduce_seconds": float(pred.allreduce_seconds)}
    if timed is not None:
        out["timed_step_factors"] = {"forward": timed[0], "backward": timed[1]}
    return out
