"""Row-wise regions: stretches of a graph that compute each row (token) independently.

A transformer's feed-forward block (LayerNorm, matmul, GELU, matmul, residual add) treats every
token on its own, so it can run as two halves over different tokens on two devices, and a pipeline
boundary there sends only hidden-size rows. Whether an op is row-wise depends on which dimension
holds the rows, so each rule here maps the row dimension of an op's output back to the row
dimension of each tensor argument (or ``None``: the argument is used whole, like a weight or a
broadcast bias), and :func:`label_region` propagates one anchor's row dimension through a set of
nodes in both directions. Any op without a rule, any conflict, and any node producing a tuple
ends the region: what this module accepts is exact, never a guess.

Attention under a causal mask is row-wise too, in a weaker sense: query rows ``lo..hi`` read the
keys and values of rows ``0..hi`` only (no query sees a later key), so a whole decoder layer runs
as token blocks where each block also reads the earlier blocks' keys and values
(:func:`prefix_args`). The mask is ``is_causal=True`` (each block then gets an explicit mask,
since the flag's is anchored at query 0) or a constant whose causality is checked on its value.

The rules are written here once per kind (``ROW_RULES``: pointwise, reshape, matmul, reduction,
...); which kind an op follows, and with which argument positions, is its entry in
:mod:`graphopt.op_table` (``Op.rows``).

Needs: ``meta['val']`` (fake or real tensors) on every node. Used by ``split_ops``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import torch
import torch.fx
from torch._subclasses.fake_tensor import unset_fake_temporarily

from graphopt import op_table
from graphopt.cost import op_class
from graphopt.partition.node_args import SHAPE_ARG, get_arg, node_value, rows_shape, set_arg, tensor_args

__all__ = ["row_args", "get_arg", "set_arg", "prefix_args", "prefix_chain", "prefix_bytes",
           "causal_mask", "is_causal_flag", "constant_value", "label_region", "Region",
           "SHAPE_ARG", "ROW_RULES"]


# Rule kinds that decide for themselves whether a call draws random numbers.
_CHECKS_RANDOMNESS = {"dropout", "attention"}
_val = node_value


def _broadcast(node: torch.fx.Node, out: torch.Tensor, d: int) -> dict[int, int | None] | None:
    """Pointwise with broadcasting: arguments align on the right."""
    res: dict[int, int | None] = {}
    for i, a in tensor_args(node):
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
    return {i: (d if i == 0 else None) for i, _ in tensor_args(node)}


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


def is_causal_flag(node: torch.fx.Node) -> bool:
    """Whether an attention call asks for its causal mask by flag (``is_causal=True``)."""
    return bool(node.kwargs.get("is_causal") or (len(node.args) > 5 and node.args[5]))


def _rows_attention(node, out, x, d):
    args = node.args
    if d != out.dim() - 2 or node.kwargs.get("enable_gqa"):
        return None
    if op_table.node_effect(node) != op_table.Effect.PURE:
        return None   # dropout: the blocks would draw other numbers than the whole
    mask = args[3] if len(args) > 3 else None
    if mask is None and node.kwargs.get("attn_mask") is not None:
        return None
    if is_causal_flag(node) and mask is not None:
        return None   # torch refuses both; nothing to cut
    # is_causal's mask is anchored at query 0; blocks get an explicit one (split_ops)
    causal = is_causal_flag(node) or \
        (causal_mask(mask) if isinstance(mask, torch.fx.Node) else False)
    if causal:        # keys and values by rows too: a block reads rows 0..hi (prefix_args)
        k, v = _val(args[1]), _val(args[2])
        if not (isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)) or \
                k.shape[-2] != out.shape[d] or v.shape[-2] != out.shape[d]:
            return None
        res = {0: x.dim() - 2, 1: k.dim() - 2, 2: v.dim() - 2}
    else:
        res = {0: x.dim() - 2, 1: None, 2: None}
    if isinstance(mask, torch.fx.Node):
        mv = _val(mask)
        pos = d - (out.dim() - mv.dim())
        res[3] = pos if pos >= 0 and mv.shape[pos] == out.shape[d] and \
            out.shape[d] > 1 else None
    return res


def constant_value(node: torch.fx.Node) -> torch.Tensor | None:
    """The value of a node computed from buffers and constants alone (a causal mask built from
    ``arange``), evaluated on real tensors; ``None`` when it reads an input, a meta tensor, or
    anything it cannot evaluate. Nothing is kept: callers memoize what they conclude."""
    memo: dict[torch.fx.Node, torch.Tensor | None] = {}

    def value_of(n: torch.fx.Node, depth: int) -> torch.Tensor | None:
        if n in memo:
            return memo[n]
        value = None
        if n.op == "get_attr":
            obj = n.graph.owning_module
            try:
                for part in str(n.target).split("."):
                    obj = getattr(obj, part)
                value = obj if isinstance(obj, torch.Tensor) and not obj.is_meta else None
            except AttributeError:
                value = None
        elif n.op == "call_function" and depth < 64:
            env = {}
            for a in n.all_input_nodes:
                env[a] = value_of(a, depth + 1)
                if env[a] is None:
                    break
            else:
                def sub(v):
                    return env[v] if isinstance(v, torch.fx.Node) else v
                try:
                    with unset_fake_temporarily(), torch.no_grad():
                        out = n.target(*torch.fx.node.map_aggregate(n.args, sub),
                                       **torch.fx.node.map_aggregate(n.kwargs, sub))
                    value = out if isinstance(out, torch.Tensor) and not out.is_meta else None
                except Exception:  # noqa: BLE001 - not evaluable here: not a known constant
                    value = None
        memo[n] = value
        return value

    return value_of(node, 0)


def causal_mask(mask: torch.fx.Node) -> bool:
    """Whether an attention mask is a constant that lets no query see a later key (a causal or
    sliding-window mask, boolean or additive): query rows ``lo..hi`` then need keys ``0..hi``
    only, so the rows of a decoder layer can run in blocks (:func:`prefix_args`)."""
    if "graphopt_causal" in mask.meta:
        return mask.meta["graphopt_causal"]
    value = constant_value(mask)
    causal = False
    if value is not None and value.dim() >= 2 and value.shape[-1] == value.shape[-2]:
        allowed = value if value.dtype == torch.bool else \
            value > torch.finfo(value.dtype).min / 2 if value.is_floating_point() else None
        if allowed is not None:
            causal = not bool(torch.triu(allowed, diagonal=1).any())
    mask.meta["graphopt_causal"] = causal
    return causal


def prefix_args(node: torch.fx.Node, d: int) -> dict[int, int]:
    """Arguments a row block reads from row 0 up to its last row rather than its own rows:
    ``{argument index: dim}``. Attention under a causal mask (:func:`causal_mask`): the keys
    and values on their row dim, the mask on its key dim. Empty for every other op."""
    if node.op != "call_function" or op_table.row_rule(node.target) is None or \
            op_table.row_rule(node.target).kind != "attention":
        return {}
    m = row_args(node, d)
    if not m or m.get(1) is None:
        return {}
    out = {1: m[1], 2: m[2]}
    if len(node.args) > 3 and isinstance(node.args[3], torch.fx.Node):
        out[3] = _val(node.args[3]).dim() - 1
    return out


def _rows_cat(node, out, x, d):
    """``cat`` along another dim than the rows: every piece keeps its rows (RoPE's
    ``rotate_half`` concatenates two halves of the features)."""
    pieces = list(node.args[0])
    dim = _norm_dim(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0), out.dim())
    vals = [_val(p) for p in pieces]
    if dim == d or not all(isinstance(p, torch.fx.Node) and isinstance(v, torch.Tensor) and
                           v.dim() == out.dim() and v.shape[d] == out.shape[d]
                           for p, v in zip(pieces, vals)):
        return None
    return {(0, k): d for k in range(len(pieces))}


def _first(v):
    """A tensor's value itself; a tuple of tensors (``split``) by its first piece."""
    return v[0] if not isinstance(v, torch.Tensor) and rows_shape(v) is not None else v


_LAYOUT = ("view", "injective")   # op classes a prefix may be replayed through after its cat


def prefix_chain(reg: Region, node: torch.fx.Node) -> list[torch.fx.Node]:
    """``[source, ..., node]``: where a value a block reads as a prefix is best joined. The
    layout ops leading to ``node`` (each with one tensor argument, labelled in ``reg``) from
    its smallest ancestor: a grouped-query key before ``repeat_kv``'s expand and reshape is a
    quarter of the bytes, and that is what a stage boundary between blocks then sends."""
    chain = [node]
    while True:
        n = chain[0]
        ins = [a for a in n.args if isinstance(a, torch.fx.Node)]
        if op_class(n.target) not in _LAYOUT or len(ins) != 1 or \
                ins[0].name not in reg.dims or len(n.all_input_nodes) != 1:
            break
        chain.insert(0, ins[0])
    sizes = [_nbytes(c) for c in chain]
    start = min(range(len(chain)), key=lambda i: (sizes[i], -i))
    return chain[start:]


def prefix_bytes(reg: Region, nodes: dict[str, torch.fx.Node]) -> int:
    """Bytes of the values the region's blocks read as prefixes, each where it is joined
    (:func:`prefix_chain`): a boundary between blocks sends their rows done so far."""
    seen = set()
    for name, pre in reg.prefix.items():
        for i in pre:
            a = get_arg(nodes[name].args, i)
            if isinstance(a, torch.fx.Node) and a.name in reg.dims and pre[i] == reg.args[name].get(i):
                seen.add(prefix_chain(reg, a)[0])
    return sum(_nbytes(n) for n in seen)


def _nbytes(n: torch.fx.Node) -> int:
    v = _val(n)
    return v.numel() * v.element_size() if isinstance(v, torch.Tensor) else 1 << 62


def _rows_split(node, out, x, d, dim_arg):
    """``split`` along another dim than the rows: every piece keeps the rows."""
    dim = node.args[dim_arg] if len(node.args) > dim_arg else node.kwargs.get("dim", 0)
    return None if _norm_dim(dim, x.dim()) == d else {0: d}


def _rows_getitem(node, out, x, d):
    """One piece of a tuple whose pieces all carry the rows on the same dim."""
    return {0: d} if isinstance(node.args[0], torch.fx.Node) and \
        rows_shape(_val(node.args[0])) is not None else None


def _rows_embedding(node, out, x, d):
    return {0: None, 1: d} if d < out.dim() - 1 else None


ROW_RULES = {"pointwise": _rows_pointwise, "dropout": _rows_dropout,
             "same_order": _rows_same_order, "expand": _rows_expand,
             "permute": _rows_permute, "transpose": _rows_transpose, "t": _rows_t,
             "along_dim": _rows_along_dim, "select": _rows_select, "mm": _rows_mm,
             "addmm": _rows_addmm, "leading": _rows_leading,
             "batched_matmul": _rows_batched_matmul, "reduce": _rows_reduce,
             "attention": _rows_attention, "embedding": _rows_embedding, "cat": _rows_cat,
             "split": _rows_split, "getitem": _rows_getitem}
# Kinds that need no tensor as the first argument: broadcasting handles scalars; cat's is a list.
_POINTWISE_KINDS = {"pointwise", "dropout", "cat", "getitem"}
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
    out = _first(_val(node))
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
    out = _first(_val(node))
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
    outside (or unlabelled inside) tensors every block uses in full; ``prefix[name]`` the
    arguments of a node that its block reads from row 0 up to the block's last row
    (:func:`prefix_args`: causal attention's keys, values and mask)."""

    rows: int
    anchor: str = ""
    anchor_dim: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    external: dict[str, int] = field(default_factory=dict)
    whole: set[str] = field(default_factory=set)
    args: dict[str, dict[int, int | None]] = field(default_factory=dict)
    prefix: dict[str, dict[int, int]] = field(default_factory=dict)


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
        if pre := prefix_args(n, reg.dims[n.name]):
            reg.prefix[n.name] = pre
        for i, a in tensor_args(n):
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
            elif not isinstance(_val(a), torch.Tensor) or reg.external.setdefault(a.name, j) != j:
                return None     # a tuple from outside cannot be sliced: its split comes in too
        for u in n.users:
            if u.name not in inside and not isinstance(_val(n), torch.Tensor):
                return None     # a tuple's pieces are taken inside, or it cannot be re-joined
            if u.name not in inside or u.name in reg.dims:
                continue
            known = {i: reg.dims[a.name] for i, a in tensor_args(u) if a.name in reg.dims}
            d = _output_dim(u, known, reg.rows)
            if d is None:
                return None
            reg.dims[u.name] = d
            todo.append(u)
    for name in reg.whole:   # a whole inside node must not depend on the rows
        if name in reg.dims:
            return None
    return reg
