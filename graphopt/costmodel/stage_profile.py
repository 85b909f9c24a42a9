"""Per-stage costs of one training step of a partitioned graph, as the pipeline runtime runs it.

Needs: a captured training graph (the model plus its loss, at the micro-batch size), a node ->
stage map in pipeline order and a :class:`~graphopt.costmodel.target.CostModel`. Guarantees: for every
stage, what :func:`graphopt.costmodel.simulate.simulate_step` takes (forward and backward
seconds per micro-batch, bytes across each boundary, gradient bytes) and what its memory holds.

Why not :func:`stage_costs`: the runtime lowers a plan with
*relays* (:mod:`graphopt.distributed.lowering`): a value made on stage ``a`` and last used on
stage ``b`` crosses every boundary in between and is held by every stage on the way, and the
model's outputs all travel to the last stage. The boundary bytes here count that, so the p2p
time and the activation memory are those of the run, not of one send per consumer. Backward
seconds use the per-node factors of :func:`graphopt.costmodel.backward.backward_factors`
(two matmuls per weight matmul, none for the data path below the first weight, ...), the same
ones the runtime's own estimate uses.

The optimizer step is priced by :mod:`graphopt.costmodel.optimizer` from ``grad_bytes`` and
``param_tensors``.

Complexity: O(V + E) per call.

Example:
    >>> prof = stage_profile(graph, plan.parts, 2, CostModel(Target.preset("h100")))
    >>> prof.fwd_s, prof.boundary_bytes, prof.grad_bytes
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from graphopt.autodiff import requires_grad_map
from graphopt.costmodel.backward import backward_factors
from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.errors import PlanError
from graphopt.op_table import OpClass

__all__ = ["StageProfile", "stage_profile", "stage_costs", "scaled"]


@dataclass
class StageProfile:
    """What each of ``k`` stages costs per micro-batch and holds (lists indexed by stage)."""

    fwd_s: list[float]
    bwd_s: list[float]
    boundary_bytes: list[int]   # bytes crossing boundary s | s+1 per micro-batch (relays included)
    grad_bytes: list[int]       # trainable weight bytes (= gradient bytes) each stage holds
    buffer_bytes: list[int]     # buffers and constants each stage holds (no gradient)
    act_bytes: list[int]        # saved activations + received tensors, per micro-batch in flight
    saved_bytes: list[int]      # the saved-activation part of act_bytes (what remat can shrink)
    param_tensors: list[int]    # trainable tensors per stage (the optimizer's per-tensor ops)
    fwd_flops: list[int]
    # trainable weights several stages use (a tied embedding and LM head): (bytes, stages); the
    # runtime sums their gradients over the ranks holding those stages before the optimizer
    shared: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    @property
    def k(self) -> int:
        return len(self.fwd_s)


def _held_params(graph, part: dict[str, int]) -> dict[str, set[int]]:
    """Stages that use each parameter-like node, directly or through derived constants."""
    users: dict[str, set[int]] = {}
    consumers: dict[str, list[str]] = {}
    for src, dst, _ in graph.edges():
        consumers.setdefault(src, []).append(dst)
    for info in reversed(graph.nodes()):        # consumers come later in topological order
        if not info.is_param:
            continue
        got: set[int] = set()
        for c in consumers.get(info.name, []):
            if graph[c].is_param:
                got |= users.get(c, set())
            else:
                got.add(part[c])
        users[info.name] = got
    return users


def stage_profile(graph, part: dict[str, int], k: int, cost_model: CostModel) -> StageProfile:
    """Stage costs of ``graph`` split by ``part`` (node name -> stage); see the module docstring.
    ``cost_model`` is a :class:`~graphopt.costmodel.target.CostModel` (or what
    :func:`~graphopt.costmodel.target.as_cost_model` takes)."""
    cm = as_cost_model(cost_model)
    missing = [i.name for i in graph.nodes() if i.name not in part]
    if missing:
        raise PlanError(f"the plan gives no stage for node {missing[0]!r} of {graph.name}")
    factors = dict(zip((n.name for n in graph.fx_nodes()), backward_factors(graph)))
    grad = requires_grad_map(graph)
    fwd, bwd, flops = [0.0] * k, [0.0] * k, [0] * k
    saved = [0] * k
    for info in graph.nodes():
        if info.is_param or info.op != "call_function":
            continue
        s = part[info.name]
        if not 0 <= s < k:
            raise PlanError(f"node {info.name} is on stage {s}, not one of 0..{k - 1}")
        t = cm.node_seconds(info)
        fwd[s] += t
        bwd[s] += cm.backward_seconds(info, float(factors.get(info.name, 0.0)))
        flops[s] += int(info.flops)
        if info.op_class != OpClass.VIEW:
            saved[s] += int(info.out_bytes)
    # Relays: a value lives on every boundary between its producer and its last consumer.
    last_use: dict[str, int] = {}
    for src, dst, _ in graph.edges():
        if graph[src].is_param or graph[dst].is_param:
            continue
        last_use[src] = max(last_use.get(src, -1), part[dst])
    for name in graph.output_names():             # outputs leave from the last stage
        if name in graph.info and not graph[name].is_param:
            last_use[name] = k - 1
    boundary = [0] * max(k - 1, 0)
    for name, to in last_use.items():
        info = graph[name]
        start = 0 if info.op == "placeholder" else part[name]   # root inputs enter stage 0
        for b in range(start, to):
            boundary[b] += int(info.out_bytes)
    weights, buffers, tensors = [0] * k, [0] * k, [0] * k
    shared = []
    for name, stages in _held_params(graph, part).items():
        info = graph[name]
        if info.op != "get_attr":
            continue
        if len(stages) > 1 and grad.get(name, False):
            shared.append((int(info.out_bytes), tuple(sorted(stages))))
        for s in stages:
            if grad.get(name, False):
                weights[s] += int(info.out_bytes)
                tensors[s] += 1
            else:
                buffers[s] += int(info.out_bytes)
    acts = [saved[s] + (boundary[s - 1] if s > 0 else 0) for s in range(k)]
    return StageProfile(fwd_s=fwd, bwd_s=bwd, boundary_bytes=boundary, grad_bytes=weights,
                        buffer_bytes=buffers, act_bytes=acts, saved_bytes=saved,
                        param_tensors=tensors,
                        fwd_flops=flops, shared=shared)


def scaled(prof: StageProfile, fwd: float = 1.0, bwd: float = 1.0) -> StageProfile:
    """``prof`` with its forward seconds times ``fwd`` and backward times ``bwd`` (a timed step)."""
    if fwd == 1.0 and bwd == 1.0:
        return prof
    return dataclasses.replace(prof, fwd_s=[f * fwd for f in prof.fwd_s],
                               bwd_s=[b * bwd for b in prof.bwd_s])


@dataclass
class StageCosts:
    """Per-stage inputs of the simulator from a graph whose nodes carry ``part``."""

    fwd_s: list[float]
    bwd_s: list[float]
    boundary_bytes: list[int]      # bytes stage s+1 receives from earlier stages, per micro-batch
    param_bytes: list[int]         # parameters (and buffers) each stage holds
    act_bytes: list[int]           # activations a stage keeps from forward for backward


def stage_costs(graph, cost_model, k: int, backward_factor: float = 2.0) -> StageCosts:
    """Stage times and bytes of a graph whose nodes carry ``part`` (a pipeline plan applied).

    A backward costs ``backward_factor`` times its forward (two matmuls per forward matmul: the
    input and the weight gradient): a quick profile without the relays; :func:`stage_profile`
    is the runtime's.
    """
    cm = as_cost_model(cost_model)
    fwd, act = [0.0] * k, [0] * k
    for info in graph.nodes():
        if info.is_param:
            continue
        if info.part is None or not 0 <= info.part < k:
            raise PlanError(f"node {info.name} has stage {info.part}, not one of 0..{k - 1}: apply "
                            "a pipeline plan first")
        fwd[info.part] += cm.node_seconds(info)
        if info.op == "call_function" and info.op_class != OpClass.VIEW:
            act[info.part] += info.out_bytes
    held: list[set[str]] = [set() for _ in range(k)]        # parameters each stage uses
    received: list[set[str]] = [set() for _ in range(k)]    # values it gets from earlier stages
    for src, dst, _ in graph.edges():
        s, d = graph[src], graph[dst]
        if d.is_param:
            continue
        if s.is_param:
            held[d.part].add(src)
        elif s.part < d.part:
            received[d.part].add(src)
    params = [sum(graph[n].out_bytes for n in h) for h in held]
    boundary = [sum(graph[n].out_bytes for n in received[s + 1]) for s in range(k - 1)]
    return StageCosts(fwd_s=fwd, bwd_s=[backward_factor * f for f in fwd], boundary_bytes=boundary,
                      param_bytes=params, act_bytes=act)
