"""Cut nodes so a pipeline stage boundary can land inside them: the same function, in blocks.

What to cut comes from :func:`graphopt.partition.cut_plan.plan_cuts` (read it for why and where). The
rewrites, each exact:

* a **row region** (a transformer FFN block, say) becomes one copy of its ops per token block:
  every outside input is sliced first (so a boundary between blocks sends only the rows still to
  do), each block runs on its rows (``view`` becomes ``reshape``, size arguments take the
  block's rows), and a ``cat`` per value used after the region restores it;
* a **single node**: ``mm``/``addmm``/``bmm``/``matmul``/``linear`` by row blocks of the first
  operand (the weight is used whole, so parameters stay parameters), scaled-dot-product
  attention by head blocks of ``q``, ``k``, ``v`` (and a per-head mask), a convolution
  (not transposed, ``groups == 1``) by output-channel blocks of its weight and bias.

Every ``cat`` reproduces the original value's memory layout (later ``view`` ops rely on it).

The ``split_ops`` pass (:mod:`graphopt.passes.split_ops`) and ``partition_graph`` call
:func:`apply_cuts`; the training runtime replays a recorded plan's cuts with :func:`cut_like`.

Needs: ``meta['val']`` on every node (fake or real tensors). Guarantees: the graph computes the
same outputs; new nodes carry ``meta['val']`` (the op run on its inputs' values under the graph's
fake mode) and ``info.extra["split_of"]``; ``ctx.artifacts["split_ops"]`` maps each cut to its
new nodes. A graph that was split already is left alone, so the pass is idempotent.
O(V) plus O(new nodes) fake-tensor ops.
"""
from __future__ import annotations

import contextlib

import torch
import torch.fx
import torch.utils._pytree as pytree

from graphopt.graph import Graph
from graphopt.partition.cut_plan import Cut, cuts_from_dicts, node_cut_kind
from graphopt.partition.rowwise import SHAPE_ARG, get_arg, is_causal_flag, prefix_chain, set_arg

__all__ = ["apply_cuts", "cut_like"]

aten = torch.ops.aten


def _val(a):
    return a.meta.get("val") if isinstance(a, torch.fx.Node) else a


def cut_like(graph: Graph, splits: list, source: str = "plan") -> Graph:
    """A copy of ``graph`` cut the way a plan's graph was (the plan's ``splits`` records), so a
    ``partition.json`` made on a cut graph applies to the model captured again. Returns
    ``graph`` itself when there is nothing to cut or the cuts are there already."""
    if not splits or any("split_of" in i.extra for i in graph.nodes()):
        return graph
    cut = graph.copy()
    apply_cuts(cut, cuts_from_dicts(cut, splits, source))
    return cut


def apply_cuts(graph: Graph, cuts: list[Cut]) -> dict[str, list[str]]:
    """Cut ``graph`` in place; fills each cut's ``blocks`` and returns ``{label: new nodes}``.

    Example:
        >>> done = apply_cuts(graph, plan_cuts(graph, k=4, eps=0.03))
    """
    if not cuts:
        return {}
    order = {n.name: i for i, n in enumerate(graph.fx_nodes())}
    done: dict[str, list[str]] = {}
    for c in sorted(cuts, key=lambda c: -order[c.nodes[0]]):  # later first: names stay valid
        fx = {n.name: n for n in graph.fx_nodes()}
        if c.region is None:
            c.blocks, new = _cut_node(graph, fx[c.nodes[0]], c.cuts)
        else:
            c.blocks, new = _cut_region(graph, [fx[n] for n in c.nodes], c.region, c.cuts)
        done[c.label] = new
    graph.gm.graph.lint()
    graph.gm.recompile()
    graph.reannotate()
    for label, new in done.items():
        for n in new:
            graph.info[n].extra["split_of"] = label
    return done


def _cut_region(graph: Graph, nodes: list, reg, cuts: list[int]) -> tuple[list, list[str]]:
    """Replace a row-wise region by one copy per token block: outside inputs sliced first (so a
    boundary between blocks sends only the rows still to do), each block's ops on its rows,
    and a ``cat`` per value used after the region."""
    g = graph.gm.graph
    spans = list(zip([0] + cuts, cuts + [reg.rows]))
    labeled = [n for n in nodes if n.name in reg.dims]
    by_name = {n.name: n for n in g.nodes}
    mode = _fake_mode([_val(n) for n in labeled if isinstance(_val(n), torch.Tensor)])
    existing = set(g.nodes)
    with g.inserting_before(nodes[-1].next):
        slices = {name: [_emit(g, aten.slice.Tensor, (by_name[name], dim, lo, hi),
                               by_name[name].meta, mode) for lo, hi in spans]
                  for name, dim in reg.external.items()}
        blocks: list[dict[str, torch.fx.Node]] = []
        prefix = _Prefixes(g, reg, by_name, blocks, mode)
        for b, (lo, hi) in enumerate(spans):
            env: dict[str, torch.fx.Node] = {}
            blocks.append(env)
            for n in labeled:
                m = reg.args[n.name]
                pre = reg.prefix.get(n.name, {})
                args = list(n.args)
                for i, j in m.items():
                    if j is not None and not (i in pre and pre[i] == j):
                        a = get_arg(n.args, i)
                        set_arg(args, i, env[a.name] if a.name in env else slices[a.name][b])
                for i, dim in pre.items():   # rows 0..hi: causal attention's keys, values, mask
                    args[i] = prefix.rows(n.args[i], args[i], m.get(i), dim, b, hi)
                kwargs = n.kwargs
                if pre and is_causal_flag(n):
                    args, kwargs = _explicit_causal(g, n, args, lo, hi, mode)
                env[n.name] = _emit(g, *_resized(n, args, reg.dims[n.name], hi - lo), n.meta,
                                    mode, kwargs)
        cats = {}
        for n in labeled:
            if any(u.name not in reg.dims for u in n.users):
                cats[n.name] = _cat_like(g, [env[n.name] for env in blocks], reg.dims[n.name],
                                         n.meta, mode)
    new = [n.name for n in g.nodes if n not in existing]
    for name, cat in cats.items():
        by_name[name].replace_all_uses_with(cat)
    for n in reversed(labeled):
        g.erase_node(n)
    return [[n.name for n in env.values()] for env in blocks], new


def _resized(n: torch.fx.Node, args: list, d: int, rows: int) -> tuple:
    """``(target, args)`` of ``n`` run on ``rows`` rows along its row dim ``d``: an argument
    naming the output shape takes the new row count, and ``view`` becomes ``reshape`` (a row
    block may not be viewable)."""
    target = n.target
    if target in SHAPE_ARG:
        size = list(args[1])
        if size[d] != -1:
            size[d] = rows
        args = list(args)
        args[1] = size
        if target in (aten.view.default, aten._unsafe_view.default):
            target = aten.reshape.default
    return target, args


def _explicit_causal(g, n: torch.fx.Node, args: list, lo: int, hi: int, mode):
    """``is_causal=True`` anchors its mask at query 0, so a block of query rows ``lo..hi``
    over keys ``0..hi`` gets an explicit one instead: query ``lo + i`` sees keys up to itself.
    Built from ``arange``, it is a constant every stage makes itself."""
    device = _val(n.args[0]).device
    rows = _emit(g, aten.arange.start, (lo, hi), n.meta, mode, {"device": device})
    cols = _emit(g, aten.arange.default, (hi,), n.meta, mode, {"device": device})
    rows = _emit(g, aten.unsqueeze.default, (rows, 1), n.meta, mode)
    mask = _emit(g, aten.ge.Tensor, (rows, cols), n.meta, mode)
    args = list(args) + [None] * max(0, 4 - len(args))
    args[3] = mask
    if len(args) > 5:
        args[5] = False
    kwargs = {k: v for k, v in n.kwargs.items() if k not in ("is_causal", "attn_mask")}
    return args, kwargs


class _Prefixes:
    """Rows ``0..hi`` of a value for block ``b`` of a region (causal attention's keys and
    values: :func:`graphopt.partition.rowwise.prefix_args`).

    A value computed inside the region is the ``cat`` of the earlier blocks' pieces and this
    block's, taken where the value is smallest along its layout ops
    (:func:`~graphopt.partition.rowwise.prefix_chain`), and those ops are replayed on the
    prefix. A value from outside (or a mask) is sliced ``0..hi``."""

    def __init__(self, g, reg, by_name, blocks, mode):
        self.g, self.reg, self.by_name, self.blocks, self.mode = g, reg, by_name, blocks, mode
        self.memo: dict = {}

    def rows(self, a, current, row_dim, dim: int, b: int, hi: int):
        key = (a.name, row_dim, dim, b)
        if key in self.memo:
            return self.memo[key]
        if a.name in self.reg.dims and row_dim == dim and b == 0:
            out = self.blocks[0][a.name]        # the first block's prefix is its own rows
        elif a.name in self.reg.dims and row_dim == dim:
            chain = prefix_chain(self.reg, self.by_name[a.name])
            out = _cat_like(self.g, [env[chain[0].name] for env in self.blocks[:b + 1]],
                            self.reg.dims[chain[0].name], chain[0].meta, self.mode)
            for c in chain[1:]:
                args = [out if isinstance(x, torch.fx.Node) else x for x in c.args]
                out = _emit(self.g, *_resized(c, args, self.reg.dims[c.name], hi), c.meta,
                            self.mode, c.kwargs)
        else:       # from outside the region, or the key dim of a mask sliced by query rows
            source = a if row_dim is None or row_dim == dim else current
            out = _emit(self.g, aten.slice.Tensor, (source, dim, 0, hi), a.meta, self.mode)
        self.memo[key] = out
        return out


def _fake_mode(vals):
    mode = torch._guards.detect_fake_mode(vals)
    return mode if mode is not None else contextlib.nullcontext()


_META_CACHE: dict = {}     # (op, argument layouts) -> output layouts; blocks repeat shapes


def _layout_key(v):
    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), tuple(v.stride()), v.dtype)
    return ("V", repr(v))


def _on_meta(target, args, kwargs, mode):
    """``target`` on meta tensors shaped like the fake values, rewrapped as fake tensors of
    ``mode``: the shapes without a trip through the fake mode's dispatch (10x faster on
    exported graphs, whose fake mode carries a shape environment), and memoized by argument
    layouts, since every block of a cut and every cut variant repeats them. ``None`` when it
    cannot (no meta kernel, mixed devices): the fake mode computes it then."""
    fake = torch._subclasses.fake_tensor
    if not isinstance(mode, fake.FakeTensorMode):
        return None
    vals = pytree.tree_leaves((args, kwargs))
    if any(isinstance(v, torch.Tensor) and not isinstance(v, fake.FakeTensor) for v in vals):
        return None
    devices = {v.fake_device for v in vals if isinstance(v, fake.FakeTensor)}
    if len(devices) != 1:
        return None
    key = (target, tuple(_layout_key(v) for v in vals),
           repr(pytree.tree_structure((args, kwargs))))
    out = _META_CACHE.get(key)
    if out is None:
        def to_meta(v):
            if isinstance(v, fake.FakeTensor):
                return torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="meta")
            return v
        try:
            with fake.unset_fake_temporarily():
                out = target(*pytree.tree_map(to_meta, args), **pytree.tree_map(to_meta, kwargs))
        except Exception:  # noqa: BLE001 - no meta kernel: the fake mode computes it instead
            return None
        if len(_META_CACHE) > 50_000:
            _META_CACHE.clear()
        _META_CACHE[key] = out
    device = next(iter(devices))
    with fake.unset_fake_temporarily():
        return pytree.tree_map(lambda t: fake.FakeTensor(
            mode, torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta"),
            device) if isinstance(t, torch.Tensor) else t, out)


def _emit(g: torch.fx.Graph, target, args, meta: dict, mode, kwargs=None) -> torch.fx.Node:
    node = g.call_function(target, tuple(args), dict(kwargs or {}))
    vals = pytree.tree_map(_val, list(args))
    kw = pytree.tree_map(_val, dict(kwargs or {}))
    out = _on_meta(target, vals, kw, mode)
    if out is None:
        with mode:
            out = target(*vals, **kw)
    node.meta["val"] = out
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


def _cut_node(graph: Graph, node: torch.fx.Node, cuts: list[int]) -> tuple[list, list[str]]:
    """Replace ``node`` by slices, one op per block and a ``cat``; returns the blocks' node
    names and all new names."""
    rows, sl, cat_dim = node_cut_kind(node)
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
    new = [n.name for ns in sliced.values() for n in ns] + [n.name for n in pieces + [cat]]
    return [[p.name] for p in pieces], new
