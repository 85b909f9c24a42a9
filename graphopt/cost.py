"""FLOPs and memory traffic of one ATen op: what :mod:`graphopt.graph` records on every node.

Time (what a node costs on a device, links, the step) is the cost model's, in
:mod:`graphopt.costmodel`, which prices nodes from the FLOPs and bytes counted here; the formulas
live here once and nowhere else. Which family an op is in and which formula or
per-element weight it takes is its entry in :mod:`graphopt.op_table`.

Formulas (``numel`` = number of elements of a tensor, outputs unless said otherwise):

* matmul family, ``mm(M×K, K×N)``: ``2·M·N·K``. ``addmm``/``baddbmm``/``linear`` count the same
  ``2·M·N·K`` and ignore the bias add, as ``torch.utils.flop_counter`` does; ``bmm`` multiplies by
  the batch; ``matmul``/``linear`` fold leading dimensions into M.
* convolution: ``2 · numel(out) · (C_in / groups) · prod(kernel)``; transposed convolution
  ``2 · numel(in) · (C_out / groups) · prod(kernel)``.
* scaled-dot-product attention: ``4 · B · H · S_q · S_kv · D`` (two matmuls; ``D`` the head size;
  the dense work, causal masking ignored, as FlopCounterMode counts it).
* pointwise: ``numel(out) · w`` with ``w`` = 1 for arithmetic and comparisons, and a small
  table for transcendental/composite ops (gelu 8, tanh/exp/erf/sigmoid 4 ...).
* normalisation: layer/group/batch norm ``8 · numel(in)``; softmax/log_softmax ``5 · numel(in)``.
* reductions: ``numel(in)``.
* injective ops (views, reshapes, permutes, slicing, cat, gathers): 0 FLOPs.

Bytes: ``bytes_read`` is the sum of the tensor inputs' bytes, ``bytes_written`` the outputs'. Views
and other aliasing ops move nothing (both 0), though their ``out_bytes`` still report the logical
size, which is what a transfer of that value to another device would carry.
"""
from __future__ import annotations

import math

import torch

from graphopt import op_table
from graphopt.op_table import OpClass, op_name

__all__ = ["OpClass", "op_class", "op_name", "node_flops", "tensor_bytes", "FORMULAS"]


def op_class(target) -> str:
    """Classify an ATen target by the op table; unknown ops are ELEMENTWISE where torch tags
    them pointwise, else OPAQUE (costed by bytes, never fused)."""
    entry = op_table.lookup(target)
    if entry is not None and entry.cls is not None:
        return entry.cls
    if isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags:
        return OpClass.ELEMENTWISE
    return OpClass.OPAQUE


def tensor_bytes(value) -> int:
    """Bytes of a tensor (or a nested tuple/list of tensors); non-tensors count 0."""
    if isinstance(value, torch.Tensor):
        return int(value.numel()) * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def _numel(value) -> int:
    return int(value.numel()) if isinstance(value, torch.Tensor) else 0


def _shape(value) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def _mm(args, out) -> int:
    (m, k), n = _shape(args[0]), _shape(args[1])[1]
    return 2 * m * n * k


def _addmm(args, out) -> int:
    return _mm(args[1:], out)


def _bmm(args, out) -> int:
    (b, m, k), n = _shape(args[0]), _shape(args[1])[2]
    return 2 * b * m * n * k


def _baddbmm(args, out) -> int:
    return _bmm(args[1:], out)


def _linear(args, out) -> int:
    k = _shape(args[0])[-1]
    return 2 * _numel(args[0]) // max(k, 1) * k * _shape(args[1])[0]


def _matmul(args, out) -> int:
    return 2 * _numel(out) * _shape(args[0])[-1]


def _einsum(args, out) -> int:
    # Without the contraction plan we take the larger operand times the output's extent.
    t = [a for a in args[1] if isinstance(a, torch.Tensor)] if len(args) > 1 else []
    return 2 * max((_numel(x) for x in t), default=0)


def _conv(args, out, transposed: bool = False) -> int:
    inp, weight = args[0], args[1]
    w = _shape(weight)
    kernel = math.prod(w[2:])
    if transposed:
        groups_cout = w[1]  # weight is (C_in, C_out/groups, *k)
        return 2 * _numel(inp) * groups_cout * kernel
    return 2 * _numel(out) * w[1] * kernel  # weight is (C_out, C_in/groups, *k)


def _convolution(args, out) -> int:
    """``convolution``/``_convolution``: argument 6 says whether it is transposed."""
    return _conv(args, out, transposed=len(args) > 6 and bool(args[6]))


def _conv_backward(args, out) -> int:
    grad_out, weight = args[0], args[2]
    mask = args[-1] if isinstance(args[-1], (list, tuple)) else [True, True, True]
    fwd = 2 * _numel(grad_out) * _numel(weight) // max(_shape(weight)[0], 1)
    return fwd * (int(bool(mask[0])) + int(bool(mask[1])))


def _attention(args, out) -> int:
    q, k = args[0], args[1]
    *batch, s_q, d = _shape(q)
    s_kv = _shape(k)[-2]
    d_v = _shape(args[2])[-1]
    b = math.prod(batch)
    return 2 * b * s_q * s_kv * d + 2 * b * s_q * s_kv * d_v


#: FLOP formulas the op table names (``Op.flops``): ``(args, out) -> FLOPs``.
FORMULAS = {
    "mm": _mm, "addmm": _addmm, "bmm": _bmm, "baddbmm": _baddbmm, "linear": _linear,
    "mv": lambda args, out: 2 * _numel(args[0]), "addmv": lambda args, out: 2 * _numel(args[1]),
    "dot": lambda args, out: 2 * _numel(args[0]), "matmul": _matmul, "einsum": _einsum,
    "conv": _conv, "conv_transpose": lambda args, out: _conv(args, out, transposed=True),
    "convolution": _convolution, "conv_backward": _conv_backward, "attention": _attention,
}
# Per-element FLOPs of the classes counted by elements, when the entry does not say.
_DEFAULT_WEIGHT = {OpClass.ELEMENTWISE: 1, OpClass.REDUCTION: 1, OpClass.NORM: 8}


def node_flops(target, args: list, kwargs: dict, out) -> int:
    """FLOPs of one ATen call given its (fake or real) tensor arguments and output."""
    cls = op_class(target)
    entry = op_table.lookup(target)
    rule = entry.flops if entry is not None else None
    if cls in (OpClass.MATMUL, OpClass.CONV, OpClass.ATTENTION):
        if not isinstance(rule, str):
            return 0
        try:
            return FORMULAS[rule](list(args), out)
        except (IndexError, ValueError, TypeError):
            return 0
    if cls not in _DEFAULT_WEIGHT:
        return 0
    weight = rule if isinstance(rule, int) else _DEFAULT_WEIGHT[cls]
    if cls == OpClass.ELEMENTWISE:
        return _numel(_first_tensor(out)) * weight
    return _numel(_first_tensor(list(args))) * weight
