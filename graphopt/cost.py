"""The cost model: FLOPs, memory traffic and time for one ATen op, and the alpha-beta link model.

Everything that partitions, fuses or plans memory asks this module what a node costs, so the
formulas live here once and nowhere else. Which family an op is in and which formula or
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

Time (roofline): ``t = max(flops / peak, (bytes_read + bytes_written) / bandwidth)`` where ``peak`` is
the device's matrix peak for matmul-class ops at the op's dtype and its vector peak otherwise.
Communication (alpha-beta): ``t = alpha + bytes / beta`` per message.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from graphopt import op_table
from graphopt.op_table import OpClass, op_name

__all__ = [
    "OpClass", "op_class", "op_name", "node_flops", "tensor_bytes", "DeviceSpec", "LinkSpec",
    "DEVICES", "LINKS", "get_device", "get_link", "roofline_seconds",
]


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


@dataclass(frozen=True)
class DeviceSpec:
    """Peak rates of one device, for roofline estimates.

    ``matmul_flops`` maps a dtype name to the dense matrix-unit peak (FLOP/s); ``vector_flops`` is
    the non-matrix peak; ``bandwidth`` is main-memory bandwidth in bytes/s; ``memory`` in bytes;
    ``launch_seconds`` the fixed cost every op pays (kernel launch, or eager dispatch on a CPU).

    A spec measured by ``graphopt calibrate`` (see :mod:`graphopt.device_spec`) also carries what
    the presets cannot know: ``view_seconds`` (the dispatch cost of an aliasing op, which moves no
    bytes), ``matmul_curve`` (dtype -> ``((flops, flop_per_s), ...)`` measured at several sizes, since
    small matmuls run far below the peak), the measured links ``p2p_link`` and ``allreduce_link``
    (the ring all-reduce's per-hop model), ``device_type`` (``cpu`` or ``cuda``),
    ``attention_curve`` (``((flops, flop_per_s), ...)`` of the fused attention op, which runs well
    below the matmul rate on a CPU) and ``random_rate`` (random numbers drawn per second).
    """

    name: str
    matmul_flops: dict = field(default_factory=dict)
    vector_flops: float = 1e12
    bandwidth: float = 1e11
    memory: int = 16 * 2**30
    launch_seconds: float = 0.0
    view_seconds: float = 0.0
    matmul_curve: dict = field(default_factory=dict)
    p2p_link: LinkSpec | None = None
    allreduce_link: LinkSpec | None = None
    device_type: str = ""
    attention_curve: tuple = ()
    random_rate: float = 0.0

    def matmul_peak(self, dtype: str) -> float:
        return self.matmul_flops.get(dtype, self.matmul_flops.get("float32", self.vector_flops))


@dataclass(frozen=True)
class LinkSpec:
    """Alpha-beta model of a point-to-point link: ``alpha + bytes / beta`` seconds a message."""

    name: str
    alpha: float  # seconds of latency per message
    beta: float   # bytes per second

    def seconds(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else self.alpha + nbytes / self.beta


# Dense (no sparsity) datasheet peaks.
DEVICES = {
    "h100": DeviceSpec("NVIDIA H100 SXM", {"float32": 494.7e12 / 2, "tf32": 494.7e12,
                                           "bfloat16": 989.4e12, "float16": 989.4e12},
                       vector_flops=66.9e12, bandwidth=3.35e12, memory=80 * 2**30,
                       launch_seconds=3e-6),
    "a100": DeviceSpec("NVIDIA A100 SXM 80GB", {"float32": 156e12 / 2, "tf32": 156e12,
                                                "bfloat16": 312e12, "float16": 312e12},
                       vector_flops=19.5e12, bandwidth=2.039e12, memory=80 * 2**30,
                       launch_seconds=3e-6),
    "cpu": DeviceSpec("generic 16-core AVX-512 CPU", {"float32": 1.5e12, "bfloat16": 3e12},
                      vector_flops=1.5e12, bandwidth=100e9, memory=64 * 2**30),
}
LINKS = {
    "nvlink4": LinkSpec("NVLink 4 (H100, per direction)", alpha=2e-6, beta=450e9),
    "nvlink3": LinkSpec("NVLink 3 (A100, per direction)", alpha=2e-6, beta=300e9),
    "pcie4": LinkSpec("PCIe 4.0 x16", alpha=5e-6, beta=25e9),
    "ethernet100": LinkSpec("100 Gb/s Ethernet", alpha=20e-6, beta=12.5e9),
    "loopback": LinkSpec("gloo over loopback (one host)", alpha=30e-6, beta=5e9),
}


def get_device(name_or_spec) -> DeviceSpec:
    if isinstance(name_or_spec, DeviceSpec):
        return name_or_spec
    try:
        return DEVICES[str(name_or_spec).lower()]
    except KeyError:
        raise ValueError(f"unknown device {name_or_spec!r}; known: {', '.join(DEVICES)}") from None


def get_link(name_or_spec) -> LinkSpec:
    if isinstance(name_or_spec, LinkSpec):
        return name_or_spec
    try:
        return LINKS[str(name_or_spec).lower()]
    except KeyError:
        raise ValueError(f"unknown link {name_or_spec!r}; known: {', '.join(LINKS)}") from None


def roofline_seconds(flops: int, bytes_moved: int, op_cls: str, dtype: str,
                     device: DeviceSpec) -> float:
    """Lower-bound time of one op: the slower of its compute and its memory traffic."""
    if flops == 0 and bytes_moved == 0:
        return 0.0
    peak = device.matmul_peak(dtype) if op_cls in (OpClass.MATMUL, OpClass.CONV,
                                                   OpClass.ATTENTION) else device.vector_flops
    return max(flops / peak, bytes_moved / device.bandwidth) + device.launch_seconds
