"""The cost model: FLOPs, memory traffic and time for one ATen op, and the alpha-beta link model.

Everything that partitions, fuses or plans memory asks this module what a node costs, so the
formulas live here once and nowhere else.

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

__all__ = [
    "OpClass", "op_class", "op_name", "node_flops", "tensor_bytes", "DeviceSpec", "LinkSpec",
    "DEVICES", "LINKS", "get_device", "get_link", "roofline_seconds",
]


class OpClass:
    """Coarse families the passes reason about (fusion legality, recompute cost, views)."""

    PLACEHOLDER = "placeholder"
    PARAM = "param"
    ELEMENTWISE = "elementwise"
    REDUCTION = "reduction"
    INJECTIVE = "injective"   # views, reshapes, permutes, slicing, cat, gathers
    VIEW = "view"              # aliasing: no new memory
    MATMUL = "matmul"
    CONV = "conv"
    ATTENTION = "attention"
    NORM = "norm"              # composite normalisations (reduction + pointwise)
    RANDOM = "random"
    CREATION = "creation"      # arange, zeros, full: no tensor inputs
    OPAQUE = "opaque"          # anything else: stays in ATen, costed by bytes only


def op_name(target) -> str:
    """The overload packet name of an ATen target (``aten.add.Tensor`` -> ``add``)."""
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target.__name__
    return getattr(target, "__name__", str(target))


_MATMUL = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "addbmm", "dot", "mv", "addmv",
           "_int_mm", "einsum"}
_CONV = {"convolution", "conv1d", "conv2d", "conv3d", "_convolution", "conv_transpose1d",
         "conv_transpose2d", "conv_transpose3d", "cudnn_convolution", "mkldnn_convolution",
         "convolution_backward"}
_ATTENTION = {"scaled_dot_product_attention", "_scaled_dot_product_flash_attention",
              "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu",
              "_scaled_dot_product_cudnn_attention"}
_VIEW = {"view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
         "squeeze", "alias", "as_strided", "slice", "select", "narrow", "unflatten", "flatten",
         "split", "split_with_sizes", "chunk", "unbind", "view_as", "expand_as", "detach",
         "lift_fresh", "lift_fresh_copy", "getitem", "diagonal", "movedim", "unfold", "real",
         "view_as_real", "view_as_complex", "_reshape_alias"}
_INJECTIVE = {"cat", "stack", "index", "index_select", "gather", "embedding", "clone", "contiguous",
              "_to_copy", "to", "copy", "copy_", "pad", "constant_pad_nd", "repeat", "roll", "flip",
              "slice_scatter", "select_scatter", "index_put", "scatter", "tril", "triu", "where_self",
              "masked_fill", "embedding_dense_backward", "_unsafe_index", "repeat_interleave"}
_REDUCTION = {"sum", "mean", "amax", "amin", "max", "min", "prod", "var", "std", "var_mean",
              "std_mean", "argmax", "argmin", "logsumexp", "norm", "linalg_vector_norm", "all", "any",
              "cumsum", "cumprod", "diff"}
_NORM = {"layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "batch_norm",
         "native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
         "_native_batch_norm_legit_functional", "rms_norm", "_fused_rms_norm", "softmax",
         "_softmax", "log_softmax", "_log_softmax", "native_layer_norm_backward",
         "native_group_norm_backward", "native_batch_norm_backward", "_softmax_backward_data",
         "_log_softmax_backward_data", "adaptive_avg_pool2d", "avg_pool2d", "max_pool2d",
         "max_pool2d_with_indices", "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward",
         "max_pool2d_with_indices_backward", "avg_pool2d_backward"}
_RANDOM = {"dropout", "native_dropout", "rand", "randn", "rand_like", "randn_like", "randint",
           "bernoulli", "bernoulli_", "normal", "uniform", "multinomial", "randperm", "randint_like",
           "philox_rand"}
_CREATION = {"arange", "zeros", "ones", "full", "empty", "zeros_like", "ones_like", "full_like",
             "empty_like", "new_ones", "new_zeros", "new_full", "new_empty", "scalar_tensor",
             "empty_strided", "eye", "linspace", "_tensor_constant"}
# Per-element weight of pointwise ops that cost more than one arithmetic instruction.
_POINTWISE_WEIGHT = {"gelu": 8, "gelu_backward": 10, "tanh": 4, "exp": 4, "log": 4, "erf": 4,
                     "sigmoid": 4, "silu": 5, "pow": 2, "rsqrt": 2, "sqrt": 2, "div": 1,
                     "tanh_backward": 3, "sigmoid_backward": 3, "silu_backward": 8, "sin": 4,
                     "cos": 4, "log1p": 4, "expm1": 4, "softplus": 6, "mish": 10, "hardswish": 4}
_NORM_WEIGHT = {"softmax": 5, "_softmax": 5, "log_softmax": 5, "_log_softmax": 5,
                "_softmax_backward_data": 4, "_log_softmax_backward_data": 4}


def op_class(target) -> str:
    """Classify an ATen target; unknown ops are OPAQUE (costed by bytes, never fused)."""
    name = op_name(target)
    if name in _MATMUL:
        return OpClass.MATMUL
    if name in _CONV:
        return OpClass.CONV
    if name in _ATTENTION:
        return OpClass.ATTENTION
    if name in _VIEW:
        return OpClass.VIEW
    if name in _INJECTIVE:
        return OpClass.INJECTIVE
    if name in _REDUCTION:
        return OpClass.REDUCTION
    if name in _NORM:
        return OpClass.NORM
    if name in _RANDOM:
        return OpClass.RANDOM
    if name in _CREATION:
        return OpClass.CREATION
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


def _matmul_flops(name: str, args: list, out) -> int:
    if name in ("mm", "_int_mm"):
        (m, k), n = _shape(args[0]), _shape(args[1])[1]
        return 2 * m * n * k
    if name == "addmm":
        (m, k), n = _shape(args[1]), _shape(args[2])[1]
        return 2 * m * n * k
    if name == "bmm":
        (b, m, k), n = _shape(args[0]), _shape(args[1])[2]
        return 2 * b * m * n * k
    if name in ("baddbmm", "addbmm"):
        (b, m, k), n = _shape(args[1]), _shape(args[2])[2]
        return 2 * b * m * n * k
    if name == "linear":
        k = _shape(args[0])[-1]
        return 2 * _numel(args[0]) // max(k, 1) * k * _shape(args[1])[0]
    if name in ("mv", "addmv"):
        mat = args[0] if name == "mv" else args[1]
        return 2 * _numel(mat)
    if name == "dot":
        return 2 * _numel(args[0])
    if name == "matmul":
        a, b = args[0], args[1]
        k = _shape(a)[-1]
        return 2 * _numel(out) * k
    if name == "einsum":
        # Without the contraction plan we take the larger operand times the output's extent.
        t = [a for a in args[1] if isinstance(a, torch.Tensor)] if len(args) > 1 else []
        return 2 * max((_numel(x) for x in t), default=0)
    return 0


def _conv_flops(name: str, args: list, out) -> int:
    if name == "convolution_backward":
        grad_out, inp, weight = args[0], args[1], args[2]
        mask = args[-1] if isinstance(args[-1], (list, tuple)) else [True, True, True]
        fwd = 2 * _numel(grad_out) * _numel(weight) // max(_shape(weight)[0], 1)
        return fwd * (int(bool(mask[0])) + int(bool(mask[1])))
    inp, weight = args[0], args[1]
    transposed = "transpose" in name or (name in ("convolution", "_convolution") and len(args) > 6
                                          and bool(args[6]))
    w = _shape(weight)
    kernel = math.prod(w[2:])
    if transposed:
        groups_cout = w[1]  # weight is (C_in, C_out/groups, *k)
        return 2 * _numel(inp) * groups_cout * kernel
    return 2 * _numel(out) * w[1] * kernel  # weight is (C_out, C_in/groups, *k)


def _attention_flops(args: list) -> int:
    q, k = args[0], args[1]
    *batch, s_q, d = _shape(q)
    s_kv = _shape(k)[-2]
    d_v = _shape(args[2])[-1]
    b = math.prod(batch)
    return 2 * b * s_q * s_kv * d + 2 * b * s_q * s_kv * d_v


def node_flops(target, args: list, kwargs: dict, out) -> int:
    """FLOPs of one ATen call given its (fake or real) tensor arguments and output."""
    name = op_name(target)
    cls = op_class(target)
    try:
        if cls == OpClass.MATMUL:
            return _matmul_flops(name, list(args), out)
        if cls == OpClass.CONV:
            return _conv_flops(name, list(args), out)
        if cls == OpClass.ATTENTION:
            return _attention_flops(list(args))
    except (IndexError, ValueError, TypeError):
        return 0
    first = _first_tensor(out)
    if cls == OpClass.ELEMENTWISE:
        return _numel(first) * _POINTWISE_WEIGHT.get(name, 1)
    if cls == OpClass.REDUCTION:
        return _numel(_first_tensor(list(args)))
    if cls == OpClass.NORM:
        return _numel(_first_tensor(list(args))) * _NORM_WEIGHT.get(name, 8)
    return 0


@dataclass(frozen=True)
class DeviceSpec:
    """Peak rates of one device, for roofline estimates.

    ``matmul_flops`` maps a dtype name to the dense matrix-unit peak (FLOP/s); ``vector_flops`` is
    the non-matrix peak; ``bandwidth`` is main-memory bandwidth in bytes/s; ``memory`` in bytes.
    """

    name: str
    matmul_flops: dict = field(default_factory=dict)
    vector_flops: float = 1e12
    bandwidth: float = 1e11
    memory: int = 16 * 2**30
    launch_seconds: float = 0.0

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
