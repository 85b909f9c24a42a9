"""The entries of the op table (:mod:`graphopt.op_table` says what each field means).

One entry per op: to teach graphopt an op, add it here. Ops that need no more than their family
are written as name lists under their class; ops with a FLOP formula, a fused-kernel expression
or a row rule get an entry of their own. Pointwise arithmetic leaves its class to torch's tags
(``cls=None``), which differ between overloads.
"""
from __future__ import annotations

from graphopt.op_table import Constant, Effect, Op, OpClass, Pointwise, Reduce, Reindex, rows

__all__ = ["ENTRIES"]

C = OpClass


def _each(overloads: str, value) -> dict:
    """The same fusion spec or row rule for several overloads: ``_each("Tensor Scalar", r)``."""
    return {o: value for o in overloads.split()}


def _family(cls: str, names: str, **fields) -> list[Op]:
    return [Op(n, cls, **fields) for n in names.split()]


# Row rules shared by many entries.
POINTWISE_ROWS = rows("pointwise")       # arguments align on the right, broadcasting
SAME_ORDER = rows("same_order")          # a reshape that keeps row-major order
RESHAPE = rows("same_order", out_shape_arg=1)
VIEW_FUSE = Reindex()


def _pw(expr: str, types: str = "o", **kw) -> Pointwise:
    return Pointwise(types, expr, **kw)


_FLOAT_ONLY = {"check": "float_in"}
_BOOL_ONLY = {"check": "bool_out"}
_MAXMIN = "tl.{}({{0}}, {{1}}, propagate_nan=tl.PropagateNan.ALL)"

_POINTWISE = [
    Op("add", fuse=_each("Tensor Scalar", _pw("({0} + {1})", "oo", alpha=1))),
    Op("sub", fuse=_each("Tensor Scalar", _pw("({0} - {1})", "oo", alpha=1))),
    Op("rsub", fuse=_each("Tensor Scalar", _pw("({1} - {0})", "oo", alpha=0))),
    Op("mul", fuse=_each("Tensor Scalar", _pw("({0} * {1})", "oo"))),
    Op("div", fuse=_each("Tensor Scalar", _pw("({0} / {1})", "oo"))),
    Op("neg", fuse={"default": _pw("(-{0})")}),
    Op("abs", fuse={"default": _pw("tl.abs({0})")}),
    Op("reciprocal", fuse={"default": _pw("(1.0 / {0})")}),
    Op("exp", flops=4, fuse={"default": _pw("tl.exp({0})")}),
    Op("exp2", fuse={"default": _pw("tl.exp2({0})")}),
    Op("log", flops=4, fuse={"default": _pw("tl.log({0})")}),
    Op("log2", fuse={"default": _pw("tl.log2({0})")}),
    Op("sqrt", flops=2, fuse={"default": _pw("tl.sqrt({0})")}),
    Op("rsqrt", flops=2, fuse={"default": _pw("tl.rsqrt({0})")}),
    Op("sin", flops=4, fuse={"default": _pw("tl.sin({0})")}),
    Op("cos", flops=4, fuse={"default": _pw("tl.cos({0})")}),
    Op("erf", flops=4, fuse={"default": _pw("tl.erf({0})")}),
    Op("tanh", flops=4, fuse={"default": _pw("_tanh({0})", calls=("_tanh",))}),
    Op("sigmoid", flops=4, fuse={"default": _pw("(1.0 / (1.0 + tl.exp(-{0})))")}),
    Op("floor", fuse={"default": _pw("tl.floor({0})", **_FLOAT_ONLY)}),
    Op("ceil", fuse={"default": _pw("tl.ceil({0})", **_FLOAT_ONLY)}),
    # NaN must propagate: `x < 0` is False for NaN, so NaN passes through.
    Op("relu", fuse={"default": _pw("tl.where({0} < 0, 0.0, {0})", **_FLOAT_ONLY)}),
    Op("sign", fuse={"default": _pw("tl.where({0} > 0, 1.0, tl.where({0} < 0, -1.0, {0}))",
                                    **_FLOAT_ONLY)}),
    Op("maximum", fuse={"default": _pw(_MAXMIN.format("maximum"), "oo")}),
    Op("minimum", fuse={"default": _pw(_MAXMIN.format("minimum"), "oo")}),
    Op("clamp_min", fuse={"default": _pw("tl.where({0} < {1}, {1}, {0})", "oo")}),
    Op("clamp_max", fuse={"default": _pw("tl.where({0} > {1}, {1}, {0})", "oo")}),
    Op("clamp", fuse={"default": Pointwise("o", emitter="clamp", attrs=("min", "max"),
                                           check="float_in_scalar_bounds")}),
    Op("pow", flops=2, fuse={"Tensor_Scalar": Pointwise("o", emitter="pow", attrs=("exponent",),
                                                        check="pow_exponent")}),
    Op("where", fuse={"self": _pw("tl.where({0}, {1}, {2})", "boo")}),
    Op("logical_not", fuse={"default": _pw("({0} == 0)", "b")}),
    Op("logical_and", fuse={"default": _pw("({0} & {1})", "bb")}),
    Op("logical_or", fuse={"default": _pw("({0} | {1})", "bb")}),
    Op("bitwise_and", fuse={"Tensor": _pw("({0} & {1})", "bb", **_BOOL_ONLY)}),
    Op("bitwise_or", fuse={"Tensor": _pw("({0} | {1})", "bb", **_BOOL_ONLY)}),
    Op("__and__", fuse={"Tensor": _pw("({0} & {1})", "bb", **_BOOL_ONLY)}),
    Op("__or__", fuse={"Tensor": _pw("({0} | {1})", "bb", **_BOOL_ONLY)}),
    Op("bitwise_not", fuse={"default": _pw("({0} == 0)", "b", **_BOOL_ONLY)}),
    Op("isnan", fuse={"default": _pw("({0} != {0})", "r")}),
    *[Op(name, fuse=_each("Tensor Scalar", _pw(f"({{0}} {sym} {{1}})", "pp")))
      for name, sym in (("eq", "=="), ("ne", "!="), ("lt", "<"), ("le", "<="), ("gt", ">"),
                        ("ge", ">="))],
    # Pointwise ops that stay in ATen but cost more than one instruction an element.
    Op("gelu", flops=8), Op("gelu_backward", flops=10), Op("silu", flops=5),
    Op("tanh_backward", flops=3), Op("sigmoid_backward", flops=3), Op("silu_backward", flops=8),
    Op("log1p", flops=4), Op("expm1", flops=4), Op("softplus", flops=6), Op("mish", flops=10),
    Op("hardswish", flops=4),
]

_MATMUL = [
    Op("mm", C.MATMUL, flops="mm", rows={"default": rows("mm")}),
    Op("_int_mm", C.MATMUL, flops="mm"),
    Op("addmm", C.MATMUL, flops="addmm", rows={"default": rows("addmm")}),
    Op("bmm", C.MATMUL, flops="bmm", rows={"default": rows("batched_matmul")}),
    Op("baddbmm", C.MATMUL, flops="baddbmm"),
    Op("addbmm", C.MATMUL, flops="baddbmm"),
    Op("linear", C.MATMUL, flops="linear", rows={"default": rows("leading", trailing=1)}),
    Op("mv", C.MATMUL, flops="mv"),
    Op("addmv", C.MATMUL, flops="addmv"),
    Op("dot", C.MATMUL, flops="dot"),
    Op("matmul", C.MATMUL, flops="matmul", rows={"default": rows("batched_matmul")}),
    Op("einsum", C.MATMUL, flops="einsum"),
]

_CONV = [
    *_family(C.CONV, "convolution _convolution", flops="convolution"),
    *_family(C.CONV, "conv1d conv2d conv3d cudnn_convolution mkldnn_convolution", flops="conv"),
    *_family(C.CONV, "conv_transpose1d conv_transpose2d conv_transpose3d",
             flops="conv_transpose"),
    Op("convolution_backward", C.CONV, flops="conv_backward"),
]

# Attention may draw dropout; the row rule checks that it does not, and a call with
# dropout_p == 0 is pure (remat may rerun it).
_ATTENTION = [
    Op("scaled_dot_product_attention", C.ATTENTION, flops="attention", effect=Effect.RANDOM,
       rows={"default": rows("attention")}, draws_with="dropout_p"),
    *_family(C.ATTENTION, "_scaled_dot_product_flash_attention "
             "_scaled_dot_product_efficient_attention _scaled_dot_product_flash_attention_for_cpu "
             "_scaled_dot_product_cudnn_attention", flops="attention", effect=Effect.RANDOM,
             draws_with="dropout_p"),
]

_VIEW = [
    Op("view", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": RESHAPE}),
    Op("_unsafe_view", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": RESHAPE}),
    Op("reshape", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": RESHAPE}),
    Op("expand", C.VIEW, fuse={"default": Reindex(broadcast=True)},
       rows={"default": rows("expand", out_shape_arg=1)}),
    Op("broadcast_to", fuse={"default": Reindex(broadcast=True)}),
    Op("unsqueeze", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": SAME_ORDER}),
    Op("squeeze", C.VIEW, fuse=_each("default dim dims", VIEW_FUSE),
       rows=_each("default dim dims", SAME_ORDER)),
    Op("flatten", C.VIEW, fuse={"using_ints": VIEW_FUSE}, rows={"using_ints": SAME_ORDER}),
    Op("unflatten", C.VIEW, fuse={"int": VIEW_FUSE}, rows={"int": SAME_ORDER}),
    Op("alias", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": POINTWISE_ROWS}),
    Op("detach", C.VIEW, fuse={"default": VIEW_FUSE}, rows={"default": POINTWISE_ROWS}),
    Op("permute", C.VIEW, rows={"default": rows("permute", dims_arg=1)}),
    Op("transpose", C.VIEW, rows={"int": rows("transpose", dim_args=(1, 2))}),
    Op("t", C.VIEW, rows={"default": rows("t")}),
    Op("slice", C.VIEW, rows={"Tensor": rows("along_dim", dim_arg=1, default=0)}),
    Op("select", C.VIEW, rows={"int": rows("select", dim_arg=1)}),
    # getitem is Python's operator.getitem, fx's tuple indexing: a view of one output.
    # split along another dim than the rows (GPT-2's fused q/k/v): each piece keeps them
    Op("split", C.VIEW, rows={"Tensor": rows("split", dim_arg=2)}),
    Op("split_with_sizes", C.VIEW, rows={"default": rows("split", dim_arg=2)}),
    Op("getitem", C.VIEW, rows={"default": rows("getitem")}),
    *_family(C.VIEW, "as_strided narrow chunk unbind view_as expand_as "
             "lift_fresh diagonal movedim unfold real view_as_real view_as_complex "
             "_reshape_alias"),
]

_INJECTIVE = [
    Op("embedding", C.INJECTIVE, rows={"default": rows("embedding")}),
    Op("clone", C.INJECTIVE, fuse={"default": _pw("{0}", "r", check="keeps_layout")},
       rows={"default": POINTWISE_ROWS}),
    Op("_to_copy", C.INJECTIVE, fuse={"default": _pw("{0}", "r", check="same_device_cast")},
       rows={"default": POINTWISE_ROWS}),
    Op("contiguous", C.INJECTIVE, rows={"default": POINTWISE_ROWS}),
    # a cast to the other tensor's dtype (Gemma's RMSNorm ends in one): the other is read for
    # its dtype alone, so its rows may be sliced with the first's
    Op("type_as", C.INJECTIVE, rows={"default": POINTWISE_ROWS}),
    # A copy of a lifted constant, not a view of it: it allocates.
    Op("lift_fresh_copy", C.INJECTIVE, fuse={"default": _pw("{0}", "r")},
       rows={"default": POINTWISE_ROWS}),
    Op("copy_", C.INJECTIVE, effect=Effect.MUTATING),
    Op("cat", C.INJECTIVE, rows={"default": rows("cat")}),
    *_family(C.INJECTIVE, "stack index index_select gather to copy pad constant_pad_nd "
             "repeat roll flip slice_scatter select_scatter index_put scatter tril triu "
             "masked_fill embedding_dense_backward _unsafe_index repeat_interleave"),
]

_REDUCE_ROWS = rows("reduce", dims_arg=1, keepdim_arg=2)
_REDUCTION = [
    Op("sum", C.REDUCTION, fuse={"dim_IntList": Reduce("sum", 1, 2),
                                 "default": Reduce("sum", None, None)},
       rows={"dim_IntList": _REDUCE_ROWS}),
    Op("mean", C.REDUCTION, rows={"dim": _REDUCE_ROWS}),
    Op("amax", C.REDUCTION, fuse={"default": Reduce("max", 1, 2)},
       rows={"default": _REDUCE_ROWS}),
    Op("amin", C.REDUCTION, fuse={"default": Reduce("min", 1, 2)},
       rows={"default": _REDUCE_ROWS}),
    *_family(C.REDUCTION, "max min prod var std var_mean std_mean argmax argmin logsumexp norm "
             "linalg_vector_norm all any cumsum cumprod diff"),
]

_NORM_ROWS = rows("leading", trailing_shape_arg=1)
_SOFTMAX_ROWS = rows("along_dim", dim_arg=1, default=0)
_NORM = [
    Op("layer_norm", C.NORM, rows={"default": _NORM_ROWS}),
    Op("rms_norm", C.NORM, rows={"default": _NORM_ROWS}),
    Op("softmax", C.NORM, flops=5, backward=1.5, rows={"int": _SOFTMAX_ROWS}),
    Op("_softmax", C.NORM, flops=5, backward=1.5, rows={"default": _SOFTMAX_ROWS}),
    Op("log_softmax", C.NORM, flops=5, backward=1.5, rows={"int": _SOFTMAX_ROWS}),
    Op("_log_softmax", C.NORM, flops=5, backward=1.5, rows={"default": _SOFTMAX_ROWS}),
    Op("_softmax_backward_data", C.NORM, flops=4),
    Op("_log_softmax_backward_data", C.NORM, flops=4),
    *_family(C.NORM, "native_layer_norm group_norm native_group_norm batch_norm "
             "native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training "
             "_native_batch_norm_legit_functional _fused_rms_norm native_layer_norm_backward "
             "native_group_norm_backward native_batch_norm_backward adaptive_avg_pool2d "
             "avg_pool2d max_pool2d max_pool2d_with_indices _adaptive_avg_pool2d "
             "_adaptive_avg_pool2d_backward max_pool2d_with_indices_backward avg_pool2d_backward"),
]

_RANDOM = [
    # Row-wise when it draws nothing: p == 0 or not training.
    Op("dropout", C.RANDOM, effect=Effect.RANDOM,
       rows={"default": rows("dropout", p_arg=1, train_arg=2)}),
    *_family(C.RANDOM, "native_dropout rand randn rand_like randn_like randint bernoulli "
             "bernoulli_ normal uniform multinomial randperm randint_like rngprims::philox_rand",
             effect=Effect.RANDOM),
]

_CREATION = [
    Op("full", C.CREATION, fuse={"default": Constant(1)}),
    Op("scalar_tensor", C.CREATION, fuse={"default": Constant(0)}),
    *_family(C.CREATION, "arange zeros ones empty zeros_like ones_like full_like empty_like "
             "new_ones new_zeros new_full new_empty empty_strided eye linspace"),
]

ENTRIES: list[Op] = [*_POINTWISE, *_MATMUL, *_CONV, *_ATTENTION, *_VIEW, *_INJECTIVE,
                     *_REDUCTION, *_NORM, *_RANDOM, *_CREATION]
