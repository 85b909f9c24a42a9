"""Split heavy matmuls and convolutions so a pipeline stage boundary can land inside them.

A partition of ``k`` stages is balanced within ``imbalance`` only if, for every ideal stage boundary
(``j/k`` of the FLOPs along the topological order, or the devices' speed shares), some node
boundary lies close enough to it. One large node -- GPT-2's LM head holds about 30% of the model,
a BERT FFN matmul 3% -- can straddle an ideal boundary with no node boundary near it, and then no
plan within the tolerance exists. This pass cuts exactly those nodes, at the points the boundaries
need, into pieces that compute the same function:

* ``mm``/``addmm``/``bmm``/``matmul``/``linear``: row blocks of the first operand
  (``slice`` rows, one op per block, ``cat`` on the output's row dimension). The weight is used
  whole by every block, so parameters stay parameters (never sent); a stage boundary between two
  blocks sends only a row block of the input and the earlier blocks' outputs.
* ``scaled_dot_product_attention``: head blocks of ``q``, ``k``, ``v`` (and a per-head mask),
  ``cat`` on the head dimension; exact for causal and masked attention alike.
* ``convolution``/``conv1d``/``conv2d``/``conv3d`` (not transposed, ``groups == 1``):
  output-channel blocks (``slice`` the weight and bias, ``cat`` on dim 1); the weight slices are
  views of parameters, placed next to their consumer.

Everything else stays whole. Nothing is split when some contiguous split of the graph order
already keeps every stage within the tolerance (greedy packing decides it in O(V)): cutting a
node costs communication, so it is done only for balance. Otherwise a node is split only when it
straddles an ideal boundary and both of its ends lie farther than ``imbalance * (total / k) / 2``
from it (two boundaries each within that distance keep a stage within the tolerance), into one
more piece than the number of boundaries it straddles, cut at whole rows/heads/channels. The
``cat`` reproduces the original node's memory layout (later ``view`` ops rely on it).

Runs only with ``ctx.options["split_ops"]`` true (CLI ``--split-ops``): splitting buys FLOPs balance
with communication, which on real models usually costs more step time than the imbalance did.

Needs: ``meta['val']`` on every node (fake or real tensors) and ``ctx.options["k"]``; reads the same
``imbalance`` and ``speeds`` options as ``partition_graph``. Guarantees: the graph computes the
same outputs; new nodes carry ``meta['val']`` (the op run on its inputs' values under the graph's
fake mode) and ``info.extra["split_of"]``; ``ctx.artifacts["split_ops"]`` maps each split node to
its pieces (``partition_graph`` lists them in the plan's notes). Idempotent: after a run, no node straddles a boundary farther than the tolerance, so a
second run splits nothing. O(V) plus O(pieces) fake-tensor ops.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx
import torch.utils._pytree as pytree

from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.passes.infra import PassContext, PassResult, register_pass

__all__ = ["split_ops", "SPLITTABLE", "split_points"]

aten = torch.ops.aten

# op -> index of the operand whose rows are split (convolution: output channels instead)
SPLITTABLE = {aten.mm.default: 0, aten.addmm.default: 1, aten.bmm.default: 0,
              aten.matmul.default: 0, aten.linear.default: 0, aten.convolution.default: None,
              aten.conv1d.default: None, aten.conv2d.default: None, aten.conv3d.default: None,
              aten.scaled_dot_product_attention.default: None}
_CONV = (aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)


def _val(a):
    return a.meta.get("val") if isinstance(a, torch.fx.Node) else a


def _plan(node: torch.fx.Node) -> tuple[int, dict[int, int], int] | None:
    """(rows, {argument index: dim to slice}, output dim to cat on) if the node can split."""
    if node.op != "call_function" or node.target not in SPLITTABLE:
        return None
    vals = [_val(a) for a in node.args]
    if not all(isinstance(v, torch.Tensor) for v in vals[:2]):
        return None
    out = node.meta.get("val")
    if not isinstance(out, torch.Tensor):
        return None
    if node.target in _CONV:
        if node.target == aten.convolution.default:
            transposed, groups = node.args[6], node.args[8]
        else:
            transposed, groups = False, node.args[6] if len(node.args) > 6 else \
                node.kwargs.get("groups", 1)
        if transposed or groups != 1 or "bias" in node.kwargs:
            return None
        sl = {1: 0, 2: 0} if len(vals) > 2 and vals[2] is not None else {1: 0}
        return int(vals[1].shape[0]), sl, 1
    if node.target == aten.scaled_dot_product_attention.default:
        q, k, v = vals[:3]
        mask = vals[3] if len(vals) > 3 else node.kwargs.get("attn_mask")
        if q.dim() != 4 or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1] or \
                node.kwargs.get("enable_gqa") or (len(vals) > 7 and vals[7]):
            return None
        sl = {0: 1, 1: 1, 2: 1}
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] != 1:
            if len(vals) <= 3:
                return None
            sl[3] = 1
        return int(q.shape[1]), sl, 1
    idx = SPLITTABLE[node.target]
    x = vals[idx]
    if x.dim() < 2 or (node.target == aten.matmul.default and vals[1].dim() < 2):
        return None
    if node.target == aten.addmm.default and isinstance(vals[0], torch.Tensor) and \
            vals[0].dim() == 2 and vals[0].shape[0] != 1:
        return None   # a full-matrix bias would need slicing too; rare, so left whole
    return int(x.shape[-2]), {idx: x.dim() - 2}, out.dim() - 2


def _fits(flops: list[int], k: int, cap: float) -> bool:
    """Whether the order splits into ``k`` contiguous runs of at most ``cap`` FLOPs each.

    Greedy packing (close a run only when the next node would overflow it) uses the fewest runs,
    so it decides this exactly in O(V)."""
    runs, acc = 1, 0.0
    for f in flops:
        if f > cap:
            return False
        if acc + f > cap:
            runs, acc = runs + 1, 0.0
        acc += f
    return runs <= k


def split_points(graph: Graph, k: int, eps: float, speeds=None) -> dict[str, list[int]]:
    """Row (or channel) indices at which to cut each node that blocks a balanced plan.

    Example:
        >>> split_points(graph, k=4, eps=0.03)
        {'linear': [33, 71]}
    """
    moving = [i for i in graph.nodes() if not i.is_param]
    total = float(sum(i.flops for i in moving))
    if total <= 0 or k < 2:
        return {}
    sp = [float(s) for s in (speeds or [1.0] * k)]
    if speeds is None and _fits([i.flops for i in moving], k, (1.0 + eps) * total / k):
        return {}
    acc, targets = 0.0, []
    for s in sp[:-1]:
        acc += s
        targets.append(total * acc / sum(sp))
    tol = eps * (total / k) * min(sp) / (sum(sp) / k) / 2
    fx = {n.name: n for n in graph.fx_nodes()}
    out: dict[str, list[int]] = {}
    before = 0.0
    for info in moving:
        after = before + info.flops
        inside = [t for t in targets if before < t < after and min(t - before, after - t) > tol]
        how = _plan(fx[info.name]) if inside else None
        if how is not None and how[0] >= 2:
            rows = how[0]
            cuts = sorted({min(max(round((t - before) / info.flops * rows), 1), rows - 1)
                           for t in inside})
            out[info.name] = cuts
        before = after
    return out


def _fake_mode(vals):
    mode = torch._guards.detect_fake_mode(vals)
    return mode if mode is not None else contextlib.nullcontext()


def _emit(g: torch.fx.Graph, target, args, meta: dict, mode, kwargs=None) -> torch.fx.Node:
    node = g.call_function(target, tuple(args), dict(kwargs or {}))
    with mode:
        node.meta["val"] = target(*pytree.tree_map(_val, list(args)),
                                  **pytree.tree_map(_val, dict(kwargs or {})))
    for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
        if key in meta:
            node.meta[key] = meta[key]
    return node


def _cat_like(g: torch.fx.Graph, pieces, dim: int, meta: dict, mode) -> torch.fx.Node:
    """``cat`` whose result has the original node's strides (later ``view`` ops rely on them:
    attention returns a transposed layout). Cats in the original's memory order, permutes back."""
    orig = meta["val"]
    order = sorted(range(orig.dim()), key=lambda i: (-orig.stride(i), i))
    if order == list(range(orig.dim())):
        return _emit(g, aten.cat.default, (pieces, dim), meta, mode)
    inv = [order.index(i) for i in range(orig.dim())]
    perm = [_emit(g, aten.permute.default, (p, order), meta, mode) for p in pieces]
    cat = _emit(g, aten.cat.default, (perm, order.index(dim)), meta, mode)
    return _emit(g, aten.permute.default, (cat, inv), meta, mode)


def _split_node(graph: Graph, node: torch.fx.Node, cuts: list[int]) -> list[str]:
    """Replace ``node`` by slices, one op per block and a ``cat``; returns the new names."""
    rows, sl, cat_dim = _plan(node)
    spans = list(zip([0] + cuts, cuts + [rows]))
    g = graph.gm.graph
    vals = [_val(a) for a in node.args]
    mode = _fake_mode([v for v in vals if isinstance(v, torch.Tensor)])
    with g.inserting_before(node):
        # every slice first, so a boundary between blocks sends row blocks, not the whole input
        sliced = {i: [_emit(g, aten.slice.Tensor, (node.args[i], dim, lo, hi), node.meta, mode)
                      for lo, hi in spans] for i, dim in sl.items()}
        pieces = []
        for b in range(len(spans)):
            args = list(node.args)
            for i in sl:
                args[i] = sliced[i][b]
            pieces.append(_emit(g, node.target, args, node.meta, mode, node.kwargs))
        cat = _cat_like(g, pieces, cat_dim, node.meta, mode)
    node.replace_all_uses_with(cat)
    g.erase_node(node)
    return [n.name for ns in sliced.values() for n in ns] + [n.name for n in pieces + [cat]]


@register_pass("split_ops")
def split_ops(graph: Graph, ctx: PassContext) -> PassResult:
    if not ctx.options.get("split_ops", False):
        # Opt-in: on GPT-2/BERT/ViT/ResNet, cutting nodes for FLOPs balance raises the bytes sent
        # and can lengthen the slowest stage (bench/RESULTS.md), so plans stay unsplit by default.
        return PassResult(graph, False, {"split": 0, "enabled": False})
    if "k" not in ctx.options:
        raise PlanError("split_ops needs options['k'], the number of parts")
    k = int(ctx.options["k"])
    eps = float(ctx.options.get("imbalance") if ctx.options.get("imbalance") is not None
                else 0.03)
    points = split_points(graph, k, eps, ctx.options.get("speeds"))
    fx = {n.name: n for n in graph.fx_nodes()}
    done: dict[str, list[str]] = {}
    for name, cuts in points.items():
        done[name] = _split_node(graph, fx[name], cuts)
    if not done:
        return PassResult(graph, False, {"split": 0})
    graph.gm.graph.lint()
    graph.gm.recompile()
    graph.reannotate()
    for orig, new in done.items():
        for n in new:
            graph.info[n].extra["split_of"] = orig
    ctx.artifacts.setdefault("split_ops", {}).update(done)
    pieces = {o: sum(1 for n in new if graph.info[n].flops > 0) for o, new in done.items()}
    return PassResult(graph, True, {"split": len(done), "pieces": sum(pieces.values())})
