"""Row-wise regions: stretches of a graph that compute each row (token) independently.

A transformer's feed-forward block (LayerNorm, matmul, GELU, matmul, residual add) treats every
token on its own, so it can run as two halves over different tokens on two devices, and a pipeline
boundary there sends only hidden-size rows. Whether an op is row-wise depends on which dimension
holds the rows, so each rule here maps the row dimension of an op's output back to the row
dimension of each tensor argument (or ``None``: the argument is used whole, like a weight or a
broadcast bias), and :func:`label_region` propagates one anchor's row dimension through a set of
nodes in both directions. Any op without a rule, any conflict, and any node producing a tuple
ends the region: what this module accepts is exact, never a guess.

The rules are written here once per kind (``ROW_RULES``: pointwise, reshape, matmul, reduction,
...); which kind an op follows, and with which argument positions, is its entry in
:mod:`graphopt.op_table` (``Op.rows``).

Needs: ``meta['val']`` (fake or real tensors) on every node. Used by ``split_ops``.
"""
from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from math import prod

import torch
import torch.fx

from graphopt import op_table

__all__ = ["row_args", "label_region", "Region", "SHAPE_ARG", "ROW_RULES"]


class _ShapeArgOps(Set):
    """Overloads whose argument 1 names the output shape (their row rule says
    ``out_shape_arg=1``): a block rewrites its row entry. Read from the op table live."""

    def __contains__(self, target):
        rule = op_table.row_rule(target)
        return rule is not None and rule.get("out_shape_arg") == 1

    def __iter__(self):
        for op in op_table.entries():
            for overload, rule in op.rows.items():
                target = _resolve(op.name, overload)
                if rule.get("out_shape_arg") == 1 and target is not None:
                    yield target

    def __len__(self):
        return sum(1 for _ in self)


def _resolve(name: str, overload: str):
    ns, _, packet = name.rpartition("::")
    try:
        return getattr(getattr(getattr(torch.ops, ns or "aten"), packet), overload)
    except (AttributeError, RuntimeError):
        return None


SHAPE_ARG = _ShapeArgOps()
# Rule kinds that decide for themselves whether a call draws random numbers.
_CHECKS_RANDOMNESS = {"dropout", "attention"}


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


# --------------------------------------------------------------------------------------------
# Row rules, by the kind an op-table entry names (``Op.rows``). Each maps the output's row dim
# ``d`` to ``{argument index: row dim or None}``, or None when the op is not row-wise along d.
# ``x`` is the value of the first argument (a tensor for every kind but the pointwise ones).
# --------------------------------------------------------------------------------------------
def _rows_pointwise(node, out, x, d):
    return _broadcast(node, out, d)


def _rows_dropout(node, out, x, d, p_arg, train_arg):
    args = node.args
    if len(args) > max(p_arg, train_arg) and args[train_arg] and args[p_arg]:
        return None     # training dropout draws random numbers
    return _broadcast(node, out, d)


def _rows_same_order(node, out, x, d, out_shape_arg=None):
    j = _same_order(x, out, d)
    return None if j is None else {0: j}


def _rows_expand(node, out, x, d, out_shape_arg):
    pos = d - (out.dim() - x.dim())
    if pos < 0 or x.shape[pos] == 1:
        return None     # the rows are made by the expand: nothing upstream carries them
    return {0: pos} if x.shape[pos] == out.shape[d] else None


def _rows_permute(node, out, x, d, dims_arg):
    return {0: _norm_dim(list(node.args[dims_arg])[d], out.dim())}


def _rows_transpose(node, out, x, d, dim_args):
    a, b = (_norm_dim(node.args[i], out.dim()) for i in dim_args)
    return {0: b if d == a else a if d == b else d}


def _rows_t(node, out, x, d):
    return {0: 1 - d} if out.dim() == 2 else {0: d}


def _rows_along_dim(node, out, x, d, dim_arg, default):
    """Ops that work along one dim (softmax over it, a slice of it): other dims pass through."""
    args = node.args
    dim = _norm_dim(args[dim_arg] if len(args) > dim_arg else default, x.dim())
    return None if dim == d else {0: d}


def _rows_select(node, out, x, d, dim_arg):
    dim = _norm_dim(node.args[dim_arg], x.dim())
    return {0: d if d < dim else d + 1}


def _rows_mm(node, out, x, d):
    return {0: 0, 1: None} if d == 0 else None


def _rows_addmm(node, out, x, d):
    bias = x
    if d != 0:
        return None
    return {0: 0 if bias.dim() == 2 and bias.shape[0] == out.shape[0] and
            out.shape[0] > 1 else None, 1: 0, 2: None}


def _rows_leading(node, out, x, d, trailing=None, trailing_shape_arg=None):
    """Rows on any dim but the last few (a norm's normalised shape, linear's features); the
    other tensor arguments (weights, biases) are used whole."""
    n = trailing if trailing is not None else len(list(node.args[trailing_shape_arg]))
    if d >= x.dim() - n:
        return None
    return {i: (d if i == 0 else None) for i, _ in _tensor_args(node)}


def _rows_batched_matmul(node, out, x, d):
    w = _val(node.args[1])
    if not isinstance(w, torch.Tensor) or x.dim() < 2 or d == out.dim() - 1:
        return None
    xpos = d - (out.dim() - x.dim())
    wpos = d - (out.dim() - w.dim())
    if d == out.dim() - 2:
        return {0: x.dim() - 2, 1: None}
    res = {0: xpos if xpos >= 0 and x.shape[xpos] != 1 else None}
    res[1] = wpos if 0 <= wpos < w.dim() - 2 and w.shape[wpos] != 1 else None
    return res if res[0] is not None else None


def _rows_reduce(node, out, x, d, dims_arg, keepdim_arg):
    args = node.args
    dims = args[dims_arg] if len(args) > dims_arg else None
    if dims is None or len(list(dims)) == 0:
        return None
    dims = sorted(_norm_dim(int(v), x.dim()) for v in dims)
    keep = bool(args[keepdim_arg]) if len(args) > keepdim_arg else \
        bool(node.kwargs.get("keepdim", False))
    if keep:
        j = d
    else:
        rest = [j for j in range(x.dim()) if j not in dims]
        j = rest[d] if d < len(rest) else None
    return None if j is None or j in dims else {0: j}


def _rows_attention(node, out, x, d):
    args = node.args
    if d != out.dim() - 2 or node.kwargs.get("is_causal") or \
            (len(args) > 5 and args[5]) or node.kwargs.get("enable_gqa"):
        return None   # a causal mask is anchored at query 0: slicing queries would move it
    if op_table.node_effect(node) != op_table.Effect.PURE:
        return None   # dropout: the blocks would draw other numbers than the whole
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


def _rows_embedding(node, out, x, d):
    return {0: None, 1: d} if d < out.dim() - 1 else None


ROW_RULES = {"pointwise": _rows_pointwise, "dropout": _rows_dropout,
             "same_order": _rows_same_order, "expand": _rows_expand,
             "permute": _rows_permute, "transpose": _rows_transpose, "t": _rows_t,
             "along_dim": _rows_along_dim, "select": _rows_select, "mm": _rows_mm,
             "addmm": _rows_addmm, "leading": _rows_leading,
             "batched_matmul": _rows_batched_matmul, "reduce": _rows_reduce,
             "attention": _rows_attention, "embedding": _rows_embedding}
# Kinds that read no tensor from the first argument: broadcasting handles scalars.
_POINTWISE_KINDS = {"pointwise", "dropout"}
_POINTWISE_RULE = op_table.rows("pointwise")


def row_args(node: torch.fx.Node, d: int) -> dict[int, int | None] | None:
    """For an output whose rows lie on dim ``d``: ``{argument index: row dim or None}``, or
    ``None`` when the op is not row-wise along ``d``.

    The rule is the op table's (``Op.rows``); an overload without one is row-wise only when
    torch tags it pointwise. Random ops are refused (blocks would draw different numbers than
    the whole op) unless their rule checks that the call draws nothing.

    Example:
        >>> row_args(addmm_node, 0)     # addmm(bias, x, w): rows of x, bias and w whole
        {0: None, 1: 0, 2: None}
    """
    out = _val(node)
    if node.op != "call_function" or not isinstance(out, torch.Tensor) or not 0 <= d < out.dim():
        return None
    t = node.target
    rule = op_table.row_rule(t)
    if rule is None and isinstance(t, torch._ops.OpOverload) and torch.Tag.pointwise in t.tags:
        rule = _POINTWISE_RULE
    if op_table.effect(t) == op_table.Effect.RANDOM and \
            (rule is None or rule.kind not in _CHECKS_RANDOMNESS):
        return None
    if rule is None:
        return None
    x = _val(node.args[0]) if node.args else None
    if rule.kind not in _POINTWISE_KINDS and not isinstance(x, torch.Tensor):
        return None
    return ROW_RULES[rule.kind](node, out, x, d, **dict(rule.params))


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
