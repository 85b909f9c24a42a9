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

Which overloads fuse, and how, is written in their :mod:`graphopt.op_table` entries
(``Op.fuse``); this module reads them through live views keyed by :func:`overload_key`
(``POINTWISE``, ``VIEWS``, ``BROADCASTS``, ``REDUCTIONS``, ``CONSTANTS``) and holds the emitters
and legality checks entries name. A pointwise op is fusible exactly when its entry gives it a
:class:`Rule`: the rule is how code generation writes it as a Triton expression, so the passes
and the code generator agree by construction. Rules compute half-precision values in float32,
as Inductor does.

Example:
    >>> fusion_kind(node)                       # "pointwise", "reduction", "view", ...
    >>> rule = POINTWISE["add.Tensor"]
    >>> rule.emit(["x", "y"], {"alpha": 2})
    '(x + y * 2.0)'
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from functools import cache

import torch
import torch.fx

from graphopt import op_table
from graphopt.cost import OpClass, op_class
from graphopt.op_table import FusionKind, overload_key
from graphopt.op_table import Reduce as Reduction

__all__ = ["FusionKind", "Rule", "Reduction", "POINTWISE", "VIEWS", "BROADCASTS", "REDUCTIONS",
           "CONSTANTS", "EMITTERS", "CHECKS", "rule_of",
           "constant_value", "reduced_dims", "torch_reduced_dims", "overload_key",
           "fusion_kind", "not_fusible_reason", "static_meta", "compute_type", "storage_type",
           "literal", "FUSIBLE_DTYPES"]


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


def _keeps_layout(node: torch.fx.Node) -> bool:
    return node.kwargs.get("memory_format") in (None, torch.contiguous_format,
                                                torch.preserve_format)


def _scalar_bounds(node: torch.fx.Node) -> bool:
    return _float_in(node) and all(isinstance(v, (int, float, type(None))) for v in node.args[1:])


# The emitters and checks op-table entries name (``Pointwise.emitter`` / ``Pointwise.check``).
EMITTERS = {"pow": _pow, "clamp": _clamp}
CHECKS = {"float_in": _float_in, "bool_out": _bool_out, "same_device_cast": _to_copy_ok,
          "pow_exponent": _pow_ok, "float_in_scalar_bounds": _scalar_bounds,
          "keeps_layout": _keeps_layout}


def _template(expr: str, alpha: int | None) -> Callable[[list, dict], str]:
    if alpha is None:
        return _f(expr)

    def emit(a, k):
        scale = k.get("alpha", 1)
        if scale != 1:
            a = list(a)
            a[alpha] = f"{a[alpha]} * {literal(scale, 'tl.float32')}"
        return expr.format(*a)
    return emit


@cache
def rule_of(spec: op_table.Pointwise) -> Rule:
    """The :class:`Rule` an op-table entry's :class:`~graphopt.op_table.Pointwise` describes."""
    if bool(spec.expr) == bool(spec.emitter):
        raise ValueError(f"pointwise spec {spec}: give exactly one of expr and emitter")
    emit = EMITTERS[spec.emitter] if spec.emitter else _template(spec.expr, spec.alpha)
    return Rule(len(spec.types), spec.types, emit, tuple(spec.attrs), tuple(spec.calls),
                CHECKS[spec.check] if spec.check else None)


class _Fusible(Mapping):
    """The table's fusible overloads of one kind, keyed by :func:`overload_key`; read live, so
    an entry registered later is seen."""

    def __init__(self, accept: Callable[[object], bool], convert: Callable = lambda s: s):
        self._accept, self._convert = accept, convert

    def __getitem__(self, key):
        spec = op_table.fusion_spec(key) if isinstance(key, str) else None
        if spec is None or not self._accept(spec):
            raise KeyError(key)
        return self._convert(spec)

    def __iter__(self):
        return (k for k in op_table.fusion_keys() if self._accept(op_table.fusion_spec(k)))

    def __len__(self):
        return sum(1 for _ in self)


class _Keys(Set):
    """The keys of a :class:`_Fusible` as a set (membership is all fusion asks of views)."""

    def __init__(self, of: _Fusible):
        self._of = of

    def __contains__(self, key):
        return key in self._of

    def __iter__(self):
        return iter(self._of)

    def __len__(self):
        return len(self._of)


#: Pointwise overloads -> how code generation writes them (:class:`Rule`).
POINTWISE: Mapping[str, Rule] = _Fusible(lambda s: isinstance(s, op_table.Pointwise), rule_of)
# Broadcasts: the same element read at many indices.
BROADCASTS = _Keys(_Fusible(lambda s: isinstance(s, op_table.Reindex) and s.broadcast))
# Reshapes (the identity on a value's row-major linear index) and broadcasts: inside a kernel
# both only change which element an index reads, so they compute nothing.
VIEWS = _Keys(_Fusible(lambda s: isinstance(s, op_table.Reindex)))
#: Reduction overloads -> :class:`Reduction` (combine and dim arguments).
REDUCTIONS: Mapping[str, Reduction] = _Fusible(lambda s: isinstance(s, op_table.Reduce))
# Creation ops that fill a tensor with one Python scalar: inside a kernel they are a literal.
# Maps the overload to the positional index of the value.
CONSTANTS: Mapping[str, int] = _Fusible(lambda s: isinstance(s, op_table.Constant),
                                        lambda s: s.value_arg)


def constant_value(node: torch.fx.Node):
    """The scalar a CONSTANTS node fills its tensor with."""
    idx = CONSTANTS[overload_key(node.target)]
    return node.args[idx] if len(node.args) > idx else node.kwargs.get("fill_value")


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
    if op_table.fusion_spec(key) is None:
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
    spec = op_table.fusion_spec(node.target)
    if spec is not None:
        return spec.kind
    if not isinstance(node.target, torch._ops.OpOverload):
        return FusionKind.INJECTIVE if getattr(node.target, "__name__", "") == "getitem" \
            else FusionKind.OPAQUE
    cls = op_class(node.target)
    if cls in (OpClass.VIEW, OpClass.INJECTIVE):
        return FusionKind.INJECTIVE
    return FusionKind.OPAQUE
