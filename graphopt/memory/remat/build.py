"""The remat problem of a joint forward+backward graph (see :mod:`graphopt.memory.remat.problem`).

Candidates are the forward values the backward part reads, directly or through recomputing
another; stages are the backward nodes that read them. Each candidate gets its kind (a tensor
or a multi-output op's output can be held; a view or a multi-output op is rerun where needed),
its bytes, and its recompute cost from the cost model (roofline time or FLOPs; recomputed
pointwise ops fuse into their consumer, so they are charged their arithmetic only).

Never recomputed: random ops, collectives, ops with side effects or mutation, higher-order ops
and anything that is not an ATen op (or a ``getitem`` of one): those are saved.

*Free* recomputation (:func:`is_free`), the rule PyTorch's min-cut partitioner follows for
fusible ops: a pointwise op is recomputed for nothing, at every budget, when doing so holds less.
Fused, it rides the kernel that reads it and moves no bytes of its own; unfused (on the CPU) it
is one more kernel that reads its inputs and writes its output, which is worth it when those
bytes are at most ``FREE_TRAFFIC_RATIO`` (3) times the bytes it frees: a GELU or a bias add
moves 2x, an add of two saved tensors 3x, while anything with real arithmetic (a matmul, a
norm, a reduction) is never free. Free values are charged 0 in the plan's cost (their FLOPs
still count in ``recompute_flops``), so both solvers prefer them, and every solver starts from
the no-remat plan with them recomputed (:mod:`graphopt.memory.remat.baseline`).

Complexity: O(V + E).
"""
from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx

from graphopt import op_table
from graphopt.cost import OpClass, tensor_bytes
from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.memory.liveness import analyze, profile
from graphopt.memory.remat.problem import _HOLDABLE, RematProblem

__all__ = ["build_problem", "forward_region", "recompute_cost", "is_recomputable", "is_free",
           "FREE_TRAFFIC_RATIO"]

FREE_TRAFFIC_RATIO = 3

_COLLECTIVE_NAMESPACES = {"_c10d_functional", "c10d_functional", "c10d", "_dtensor"}


def _is_tangent(node: torch.fx.Node) -> bool:
    return node.op == "placeholder" and str(node.target).startswith("tangents")


def forward_region(gm: torch.fx.GraphModule) -> set[str]:
    """Names of the forward nodes of a joint graph.

    aot_autograd tags joint-graph nodes ``is_forward``/``is_backward``; as its default
    partitioner does, everything (but tangents) up to the last forward-tagged node is forward.
    Untagged graphs: the longest prefix that depends on no tangent.
    """
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    tagged = [i for i, n in enumerate(nodes) if n.meta.get("partitioner_tag") == "is_forward"]
    if tagged:
        return {n.name for n in nodes[: tagged[-1] + 1] if not _is_tangent(n)}
    tainted: set[torch.fx.Node] = set()
    forward = set()
    for n in nodes:
        if _is_tangent(n) or any(a in tainted for a in n.all_input_nodes):
            tainted.add(n)
            if n.op != "placeholder":
                break
            continue
        forward.add(n.name)
    return forward


def is_recomputable(node: torch.fx.Node) -> bool:
    """Pure ATen ops (and getitem) only: no RNG, collectives, mutation or side effects
    (attention without dropout is pure: :func:`graphopt.op_table.node_effect`)."""
    if node.op != "call_function":
        return False
    target = node.target
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target.namespace in _COLLECTIVE_NAMESPACES:
        return False
    if op_table.node_effect(node) != op_table.Effect.PURE:  # random or mutating
        return False
    # fx calls every op torch tags nondeterministic_seeded impure; one the table has just
    # cleared (attention without dropout) is not.
    if node.is_impure() and op_table.effect(target) != op_table.Effect.RANDOM:
        return False
    return not target.name().startswith("aten::_assert")


def _is_sym(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool))


def _kind(node: torch.fx.Node) -> str:
    if node.target is operator.getitem:
        parent = node.args[0]
        return "view" if _kind(parent) == "view" else "item"
    if isinstance(node.meta.get("val"), (tuple, list)):
        return "view" if _is_view_op(node) else "tuple"
    return "view" if _is_view_op(node) else "tensor"


def _is_view_op(node: torch.fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and op_table.aliases(node.target)


def recompute_cost(info, device: CostModel | str | None = "h100", metric: str = "time",
                   fused_pointwise: bool = True) -> float:
    """The cost of recomputing one node: its forward seconds as the cost model prices them
    (``device``: a :class:`~graphopt.costmodel.CostModel`, a target or a preset key), or FLOPs
    with ``metric="flops"``.

    With ``fused_pointwise`` an elementwise op is charged its arithmetic only: recomputed
    pointwise ops fuse into their consumer, so they add no launch and no memory traffic.
    """
    if info.op_class == OpClass.VIEW:
        return 0.0
    if metric == "flops":
        return float(info.flops)
    cm = as_cost_model(device or "h100")
    if fused_pointwise and info.op_class == OpClass.ELEMENTWISE:
        return info.flops / cm.spec.vector_flops  # no launch, no traffic: it rides its consumer
    return cm.node_seconds(info)


def is_free(info, fused_pointwise: bool) -> bool:
    """Whether recomputing a node (its :class:`~graphopt.graph.NodeInfo`) is free: a pointwise
    op, fused into its reader, or unfused moving at most ``FREE_TRAFFIC_RATIO`` times its bytes.

    Example:
        >>> is_free(graph.info["gelu"], fused_pointwise=False)   # reads 1x, writes 1x
        True
    """
    if info.op_class != OpClass.ELEMENTWISE or not info.out_bytes:
        return False
    return fused_pointwise or info.bytes_read + info.bytes_written <= (
        FREE_TRAFFIC_RATIO * info.out_bytes)


def build_problem(graph, *, device="h100", metric: str = "time", fused_pointwise: bool = True,
                  num_fwd_outputs: int | None = None) -> RematProblem:
    """The remat problem of a joint graph (a :class:`~graphopt.graph.Graph`).

    Args:
        graph: the joint forward+backward graph, in aot_autograd's form.
        device, metric, fused_pointwise: the recompute cost model (:func:`recompute_cost`).
        num_fwd_outputs: how many leading outputs are forward outputs; backward outputs that
            are forward values count as uses at a last stage (the output node).
    """
    device = as_cost_model(device or "h100")
    gm = graph.gm
    forward = forward_region(gm)
    nodes = [n for n in gm.graph.nodes]
    fwd_nodes = [n for n in nodes if n.name in forward]

    def is_candidate(n: torch.fx.Node) -> bool:
        return n.op == "call_function" and n.name in forward and not _is_sym(n)

    stage_nodes = [n for n in nodes if n.op == "call_function" and n.name not in forward
                   and any(is_candidate(a) for a in n.all_input_nodes)]
    out = next(n for n in reversed(nodes) if n.op == "output")
    out_reads = []
    if num_fwd_outputs is not None:
        flat = list(torch.utils._pytree.tree_leaves(out.args))
        out_reads = [a for a in flat[num_fwd_outputs:] if isinstance(a, torch.fx.Node)
                     and is_candidate(a)]
        if out_reads:
            stage_nodes.append(out)
    stage_of = {n: t for t, n in enumerate(stage_nodes)}

    # Candidates: forward values reachable backwards from what the stages read.
    needed: set[torch.fx.Node] = set()
    stack = [a for s in stage_nodes for a in (out_reads if s is out else s.all_input_nodes)
             if is_candidate(a)]
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        stack.extend(a for a in v.all_input_nodes if is_candidate(a))
    cands = [n for n in fwd_nodes if n in needed]
    idx = {n: i for i, n in enumerate(cands)}
    uses: list[list[int]] = [[] for _ in cands]
    for s in stage_nodes:
        reads = out_reads if s is out else s.all_input_nodes
        for a in dict.fromkeys(reads):
            if a in idx:
                uses[idx[a]].append(stage_of[s])
    kind = [_kind(n) for n in cands]
    hold = np.zeros(len(cands), dtype=np.int64)
    work = np.zeros(len(cands), dtype=np.int64)
    cost = np.zeros(len(cands), dtype=np.float64)
    flops = np.zeros(len(cands), dtype=np.int64)
    recomputable = np.zeros(len(cands), dtype=bool)
    free = np.zeros(len(cands), dtype=bool)
    for i, n in enumerate(cands):
        info = graph.info[n.name]
        nbytes = tensor_bytes(n.meta.get("val"))
        hold[i] = nbytes if kind[i] in _HOLDABLE else 0
        work[i] = nbytes if kind[i] in ("tensor", "tuple") else 0
        cost[i] = 0.0 if kind[i] in ("view", "item") else recompute_cost(
            info, device, metric, fused_pointwise)
        flops[i] = info.flops
        recomputable[i] = is_recomputable(n)
        if kind[i] == "tensor" and recomputable[i] and is_free(info, fused_pointwise):
            free[i], cost[i] = True, 0.0
    inputs = [sorted({idx[a] for a in n.all_input_nodes if a in idx}) for n in cands]
    return RematProblem(names=[n.name for n in cands], kind=kind, hold=hold, work=work,
                        cost=cost, flops=flops, recomputable=recomputable, inputs=inputs,
                        uses=[sorted(u) for u in uses],
                        stage_names=[n.name for n in stage_nodes], free=free,
                        base=_backward_bytes(gm, {n.name for n in cands}, stage_nodes))


def _backward_bytes(gm: torch.fx.GraphModule, cands: set[str], stage_nodes) -> np.ndarray:
    """Bytes alive at each stage that no plan changes: gradients accumulated so far and the
    backward pass's temporaries (every buffer but the candidates'), from the liveness of the
    joint graph."""
    lv = analyze(gm)
    other = [b for b in lv.buffers if b.name.split("[")[0] not in cands]
    live = profile(other, len(lv.steps))
    pos = {name: i for i, name in enumerate(lv.steps)}
    return np.array([live[pos.get(n.name, len(lv.steps) - 1)] for n in stage_nodes],
                    dtype=np.int64)
