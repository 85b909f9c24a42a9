"""Per-stage costs of one training step of a partitioned graph, as the pipeline runtime runs it.

Needs: a captured training graph (the model plus its loss, at the micro-batch size), a node ->
stage map in pipeline order and a :class:`~graphopt.cost.DeviceSpec`. Guarantees: for every
stage, what :func:`graphopt.distributed.simulate.simulate_step` takes (forward and backward
seconds per micro-batch, bytes across each boundary, gradient bytes) and what its memory holds.

Why not :func:`graphopt.distributed.simulate.stage_costs`: the runtime lowers a plan with
*relays* (:mod:`graphopt.distributed.lowering`): a value made on stage ``a`` and last used on
stage ``b`` crosses every boundary in between and is held by every stage on the way, and the
model's outputs all travel to the last stage. The boundary bytes here count that, so the p2p
time and the activation memory are those of the run, not of one send per consumer. Backward
seconds use the per-node factors of :func:`graphopt.distributed.train_cost.backward_factors`
(two matmuls per weight matmul, none for the data path below the first weight, ...), the same
ones the runtime's own estimate uses.

The optimizer step is priced too (it is inside the measured step): per trainable tensor a few
ops at the per-op overhead plus its bytes at the memory bandwidth (``torch.optim`` with
``foreach=False``, as the runtime builds it).

Complexity: O(V + E) per call.

Example:
    >>> prof = stage_profile(graph, plan.parts, 2, spec)
    >>> prof.fwd_s, prof.boundary_bytes, prof.grad_bytes
"""
from __future__ import annotations

from dataclasses import dataclass, field

from graphopt.cost import DeviceSpec, OpClass
from graphopt.device_spec import node_seconds
from graphopt.errors import PlanError

__all__ = ["StageProfile", "stage_profile", "optimizer_seconds", "OPTIMIZER_COST",
           "on_host_cpu"]

# (tensor ops per trainable tensor, bytes moved per parameter byte) of one optimizer step:
# SGD ``p.add_(g, alpha=-lr)`` reads p and g and writes p; AdamW's single-tensor update makes
# about seven passes over p, g and its two moments.
OPTIMIZER_COST = {"sgd": (1, 3.0), "sgd-momentum": (3, 7.0), "adamw": (7, 16.0)}


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


def stage_profile(graph, part: dict[str, int], k: int, spec: DeviceSpec) -> StageProfile:
    """Stage costs of ``graph`` split by ``part`` (node name -> stage); see the module docstring."""
    from graphopt.distributed.lowering import requires_grad_map
    from graphopt.distributed.train_cost import backward_factors
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
        t = node_seconds(info, spec)
        fwd[s] += t
        bwd[s] += t * float(factors.get(info.name, 0.0))
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


def optimizer_seconds(prof: StageProfile, stages: list[int], spec: DeviceSpec,
                      optimizer: str) -> float:
    """One optimizer step over the trainable weights of ``stages`` (those of one rank)."""
    if optimizer not in OPTIMIZER_COST:
        raise PlanError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_COST)}")
    ops, per_byte = OPTIMIZER_COST[optimizer]
    nbytes = sum(prof.grad_bytes[s] for s in stages)
    count = sum(prof.param_tensors[s] for s in stages)
    return count * ops * spec.launch_seconds + per_byte * nbytes / spec.bandwidth


def on_host_cpu(spec: DeviceSpec, device: str) -> bool:
    """Whether the ranks are processes of this CPU host (``spec`` describes a CPU, or the
    device is the ``cpu`` preset): they share its memory and its cores, so no core is left to
    reduce gradients beside the backward."""
    return spec.device_type == "cpu" or device == "cpu"
