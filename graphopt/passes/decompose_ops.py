"""Lower composite ops (layer norm, softmax, GELU, batch norm and their backwards) to the
pointwise and reduction ATen ops fusion understands.

Needs: nodes carrying ``meta['val']`` (fake or real tensors). Guarantees: the graph computes the
same values; every node whose target is in :data:`FUSION_DECOMPOSITIONS` (or is one of the
composite-implicit norms in :data:`COMPOSITES`) is replaced by its decomposition, inlined in
place, with ``meta['val']`` on every new node; multi-output ops keep their ``getitem`` users'
values. Nodes with symbolic shapes are left alone. Idempotent: a second run finds nothing.

The decompositions are PyTorch's own (``torch._decomp``), except variance: ``var``/``var_mean``
decompose here into the two-pass form ``mean = sum(x) / n; var = sum((x - mean)**2) / (n - c)``,
which keeps every reduction a plain ``sum`` and is as accurate as Welford in float32 for the row
lengths models use.

Each distinct (op, argument shapes) is traced once with ``make_fx`` and reused. O(V) plus one
trace per distinct composite signature.
"""
from __future__ import annotations

import math

import torch
import torch.fx
from torch._decomp import get_decompositions, register_decomposition

from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["decompose_ops", "FUSION_DECOMPOSITIONS", "COMPOSITES"]

aten = torch.ops.aten

_FROM_TORCH = [
    aten.native_layer_norm, aten.native_layer_norm_backward, aten._fused_rms_norm,
    aten._fused_rms_norm_backward, aten.native_group_norm, aten.native_group_norm_backward,
    aten.gelu, aten.gelu_backward, aten._softmax, aten._log_softmax, aten._softmax_backward_data,
    aten._log_softmax_backward_data, aten.logsumexp, aten.tanh_backward, aten.sigmoid_backward,
    aten.threshold_backward, aten.silu, aten.silu_backward, aten.hardtanh,
    aten.hardtanh_backward, aten.leaky_relu, aten.leaky_relu_backward, aten.elu,
    aten.elu_backward, aten.hardswish, aten.hardsigmoid, aten.mish, aten.softplus,
    aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional,
    aten._native_batch_norm_legit, aten.native_batch_norm, aten.native_batch_norm_backward,
    aten.addcmul, aten.addcdiv, aten.lerp, aten.masked_fill, aten.std,
]

_TWO_PASS: dict = {}


def _dims(x: torch.Tensor, dim) -> list[int]:
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return list(range(x.dim()))
    dim = [dim] if isinstance(dim, int) else dim
    return sorted({d % max(x.dim(), 1) for d in dim})


def _var_mean(x, dims, correction, keepdim):
    n = math.prod(x.shape[d] for d in dims)
    mean = aten.sum.dim_IntList(x, dims, True) / n
    dev = x - mean
    corr = 1 if correction is None else correction
    var = aten.sum.dim_IntList(dev * dev, dims, keepdim) / max(n - corr, 0)
    if not keepdim:
        mean = aten.squeeze.dims(mean, dims)
    return var, mean


@register_decomposition([aten.var_mean.correction], registry=_TWO_PASS)
def _var_mean_correction(x, dim=None, *, correction=None, keepdim=False):
    return _var_mean(x, _dims(x, dim), correction, keepdim)


@register_decomposition([aten.var.correction], registry=_TWO_PASS)
def _var_correction(x, dim=None, *, correction=None, keepdim=False):
    return _var_mean(x, _dims(x, dim), correction, keepdim)[0]


@register_decomposition([aten.var_mean.dim], registry=_TWO_PASS)
def _var_mean_dim(x, dim=None, unbiased=True, keepdim=False):
    return _var_mean(x, _dims(x, dim), int(unbiased), keepdim)


@register_decomposition([aten.var.dim], registry=_TWO_PASS)
def _var_dim(x, dim=None, unbiased=True, keepdim=False):
    return _var_mean(x, _dims(x, dim), int(unbiased), keepdim)[0]


@register_decomposition([aten.mean.dim], registry=_TWO_PASS)
def _mean_dim(x, dim=None, keepdim=False, *, dtype=None):
    if dtype is not None or not x.dtype.is_floating_point:
        return NotImplemented
    dims = _dims(x, dim)
    return aten.sum.dim_IntList(x, dims, keepdim) / math.prod(x.shape[d] for d in dims)


@register_decomposition([aten.mean.default], registry=_TWO_PASS)
def _mean_all(x, *, dtype=None):
    if dtype is not None or not x.dtype.is_floating_point:
        return NotImplemented
    return aten.sum.dim_IntList(x, list(range(x.dim())), False) / max(x.numel(), 1)


#: The table fusion lowers with: torch's decompositions plus the two-pass variance above.
FUSION_DECOMPOSITIONS = {**get_decompositions(_FROM_TORCH), **_TWO_PASS}

#: Composite-implicit ops captures keep whole (``torch.export`` with an empty table); tracing
#: them once lowers them to the ops above.
COMPOSITES = {aten.layer_norm.default, aten.softmax.int, aten.log_softmax.int,
              aten.rms_norm.default, aten.group_norm.default, aten.batch_norm.default,
              aten.instance_norm.default}


def _wants(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and (node.target in FUSION_DECOMPOSITIONS
                                          or node.target in COMPOSITES)


def _static(val) -> bool:
    if isinstance(val, torch.Tensor):
        return all(isinstance(s, int) for s in (*val.shape, *val.stride()))
    if isinstance(val, (tuple, list)):
        return all(_static(v) for v in val)
    return val is None or isinstance(val, (int, float, bool))


def _signature(node: torch.fx.Node, inputs: list[torch.fx.Node]) -> tuple:
    def norm(a):
        if isinstance(a, torch.fx.Node):
            v = a.meta["val"]
            return ("T", tuple(v.shape), tuple(v.stride()), str(v.dtype), str(v.device))
        if isinstance(a, (list, tuple)):
            return tuple(norm(x) for x in a)
        return repr(a)
    return (str(node.target), norm(list(node.args)), norm(sorted(node.kwargs.items())))


def _trace(node: torch.fx.Node, inputs: list[torch.fx.Node]) -> torch.fx.GraphModule:
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    vals = [i.meta["val"] for i in inputs]
    mode = detect_fake_mode(vals)
    if mode is None:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        vals = [mode.from_tensor(v) for v in vals]

    def fn(*tensors):
        env = dict(zip(inputs, tensors))
        args = torch.fx.node.map_arg(node.args, lambda n: env[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
        return node.target(*args, **kwargs)

    with mode:
        return make_fx(fn, decomposition_table=FUSION_DECOMPOSITIONS)(*vals)


def _inline(gm: torch.fx.GraphModule, node: torch.fx.Node, sub: torch.fx.GraphModule,
            inputs: list[torch.fx.Node]) -> list[torch.fx.Node]:
    """Splice ``sub`` in place of ``node``; returns the nodes added."""
    graph = gm.graph
    env: dict[torch.fx.Node, object] = {}
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    env.update(zip(placeholders, inputs))
    added: list[torch.fx.Node] = []
    result = None
    with graph.inserting_before(node):
        for n in sub.graph.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                result = torch.fx.node.map_arg(n.args[0], lambda x: env[x])
                continue
            if n.op == "get_attr":
                value = getattr(sub, n.target)
                name = f"_decomposed_const_{len(gm.graph.nodes)}_{len(added)}"
                gm.register_buffer(name, value) if isinstance(value, torch.Tensor) else \
                    setattr(gm, name, value)
                new = graph.get_attr(name)
                new.meta.update(n.meta)
            else:
                new = graph.node_copy(n, lambda x: env[x])
            env[n] = new
            added.append(new)
    if isinstance(node.meta.get("val"), (tuple, list)):
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        for user in list(node.users):
            if user.op == "call_function" and getattr(user.target, "__name__", "") == "getitem":
                user.replace_all_uses_with(outs[user.args[1]])
                graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)
    return added


@register_pass("decompose_ops")
def decompose_ops(graph: Graph, ctx: PassContext) -> PassResult:
    gm = graph.gm
    cache: dict[tuple, torch.fx.GraphModule] = {}
    counts: dict[str, int] = {}
    parts: dict[str, int] = {}  # new node -> the part of the op it came from
    for node in list(gm.graph.nodes):
        if not _wants(node):
            continue
        inputs = list(dict.fromkeys(node.all_input_nodes))
        val = node.meta.get("val")
        if not isinstance(val, (torch.Tensor, tuple, list)) or not _static(val) or \
                not all(_static(i.meta.get("val")) for i in inputs):
            continue
        if any(not isinstance(i.meta.get("val"), torch.Tensor) for i in inputs):
            continue
        key = _signature(node, inputs)
        if key not in cache:
            cache[key] = _trace(node, inputs)
        part = graph.info[node.name].part if node.name in graph.info else None
        for new in _inline(gm, node, cache[key], inputs):
            if part is not None:
                parts[new.name] = part
        counts[str(node.target)] = counts.get(str(node.target), 0) + 1
    if not counts:
        return PassResult(graph, False, {"decomposed": 0})
    gm.graph.lint()
    gm.recompile()
    graph.reannotate()
    for name, part in parts.items():
        if name in graph.info:
            graph.info[name].part = part
    return PassResult(graph, True, {"decomposed": sum(counts.values()), "ops": counts})
