"""What fusion may do with each ATen op, and how a fused kernel computes it.

Every ATen op the capture produces falls in one fusion kind:

* ``pointwise``: one output element from the same-index elements of its operands (broadcasting
  allowed): arithmetic, comparisons, ``where``, casts, transcendental functions.
* ``view``: a reshape that keeps the row-major order of the elements (``view``, ``reshape``,
  ``squeeze``, ``unsqueeze``, ``flatten``). Inside a fused kernel it costs nothing: a value's
  row-major linear index is the same before and after.
* ``broadcast``: ``expand``, ``broadcast_to``: inside a kernel, a read of the same element at
  many indices; also free.
* ``reduction``: ``sum``, ``amax`` and ``amin`` over some dimensions (mean, var, softmax and the
  normalisations reach fusion as these after :mod:`graphopt.passes.decompose_ops`).
* ``injective``: views that reorder elements (permute, transpose, slicing) and data movement
  (cat, gather, embedding). Fused kernels read them through strides at their boundary; they
  never sit inside one.
* ``opaque``: matmul, convolution, attention, random and custom ops, and anything unknown. They
  stay in ATen; fusion never fails on them.

A pointwise op is fusible exactly when this module has a :class:`Rule` for it: the rule is how
code generation writes it as a Triton expression, so the passes and the code generator agree by
construction. Rules compute half-precision values in float32, as Inductor does.

Example:
    >>> fusion_kind(node)                       # "pointwise", "reduction", "view", ...
    >>> rule = POINTWISE["add.Tensor"]
    >>> rule.emit(["x", "y"], {"alpha": 2})
    '(x + y * 2)'
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx

from graphopt.cost import OpClass, op_class

__all__ = ["FusionKind", "Rule", "Reduction", "POINTWISE", "VIEWS", "BROADCASTS", "REDUCTIONS",
           "CONSTANTS",
           "constant_value", "reduced_dims", "torch_reduced_dims", "overload_key",
           "fusion_kind", "not_fusible_reason", "static_meta", "compute_type", "storage_type",
           "literal", "FUSIBLE_DTYPES"]


class FusionKind:
    POINTWISE = "pointwise"
    VIEW = "view"
    BROADCAST = "broadcast"
    REDUCTION = "reduction"
    INJECTIVE = "injective"
    OPAQUE = "opaque"
    INPUT = "input"  # placeholders and parameters


# Output dtypes a fused kernel may produce. float64 stays in ATen: Triton turns Python float
# literals into float32 constants, which would silently lose precision there.
FUSIBLE_DTYPES = {torch.float32, torch.float16, torch.bfloat16, torch.bool}

_STORAGE = {torch.float32: "tl.float32", torch.float16: "tl.float16",
            torch.bfloat16: "tl.bfloat16", torch.float64: "tl.float64", torch.bool: "tl.int1",
            torch.int8: "tl.int8", torch.uint8: "tl.uint8", torch.int16: "tl.int16",
            torch.int32: "tl.int32", torch.int64: "tl.int64"}


def storage_type(dtype: torch.dtype) -> str:
    """The Triton type a tensor of ``dtype`` is stored as."""
    return _STORAGE[dtype]


def compute_type(dtype: torch.dtype) -> str:
    """The Triton type values of ``dtype`` are computed in (half types widen to float32)."""
    if dtype in (torch.float16, torch.bfloat16):
        return "tl.float32"
    return _STORAGE[dtype]


def literal(value, ty: str) -> str:
    """A Python scalar written as Triton source of type ``ty``."""
    if ty == "tl.int1":
        return "1" if value else "0"
    if ty.startswith("tl.float"):
        v = float(value)
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return 'float("inf")' if v > 0 else 'float("-inf")'
        return repr(v)
    return str(int(value))


# --------------------------------------------------------------------------------------------
# Pointwise rules
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """How one pointwise ATen overload becomes a Triton expression.

    Attributes:
        operands: how many leading positional arguments are values (tensors or scalars); the
            remaining arguments and the keyword arguments are attributes handed to ``emit``.
        types: one letter per operand saying which type it is cast to before ``emit``:
            ``o`` the output's compute type, ``p`` the type both operands promote to (for
            comparisons), ``b`` bool, ``r`` left as it is.
        emit: ``(operand_exprs, attrs) -> expr``.
        attrs: names of the positional attributes, in order.
        helpers: module-level jit helpers the expression calls (e.g. ``_tanh``).
        check: extra legality test on the fx node (e.g. a cast must not change device).
    """

    operands: int
    types: str
    emit: Callable[[list, dict], str]
    attrs: tuple = ()
    helpers: tuple = ()
    check: Callable[[torch.fx.Node], bool] | None = None


def _f(fmt: str) -> Callable[[list, dict], str]:
    return lambda a, k: fmt.format(*a)


def _alpha(op: str, swap: bool = False):
    def emit(a, k):
        x, y = (a[1], a[0]) if swap else (a[0], a[1])
        alpha = k.get("alpha", 1)
        return f"({x} {op} {y})" if alpha == 1 else \
            f"({x} {op} {y} * {literal(alpha, 'tl.float32')})"
    return emit


def _pow_ok(node: torch.fx.Node) -> bool:
    e = node.args[1]
    return isinstance(e, (int, float)) and not isinstance(e, bool) and (
        e in (0, 1, 2, 3, 4, 0.5, -0.5, -1, -2) or not float(e).is_integer())


def _pow(a, k):
    x, e = a[0], k["exponent"]
    table = {0: "({x} * 0.0 + 1.0)", 1: "{x}", 2: "({x} * {x})", 3: "({x} * {x} * {x})",
             4: "(({x} * {x}) * ({x} * {x}))", 0.5: "tl.sqrt({x})", -0.5: "tl.rsqrt({x})",
             -1: "(1.0 / {x})", -2: "(1.0 / ({x} * {x}))"}
    if e in table:
        return table[e].format(x=x)
    # Non-integer exponents: NaN for negative bases, as torch gives.
    return f"tl.exp2(tl.log2({x}) * {literal(e, 'tl.float32')})"


def _clamp(a, k):
    x, lo, hi = a[0], k.get("min"), k.get("max")
    if lo is not None:
        lo = literal(lo, "tl.float32")
        x = f"tl.where({x} < {lo}, {lo}, {x})"
    if hi is not None:
        hi = literal(hi, "tl.float32")
        x = f"tl.where({x} > {hi}, {hi}, {x})"
    return x


def _to_copy_ok(node: torch.fx.Node) -> bool:
    allowed = {"dtype", "layout", "device", "memory_format", "pin_memory", "non_blocking"}
    if set(node.kwargs) - allowed or len(node.args) > 1:
        return False
    src = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    out = node.meta.get("val")
    if not isinstance(src, torch.Tensor) or not isinstance(out, torch.Tensor):
        return False
    return src.device == out.device and node.kwargs.get("layout") in (None, torch.strided)


def _bool_out(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.bool


def _float_in(node: torch.fx.Node) -> bool:
    val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


_IDENTITY = Rule(1, "r", _f("{0}"))
_CAST = Rule(1, "r", _f("{0}"), check=_to_copy_ok)
_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}

POINTWISE: dict[str, Rule] = {
    "add.Tensor": Rule(2, "oo", _alpha("+")), "add.Scalar": Rule(2, "oo", _alpha("+")),
    "sub.Tensor": Rule(2, "oo", _alpha("-")), "sub.Scalar": Rule(2, "oo", _alpha("-")),
    "rsub.Tensor": Rule(2, "oo", _alpha("-", swap=True)),
    "rsub.Scalar": Rule(2, "oo", _alpha("-", swap=True)),
    "mul.Tensor": Rule(2, "oo", _f("({0} * {1})")), "mul.Scalar": Rule(2, "oo", _f("({0} * {1})")),
    "div.Tensor": Rule(2, "oo", _f("({0} / {1})")), "div.Scalar": Rule(2, "oo", _f("({0} / {1})")),
    "neg.default": Rule(1, "o", _f("(-{0})")),
    "abs.default": Rule(1, "o", _f("tl.abs({0})")),
    "reciprocal.default": Rule(1, "o", _f("(1.0 / {0})")),
    "exp.default": Rule(1, "o", _f("tl.exp({0})")),
    "exp2.default": Rule(1, "o", _f("tl.exp2({0})")),
    "log.default": Rule(1, "o", _f("tl.log({0})")),
    "log2.default": Rule(1, "o", _f("tl.log2({0})")),
    "sqrt.default": Rule(1, "o", _f("tl.sqrt({0})")),
    "rsqrt.default": Rule(1, "o", _f("tl.rsqrt({0})")),
    "sin.default": Rule(1, "o", _f("tl.sin({0})")),
    "cos.default": Rule(1, "o", _f("tl.cos({0})")),
    "erf.default": Rule(1, "o", _f("tl.erf({0})")),
    "tanh.default": Rule(1, "o", _f("_tanh({0})"), helpers=("_tanh",)),
    "sigmoid.default": Rule(1, "o", _f("(1.0 / (1.0 + tl.exp(-{0})))")),
    "floor.default": Rule(1, "o", _f("tl.floor({0})"), check=_float_in),
    "ceil.default": Rule(1, "o", _f("tl.ceil({0})"), check=_float_in),
    # NaN must propagate: `x < 0` is False for NaN, so NaN passes through.
    "relu.default": Rule(1, "o", _f("tl.where({0} < 0, 0.0, {0})"), check=_float_in),
    "sign.default": Rule(1, "o", _f("tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, {0}))"),
                         check=_float_in),
    "maximum.default": Rule(2, "oo", _f("tl.maximum({0}, {1}, "
                                        "propagate_nan=tl.PropagateNan.ALL)")),
    "minimum.default": Rule(2, "oo", _f("tl.minimum({0}, {1}, "
                                        "propagate_nan=tl.PropagateNan.ALL)")),
    "clamp_min.default": Rule(2, "oo", _f("tl.where({0} < {1}, {1}, {0})")),
    "clamp_max.default": Rule(2, "oo", _f("tl.where({0} > {1}, {1}, {0})")),
    "clamp.default": Rule(1, "o", _clamp, attrs=("min", "max"),
                          check=lambda n: _float_in(n) and all(
                              isinstance(v, (int, float, type(None))) for v in n.args[1:])),
    "pow.Tensor_Scalar": Rule(1, "o", _pow, attrs=("exponent",), check=_pow_ok),
    "where.self": Rule(3, "boo", _f("tl.where({0}, {1}, {2})")),
    "logical_not.default": Rule(1, "b", _f("({0} == 0)")),
    "logical_and.default": Rule(2, "bb", _f("({0} & {1})")),
    "logical_or.default": Rule(2, "bb", _f("({0} | {1})")),
    "bitwise_and.Tensor": Rule(2, "bb", _f("({0} & {1})"), check=_bool_out),
    "bitwise_or.Tensor": Rule(2, "bb", _f("({0} | {1})"), check=_bool_out),
    "__and__.Tensor": Rule(2, "bb", _f("({0} & {1})"), check=_bool_out),
    "__or__.Tensor": Rule(2, "bb", _f("({0} | {1})"), check=_bool_out),
    "bitwise_not.default": Rule(1, "b", _f("({0} == 0)"), check=_bool_out),
    "isnan.default": Rule(1, "r", _f("({0} != {0})")),
    "_to_copy.default": _CAST,
    "clone.default": Rule(1, "r", _f("{0}"),
                          check=lambda n: n.kwargs.get("memory_format") in
                          (None, torch.contiguous_format, torch.preserve_format)),
    "lift_fresh_copy.default": _IDENTITY,
}
for _name, _op in _CMP.items():
    POINTWISE[f"{_name}.Tensor"] = Rule(2, "pp", _f(f"({{0}} {_op} {{1}})"))
    POINTWISE[f"{_name}.Scalar"] = Rule(2, "pp", _f(f"({{0}} {_op} {{1}})"))

# Broadcasts: the same element read at many indices.
BROADCASTS = {"expand.default", "broadcast_to.default"}
# Reshapes (the identity on a value's row-major linear index) and broadcasts: inside a kernel
# both only change which element an index reads, so they compute nothing.
VIEWS = {"view.default", "_unsafe_view.default", "reshape.default", "squeeze.default",
         "squeeze.dim", "squeeze.dims", "unsqueeze.default", "flatten.using_ints",
         "unflatten.int", "alias.default", "detach.default"} | BROADCASTS


@dataclass(frozen=True)
class Reduction:
    """A reduction ATen overload: which Triton combine it is and where its dims are."""

    combine: str        # "sum" | "max" | "min"
    dims_arg: int | None  # positional index of the dim list (None: all dims)
    keepdim_arg: int | None


# Creation ops that fill a tensor with one Python scalar: inside a kernel they are a literal.
# Maps the overload to the positional index of the value.
CONSTANTS = {"scalar_tensor.default": 0, "full.default": 1}


def constant_value(node: torch.fx.Node):
    """The scalar a CONSTANTS node fills its tensor with."""
    idx = CONSTANTS[overload_key(node.target)]
    return node.args[idx] if len(node.args) > idx else node.kwargs.get("fill_value")


REDUCTIONS = {"sum.dim_IntList": Reduction("sum", 1, 2),
              "sum.default": Reduction("sum", None, None),
              "amax.default": Reduction("max", 1, 2), "amin.default": Reduction("min", 1, 2)}


def overload_key(target) -> str:
    """``aten.add.Tensor`` -> ``"add.Tensor"``; non-ATen targets give ``""``."""
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return f"{target._opname}.{target._overloadname}"
    return ""


def static_meta(node: torch.fx.Node) -> torch.Tensor | None:
    """The node's example tensor when its shape and strides are plain ints, else None."""
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return None
    try:
        if not all(isinstance(s, int) for s in (*val.shape, *val.stride())):
            return None
    except (RuntimeError, NotImplementedError):
        return None
    return val


def not_fusible_reason(node: torch.fx.Node) -> str | None:
    """Why ``node`` cannot sit inside a fused kernel (a short code), or None when it can."""
    if node.op != "call_function":
        return "not_an_op"
    key = overload_key(node.target)
    if key not in POINTWISE and key not in VIEWS and key not in REDUCTIONS \
            and key not in CONSTANTS:
        return "no_rule"
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        return "not_a_tensor"
    if static_meta(node) is None:
        return "dynamic_shape"
    if val.numel() == 0:
        return "empty"
    if val.dtype not in FUSIBLE_DTYPES:
        return "dtype"
    for arg in node.all_input_nodes:
        a = arg.meta.get("val")
        if not isinstance(a, torch.Tensor):
            return "not_a_tensor"
        if static_meta(arg) is None:
            return "dynamic_shape"
        if a.dtype not in _STORAGE or a.device != val.device:
            return "dtype"
    if key in POINTWISE:
        rule = POINTWISE[key]
        if rule.check is not None and not rule.check(node):
            return "unsupported_args"
        if "o" in rule.types and val.dtype == torch.bool and key != "where.self":
            return "dtype"  # arithmetic on bools (True + True) is not what the rule writes
    if key in REDUCTIONS:
        if node.kwargs.get("dtype") is not None and node.kwargs["dtype"] != val.dtype:
            return "unsupported_args"
        if not val.dtype.is_floating_point:
            return "dtype"
        if not reduced_dims(node):
            return "trivial_reduction"
    if key in CONSTANTS and not isinstance(constant_value(node), (int, float, bool)):
        return "unsupported_args"
    return None


def reduced_dims(node: torch.fx.Node) -> tuple[int, ...]:
    """The dims a reduction node reduces, normalised (sorted, non-negative, size-1 dims left out).

    ``sum(x, [])`` and ``amax(x, [])`` reduce every dim, as in torch.
    """
    x = node.args[0].meta["val"]
    return tuple(d for d in torch_reduced_dims(node) if x.shape[d] != 1)


def torch_reduced_dims(node: torch.fx.Node) -> tuple[int, ...]:
    """The dims a reduction node reduces as torch counts them (size-1 dims included)."""
    red = REDUCTIONS[overload_key(node.target)]
    x = node.args[0].meta["val"]
    ndim = x.dim()
    dims = None
    if red.dims_arg is not None:
        dims = node.args[red.dims_arg] if len(node.args) > red.dims_arg else node.kwargs.get("dim")
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        dims = list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({d % ndim for d in dims})) if ndim else ()


def fusion_kind(node: torch.fx.Node) -> str:
    """The fusion kind of an fx node (see the module docstring)."""
    if node.op in ("placeholder", "get_attr"):
        return FusionKind.INPUT
    if node.op != "call_function":
        return FusionKind.OPAQUE
    key = overload_key(node.target)
    if key in REDUCTIONS:
        return FusionKind.REDUCTION
    if key in BROADCASTS:
        return FusionKind.BROADCAST
    if key in VIEWS:
        return FusionKind.VIEW
    if key in POINTWISE or key in CONSTANTS:
        return FusionKind.POINTWISE
    if not isinstance(node.target, torch._ops.OpOverload):
        return FusionKind.INJECTIVE if getattr(node.target, "__name__", "") == "getitem" \
            else FusionKind.OPAQUE
    cls = op_class(node.target)
    if cls in (OpClass.VIEW, OpClass.INJECTIVE):
        return FusionKind.INJECTIVE
    return FusionKind.OPAQUE
