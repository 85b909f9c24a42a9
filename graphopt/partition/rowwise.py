"""Row-wise regions: stretches of a graph that compute each row (token) independently.

A transformer's feed-forward block (LayerNorm, matmul, GELU, matmul, residual add) treats every
token on its own, so it can run as two halves over different tokens on two devices, and a pipeline
boundary there sends only hidden-size rows. Whether an op is row-wise depends on which dimension
holds the rows, so each rule here maps the row dimension of an op's output back to the row
dimension of each tensor argument (or ``None``: the argument is used whole, like a weight or a
broadcast bias), and :func:`label_region` propagates one anchor's row dimension through a set of
nodes in both directions. Any op without a rule, any conflict, and any node producing a tuple
ends the region: what this module accepts is exact, never a guess.

Needs: ``meta['val']`` (fake or real tensors) on every node. Used by ``split_ops``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch
import torch.fx

__all__ = ["row_args", "label_region", "Region", "SHAPE_ARG"]

aten = torch.ops.aten

# ops whose size argument (position 1) names the output shape: a block rewrites its row entry
SHAPE_ARG = {aten.view.default, aten._unsafe_view.default, aten.reshape.default,
             aten.expand.default}
_SAME_ORDER = {aten.view.default, aten._unsafe_view.default, aten.reshape.default,
               aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
               aten.flatten.using_ints, aten.unflatten.int}
_IDENTITY_LIKE = {aten.clone.default, aten.dropout.default, aten._to_copy.default,
                  aten.alias.default, aten.detach.default, aten.contiguous.default,
                  aten.lift_fresh_copy.default}
_NORMS = {aten.layer_norm.default: 1, aten.rms_norm.default: 1}
_SOFTMAX = {aten._softmax.default, aten.softmax.int, aten._log_softmax.default,
            aten.log_softmax.int}
_REDUCE = {aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default}


def _val(a):
    return a.meta.get("val") if isinstance(a, torch.fx.Node) else None


def _tensor_args(node: torch.fx.Node) -> list[tuple[int, torch.fx.Node]]:
    return [(i, a) for i, a in enumerate(node.args)
            if isinstance(a, torch.fx.Node) and isinstance(_val(a), torch.Tensor)]


def _broadcast(node: torch.fx.Node, out: torch.Tensor, d: int) -> dict[int, int | None] | None:
    """Pointwise with broadcasting: arguments align on the right."""
    res: dict[int, int | None] = {}
    for i, a in _tensor_args(node):
        v = _val(a)
        pos = d - (out.dim() - v.dim())
        if pos < 0 or v.shape[pos] == 1:
            res[i] = None
        elif v.shape[pos] == out.shape[d]:
            res[i] = pos
        else:
            return None
    if any(isinstance(a, (list, tuple)) and any(isinstance(x, torch.fx.Node) for x in a)
           for a in node.args) or any(isinstance(v, torch.fx.Node) for v in node.kwargs.values()):
        return None
    return res


def _same_order(x: torch.Tensor, out: torch.Tensor, d: int) -> int | None:
    """A reshape keeps element order: rows survive if the dims before them hold as many
    elements on both sides and the row dim itself is unchanged."""
    before = prod(out.shape[:d])
    for j in range(x.dim()):
        if prod(x.shape[:j]) == before and x.shape[j] == out.shape[d]:
            return j
    return None


def _norm_dim(dim: int, n: int) -> int:
    return dim + n if dim < 0 else dim


def row_args(node: torch.fx.Node, d: int) -> dict[int, int | None] | None:
    """For an output whose rows lie on dim ``d``: ``{argument index: row dim or None}``, or
    ``None`` when the op is not row-wise along ``d``.

    Example:
        >>> row_args(addmm_node, 0)     # addmm(bias, x, w): rows of x, bias and w whole
        {0: None, 1: 0, 2: None}
    """
    out = _val(node)
    if node.op != "call_function" or not isinstance(out, torch.Tensor) or not 0 <= d < out.dim():
        return None
    t, args = node.target, node.args
    if t == aten.dropout.default:
        if len(args) > 2 and args[2] and args[1]:
            return None     # training dropout draws random numbers
    elif t != aten.scaled_dot_product_attention.default and \
            isinstance(t, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in t.tags:
        return None     # random ops: blocks would draw different numbers than the whole op
    x = _val(args[0]) if args else None
    if t in _IDENTITY_LIKE or (isinstance(t, torch._ops.OpOverload) and
                               torch.Tag.pointwise in t.tags):
        return _broadcast(node, out, d)
    if not isinstance(x, torch.Tensor) and t not in (aten.addmm.default,):
        return None
    if t in _SAME_ORDER:
        j = _same_order(x, out, d)
        return None if j is None else {0: j}
    if t == aten.expand.default:
        pos = d - (out.dim() - x.dim())
        if pos < 0 or x.shape[pos] == 1:
            return None     # the rows are made by the expand: nothing upstream carries them
        return {0: pos} if x.shape[pos] == out.shape[d] else None
    if t == aten.permute.default:
        return {0: _norm_dim(list(args[1])[d], out.dim())}
    if t == aten.transpose.int:
        a, b = _norm_dim(args[1], out.dim()), _norm_dim(args[2], out.dim())
        return {0: b if d == a else a if d == b else d}
    if t == aten.t.default:
        return {0: 1 - d} if out.dim() == 2 else {0: d}
    if t in (aten.slice.Tensor, aten.select.int):
        dim = _norm_dim(args[1] if len(args) > 1 else 0, x.dim())
        if t == aten.select.int:
            j = d if d < dim else d + 1
            return {0: j}
        return None if dim == d else {0: d}
    if t == aten.mm.default:
        return {0: 0, 1: None} if d == 0 else None
    if t == aten.addmm.default:
        bias = _val(args[0])
        if d != 0 or not isinstance(bias, torch.Tensor):
            return None
        return {0: 0 if bias.dim() == 2 and bias.shape[0] == out.shape[0] and
                out.shape[0] > 1 else None, 1: 0, 2: None}
    if t == aten.linear.default:
        if d >= out.dim() - 1:
            return None
        return {i: (d if i == 0 else None) for i, _ in _tensor_args(node)}
    if t in (aten.bmm.default, aten.matmul.default):
        w = _val(args[1])
        if not isinstance(w, torch.Tensor) or x.dim() < 2 or d == out.dim() - 1:
            return None
        xpos = d - (out.dim() - x.dim())
        wpos = d - (out.dim() - w.dim())
        if d == out.dim() - 2:
            return {0: x.dim() - 2, 1: None}
        res = {0: xpos if xpos >= 0 and x.shape[xpos] != 1 else None}
        res[1] = wpos if 0 <= wpos < w.dim() - 2 and w.shape[wpos] != 1 else None
        return res if res[0] is not None else None
    if t in _NORMS:
        nd = len(list(args[_NORMS[t]]))
        if d >= x.dim() - nd:
            return None
        return {i: (d if i == 0 else None) for i, _ in _tensor_args(node)}
    if t in _SOFTMAX:
        return None if _norm_dim(args[1], x.dim()) == d else {0: d}
    if t in _REDUCE:
        dims = args[1] if len(args) > 1 else None
        if dims is None or len(list(dims)) == 0:
            return None
        dims = sorted(_norm_dim(int(v), x.dim()) for v in dims)
        keep = bool(args[2]) if len(args) > 2 else bool(node.kwargs.get("keepdim", False))
        if keep:
            j = d
        else:
            rest = [j for j in range(x.dim()) if j not in dims]
            j = rest[d] if d < len(rest) else None
        return None if j is None or j in dims else {0: j}
    if t == aten.scaled_dot_product_attention.default:
        if d != out.dim() - 2 or node.kwargs.get("is_causal") or \
                (len(args) > 5 and args[5]) or node.kwargs.get("enable_gqa") or \
                (len(args) > 4 and args[4]) or node.kwargs.get("dropout_p"):
            return None   # a causal mask is anchored at query 0: slicing queries would move it
        res = {0: x.dim() - 2, 1: None, 2: None}
        mask = args[3] if len(args) > 3 else None
        if isinstance(mask, torch.fx.Node):
            mv = _val(mask)
            pos = d - (out.dim() - mv.dim())
            res[3] = pos if pos >= 0 and mv.shape[pos] == out.shape[d] and \
                out.shape[d] > 1 else None
        elif "attn_mask" in node.kwargs and node.kwargs["attn_mask"] is not None:
            return None
        return res
    if t == aten.embedding.default:
        return {0: None, 1: d} if d < out.dim() - 1 else None
    return None


def _output_dim(node: torch.fx.Node, known: dict[int, int | None], rows: int) -> int | None:
    """The unique output row dim consistent with the labels already known on its arguments."""
    out = _val(node)
    if not isinstance(out, torch.Tensor):
        return None
    found = []
    for d in range(out.dim()):
        if out.shape[d] != rows:
            continue
        m = row_args(node, d)
        if m is not None and all(m.get(i, "absent") == v for i, v in known.items()):
            found.append(d)
    return found[0] if len(found) == 1 else None


@dataclass
class Region:
    """A labelled region: ``dims[name]`` is the row dim of each node computed per block;
    ``external[name]`` the row dim of each outside tensor sliced per block; ``whole`` the
    outside (or unlabelled inside) tensors every block uses in full."""

    rows: int
    anchor: str = ""
    anchor_dim: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    external: dict[str, int] = field(default_factory=dict)
    whole: set[str] = field(default_factory=set)
    args: dict[str, dict[int, int | None]] = field(default_factory=dict)


def label_region(nodes: list[torch.fx.Node], anchor: torch.fx.Node, dim: int) -> Region | None:
    """Propagate ``anchor``'s row dim ``dim`` through ``nodes`` (a convex set: an interval of a
    topological order). Returns ``None`` if some node touching the rows is not row-wise.

    Every node reached gets a row dim; nodes never reached stay whole (computed once, before
    the blocks). A node is reached from a labelled argument (forward) or from a labelled user
    (backward), so the labels are the unique consistent ones around the anchor.
    """
    inside = {n.name for n in nodes}
    out = _val(anchor)
    if not isinstance(out, torch.Tensor):
        return None
    reg = Region(rows=int(out.shape[dim]), anchor=anchor.name, anchor_dim=dim)
    if reg.rows < 2:
        return None
    reg.dims[anchor.name] = dim
    todo = [anchor]
    while todo:
        n = todo.pop()
        m = row_args(n, reg.dims[n.name])
        if m is None:
            return None
        reg.args[n.name] = m
        for i, a in _tensor_args(n):
            j = m.get(i)
            if a.name in inside:
                if j is None:
                    if a.name in reg.dims:
                        return None
                    reg.whole.add(a.name)
                    continue
                if reg.dims.get(a.name, j) != j or a.name in reg.whole:
                    return None
                if a.name not in reg.dims:
                    reg.dims[a.name] = j
                    todo.append(a)
            elif j is None:
                reg.whole.add(a.name)
            elif reg.external.setdefault(a.name, j) != j:
                return None
        for u in n.users:
            if u.name not in inside or u.name in reg.dims:
                continue
            known = {i: reg.dims[a.name] for i, a in _tensor_args(u) if a.name in reg.dims}
            d = _output_dim(u, known, reg.rows)
            if d is None:
                return None
            reg.dims[u.name] = d
            todo.append(u)
    for name in reg.whole:   # a whole inside node must not depend on the rows
        if name in reg.dims:
            return None
    return reg
