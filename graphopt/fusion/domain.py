"""The iteration domain of a candidate fused group, and where each member is computed in it.

A fused kernel walks one index space, the shape ``X``, and computes every member at each point:

* **pointwise** groups walk the ``N`` elements of ``X`` (the shape of their largest values);
* **reduction** groups walk ``X``, the input shape of their reductions, as ``rows x cols``: the
  kept dims make the rows, the reduced dims the columns. Every reduction in a group reduces the
  same ``X`` over the same dims.

Each member gets an **index map**: how its own multi-index follows from the point of ``X``.

* an aligned map, a tuple with one entry per dim of the value: the dim of ``X`` it walks with,
  or ``None`` for a size-1 dim. ``x - mean`` walks ``X`` itself (``(0, 1, 2)``); ``mean`` with
  ``keepdim`` walks the rows (``(0, 1, None)``); a per-channel ``[C, 1, 1]`` scale in an
  ``[N, C, H, W]`` kernel walks ``(1, None, None)`` and is recomputed at every point, which
  costs a few instructions and saves a kernel and a round trip through memory;
* a :class:`LinearMap`: the value lives in a reshape ``S`` of ``X`` (``N`` elements in another
  shape) and walks ``X``'s row-major linear index, which views keep, unravelled in ``S``; a
  value broadcast in that space walks some of ``S``'s dims (``pick``).

Maps come from producers (a reduction's output walks the rows; a same-size view keeps its
operand's map) and from consumers (a broadcast read fixes the operand's map); they must agree.
A member walking only kept dims is computed once per row (level ``row``), others at every point
(``full``). A member used outside the kernel is stored, so it must walk all of ``X`` or, in a
reduction kernel, exactly the rows; a broadcast value is recomputed, never stored.

The fusion pass (legality) and the code generator (layout) both call :func:`analyze`, so a group
the pass accepts is a group the generator can write. O(members + their edges).

Example:
    >>> dom = analyze([n1, n2, n3])
    >>> dom.kind, dom.rows, dom.cols, dom.levels["sum_1"], dom.maps["sum_1"]
    ('reduction', 512, 768, 'row', (0, 1, None))
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch.fx

from graphopt.fusion.ops import (
    CONSTANTS,
    FusionKind,
    fusion_kind,
    overload_key,
    reduced_dims,
    static_meta,
    torch_reduced_dims,
)

__all__ = ["Domain", "FusionReject", "LinearMap", "analyze", "operand_map", "strip_ones",
           "PERSISTENT_MAX_COLS"]

#: Reductions whose rows have up to this many columns (rounded up to a power of two) keep a
#: row in registers and read their inputs once; longer rows loop over the columns, re-reading
#: the inputs once per dependent reduction.
PERSISTENT_MAX_COLS = 8192


class FusionReject(Exception):
    """A group that cannot be one kernel; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LinearMap:
    """A value walking ``X``'s row-major linear index unravelled in ``shape`` (``N`` elements).

    ``pick`` has one entry per dim of the value: the dim of ``shape`` it walks with, or None
    (size 1, broadcast). A value shaped ``shape`` itself picks every dim in order.
    """

    shape: tuple[int, ...]
    pick: tuple | None = None

    def __post_init__(self):
        if self.pick is None:
            object.__setattr__(self, "pick", tuple(range(len(self.shape))))


@dataclass
class Domain:
    """Where each member of a fused group is computed.

    Attributes:
        kind: ``pointwise`` or ``reduction``.
        shape: the iteration shape ``X``.
        reduce_dims: dims of ``X`` that are reduced (empty for pointwise).
        maps: node name -> aligned map (tuple) or :class:`LinearMap`; constants have None.
        levels: node name -> ``full``, ``row`` or ``const``.
    """

    kind: str
    shape: tuple[int, ...]
    reduce_dims: tuple[int, ...] = ()
    maps: dict[str, object] = field(default_factory=dict)
    levels: dict[str, str] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def cols(self) -> int:
        return math.prod(self.shape[d] for d in self.reduce_dims)

    @property
    def rows(self) -> int:
        return self.numel // max(self.cols, 1)

    def identity(self, shape) -> tuple | None:
        """The aligned map of a value of ``shape`` that walks all of ``X`` in order (None if it
        cannot: only size-1 dims may differ)."""
        mine = [d for d, s in enumerate(self.shape) if s != 1]
        theirs = [d for d, s in enumerate(shape) if s != 1]
        if [self.shape[d] for d in mine] != [shape[d] for d in theirs]:
            return None
        out = [None] * len(shape)
        for a, b in zip(theirs, mine):
            out[a] = b
        return tuple(out)

    def row_map(self, shape, keepdim: bool, dropped=()) -> tuple:
        """The aligned map of a reduction's output; ``dropped`` are the dims torch removed
        (without ``keepdim``), size-1 ones included."""
        if keepdim:
            return tuple(None if (s == 1 or d in self.reduce_dims) else d
                         for d, s in enumerate(shape))
        kept = [d for d in range(len(self.shape)) if d not in set(dropped) | set(self.reduce_dims)]
        return tuple(None if s == 1 else k for k, s in zip(kept, shape))

    def normalize(self, m, shape=None):
        """Linear maps in a space shaped like ``X`` (up to size-1 dims) are aligned maps."""
        if isinstance(m, LinearMap):
            ident = self.identity(m.shape)
            if ident is not None:
                return tuple(None if k is None else ident[k] for k in m.pick)
        return m


def strip_ones(shape) -> tuple[int, ...]:
    """Shape without leading size-1 dims (they change neither broadcasting nor row-major order)."""
    shape = tuple(int(s) for s in shape)
    i = 0
    while i < len(shape) and shape[i] == 1:
        i += 1
    return shape[i:]


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = static_meta(node)
    if val is None:
        raise FusionReject("dynamic_shape", node.name)
    return tuple(int(s) for s in val.shape)


def _is_const(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and overload_key(node.target) in CONSTANTS


def _squeezed(shape) -> list[int]:
    return [d for d, s in enumerate(shape) if s != 1]


def _through_view(m, src_shape, dst_shape):
    """Carry an aligned map across a view that only adds or drops size-1 dims (else None)."""
    a, b = _squeezed(src_shape), _squeezed(dst_shape)
    if [src_shape[d] for d in a] != [dst_shape[d] for d in b]:
        return None
    out = [None] * len(dst_shape)
    for da, db in zip(a, b):
        out[db] = m[da]
    return tuple(out)


def _broadcast_read(m_user, user_shape, arg_shape):
    """The map of an operand broadcast (right-aligned) into a user walking ``m_user``."""
    off = len(user_shape) - len(arg_shape)
    if off < 0:
        return None
    return tuple(None if s == 1 else m_user[d + off] for d, s in enumerate(arg_shape))


def operand_map(dom: Domain, user: torch.fx.Node, arg_shape, m_user):
    """The map an operand of shape ``arg_shape`` walks when ``user`` (walking ``m_user``) reads
    it: a broadcast, a view carried back, or the identity a reduction needs.

    Raises:
        FusionReject: when no map works (``broadcast_internal``, ``domain_mismatch``).
    """
    ashape, ushape = tuple(arg_shape), _shape(user)
    if fusion_kind(user) == FusionKind.REDUCTION:
        ident = dom.identity(ashape)
        if ident is None:
            raise FusionReject("domain_mismatch", f"{user.name} reduces a {list(ashape)} value")
        return ident
    if isinstance(m_user, LinearMap):
        if math.prod(ashape) == dom.numel:  # no broadcast: a reshape keeps the linear index
            return dom.normalize(LinearMap(ashape))
        if fusion_kind(user) == FusionKind.VIEW and math.prod(ashape) == math.prod(ushape):
            pick = _through_view(m_user.pick, ushape, ashape)
        else:
            pick = _broadcast_read(m_user.pick, ushape, ashape)
        if pick is None:
            raise FusionReject("broadcast_internal",
                               f"{user.name} reshapes a broadcast {list(ashape)} value")
        return dom.normalize(LinearMap(m_user.shape, pick))
    if fusion_kind(user) == FusionKind.VIEW and math.prod(ashape) == math.prod(ushape) \
            and ashape != ushape:
        carried = _through_view(m_user, ushape, ashape)
        if carried is None:
            if math.prod(ashape) != dom.numel:
                raise FusionReject("broadcast_internal",
                                   f"{user.name} reshapes a broadcast {list(ashape)} value")
            return dom.normalize(LinearMap(ashape))
        return carried
    m = _broadcast_read(m_user, ushape, ashape)
    if m is None:
        raise FusionReject("broadcast_internal", f"{user.name} reads a {list(ashape)} value")
    return m


class _Analysis:
    def __init__(self, nodes: list[torch.fx.Node]):
        self.nodes = nodes
        self.members = set(nodes)
        self.consts = {n for n in nodes if _is_const(n)}
        self.reductions = [n for n in nodes if fusion_kind(n) == FusionKind.REDUCTION]
        compute = [n for n in nodes if n not in self.consts]
        if not compute:
            raise FusionReject("domain_mismatch", "only constants")
        if self.reductions:
            first = self.reductions[0]
            self.dom = Domain("reduction", _shape(first.args[0]), reduced_dims(first))
            for red in self.reductions[1:]:
                if _shape(red.args[0]) != self.dom.shape or reduced_dims(red) != \
                        self.dom.reduce_dims:
                    raise FusionReject(
                        "reduction_mismatch", f"{red.name} reduces {list(_shape(red.args[0]))} "
                        f"over {list(reduced_dims(red))}, {first.name} {list(self.dom.shape)} "
                        f"over {list(self.dom.reduce_dims)}")
        else:
            big = max(math.prod(_shape(n)) for n in compute)
            self.dom = Domain("pointwise", _shape([n for n in compute
                                                   if math.prod(_shape(n)) == big][-1]))

    def internal(self, node):
        return [a for a in dict.fromkeys(node.all_input_nodes)
                if a in self.members and a not in self.consts]

    def natural(self, node, maps):
        """The map a node gets from its producers, or None when they do not fix it."""
        dom, shape = self.dom, _shape(node)
        if node in self.reductions:
            keepdim = len(shape) == len(dom.shape)
            return dom.row_map(shape, keepdim, torch_reduced_dims(node))
        if math.prod(shape) == dom.numel:
            return dom.normalize(LinearMap(shape))
        for arg in self.internal(node):
            m = maps.get(arg)
            ashape = _shape(arg)
            if m is None or math.prod(ashape) != math.prod(shape):
                continue
            if isinstance(m, LinearMap):
                pick = _through_view(m.pick, ashape, shape) if ashape != shape else m.pick
                carried = None if pick is None else LinearMap(m.shape, pick)
            else:
                carried = _through_view(m, ashape, shape) if ashape != shape else m
            if carried is not None:
                return carried
        return None

    def required(self, arg, user, m_user):
        return operand_map(self.dom, user, _shape(arg), m_user)

    def run(self) -> Domain:
        dom = self.dom
        maps: dict[torch.fx.Node, object] = {}
        for node in self.nodes:
            if node not in self.consts:
                m = self.natural(node, maps)
                if m is not None:
                    maps[node] = m
        for node in reversed(self.nodes):
            if node in self.consts:
                if any(u not in self.members for u in node.users):
                    raise FusionReject("constant_output", node.name)
                continue
            for user in node.users:
                if user not in self.members:
                    continue
                need = self.required(node, user, maps[user])
                have = maps.setdefault(node, need)
                if have != need:
                    raise FusionReject("broadcast_internal",
                                       f"{node.name} is read by {user.name} at other indices")
            if node not in maps:
                raise FusionReject("domain_mismatch",
                                   f"{node.name} {list(_shape(node))} does not walk "
                                   f"{list(dom.shape)}")
        for node in self.nodes:
            if node in self.consts:
                dom.levels[node.name], dom.maps[node.name] = "const", None
                continue
            m = maps[node]
            walks = set() if isinstance(m, LinearMap) else {d for d in m if d is not None}
            row = dom.kind == "reduction" and not isinstance(m, LinearMap) and \
                not (walks & set(dom.reduce_dims))
            level = "row" if row else "full"
            dom.levels[node.name], dom.maps[node.name] = level, m
            if any(u not in self.members for u in node.users) or not node.users:
                n = math.prod(_shape(node))
                if not (n == dom.numel or (row and n == dom.rows)):
                    raise FusionReject("broadcast_output",
                                       f"{node.name} ({n} elements) would be stored from a "
                                       "broadcast")
        return dom


def analyze(nodes: list[torch.fx.Node]) -> Domain:
    """The domain of the group made of ``nodes`` (in topological order).

    Raises:
        FusionReject: with reason ``domain_mismatch``, ``reduction_mismatch``,
            ``broadcast_internal``, ``broadcast_output``, ``constant_output`` or
            ``dynamic_shape``.
    """
    return _Analysis(nodes).run()
