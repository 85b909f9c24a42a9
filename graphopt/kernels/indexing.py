"""Memory offsets of tensor elements as Triton index expressions.

A kernel walks its iteration shape ``X`` with one or two index variables: ``lin`` (pointwise,
the row-major index of ``X``) or ``r`` and ``c`` (reductions: the row over the kept dims and the
column over the reduced dims). Dim ``k`` of ``X`` is ``(var // div) % size``. A tensor read or
written at a member's index map (see :mod:`graphopt.fusion.domain`) sits at
``sum(index_d * stride_d)``; :func:`offset` writes that sum with broadcast dims dropped and
adjacent dims that are contiguous with each other merged, so a contiguous row is just ``c`` and
a bias is ``c % 768``, never a chain of divisions.

Example:
    >>> space = IndexSpace.pointwise((4, 768))
    >>> offset(space, (None, 1), (768,), (1,))   # a bias broadcast over rows
    'lin % 768'
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from graphopt.fusion.domain import LinearMap

__all__ = ["IndexSpace", "Term", "offset", "terms", "contiguous_strides"]


@dataclass(frozen=True)
class Term:
    """``(var // div) % mod * stride``."""

    var: str
    div: int
    mod: int
    stride: int


def contiguous_strides(shape) -> tuple[int, ...]:
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= max(int(s), 1)
    return tuple(reversed(out))


@dataclass(frozen=True)
class IndexSpace:
    """Which variable walks each dim of ``X``, and the extent of each variable.

    ``lin_extent`` > 0 means a ``lin`` variable (the row-major index of ``X``) exists: it is the
    kernel's own variable for pointwise kernels and a derived one for reductions.
    """

    shape: tuple[int, ...]
    var_of: tuple[str, ...]          # per dim of X
    extents: dict

    @staticmethod
    def pointwise(shape) -> IndexSpace:
        shape = tuple(shape)
        return IndexSpace(shape, ("lin",) * len(shape), {"lin": math.prod(shape)})

    @staticmethod
    def reduction(shape, reduce_dims) -> IndexSpace:
        shape = tuple(shape)
        var_of = tuple("c" if d in reduce_dims else "r" for d in range(len(shape)))
        rows = math.prod(s for s, v in zip(shape, var_of) if v == "r")
        cols = math.prod(s for s, v in zip(shape, var_of) if v == "c")
        return IndexSpace(shape, var_of, {"r": rows, "c": cols, "lin": math.prod(shape)})

    def dim_div(self, k: int) -> int:
        """Product of the later dims walked by the same variable."""
        return math.prod(s for j, s in enumerate(self.shape)
                         if j > k and self.var_of[j] == self.var_of[k])


def terms(space: IndexSpace, index_map, shape, strides) -> list[Term]:
    """The offset of a tensor (``shape``, ``strides``) read or written at ``index_map``."""
    out = []
    if isinstance(index_map, LinearMap):
        space_shape = index_map.shape
        divs = contiguous_strides(space_shape)
        for k, size, stride in zip(index_map.pick, shape, strides):
            if k is not None and size != 1 and stride != 0:
                out.append(Term("lin", divs[k], int(space_shape[k]), int(stride)))
    else:
        for d, k in enumerate(index_map):
            if k is None or shape[d] == 1 or strides[d] == 0:
                continue
            out.append(Term(space.var_of[k], space.dim_div(k), int(space.shape[k]),
                            int(strides[d])))
    return _coalesce(out)


def _coalesce(ts: list[Term]) -> list[Term]:
    by_var: dict[str, list[Term]] = {}
    for t in ts:
        by_var.setdefault(t.var, []).append(t)
    out = []
    for var, group in by_var.items():
        group.sort(key=lambda t: -t.div)
        merged = [group[0]]
        for t in group[1:]:
            prev = merged[-1]
            if prev.div == t.div * t.mod and prev.stride == t.stride * t.mod:
                merged[-1] = Term(var, t.div, prev.mod * t.mod, t.stride)
            else:
                merged.append(t)
        out.extend(merged)
    return out


def _term_expr(t: Term, extent: int) -> str:
    e = t.var
    if t.div > 1:
        e = f"({e} // {t.div})"
    if t.div * t.mod < extent:
        e = f"({e} % {t.mod})"
    if t.stride != 1:
        e = f"{e} * {t.stride}"
    return e


def offset(space: IndexSpace, index_map, shape, strides) -> str:
    """The offset as Triton source (``"0"`` when every dim is broadcast)."""
    ts = terms(space, index_map, shape, strides)
    if not ts:
        return "0"
    text = " + ".join(_term_expr(t, space.extents[t.var]) for t in ts)
    return _strip(text)


def _strip(text: str) -> str:
    # "(lin % 768)" alone reads better without its outer parentheses.
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        return text[1:-1]
    return text


def variables(space: IndexSpace, index_map, shape, strides) -> set[str]:
    """The index variables an access depends on."""
    return {t.var for t in terms(space, index_map, shape, strides)}
