"""Offsets: broadcast dims drop out, contiguous dims merge, reductions split into rows and
columns, reshaped values walk the linear index."""
from graphopt.fusion.domain import LinearMap
from graphopt.kernels.indexing import IndexSpace, contiguous_strides, offset


def test_contiguous_value_is_just_the_linear_index():
    sp = IndexSpace.pointwise((4, 8, 768))
    assert offset(sp, (0, 1, 2), (4, 8, 768), contiguous_strides((4, 8, 768))) == "lin"


def test_bias_broadcast_and_row_broadcast():
    sp = IndexSpace.pointwise((32, 768))
    assert offset(sp, (1,), (768,), (1,)) == "lin % 768"
    assert offset(sp, (0, None), (32, 1), (1, 1)) == "lin // 768"
    assert offset(sp, (None, None), (1, 1), (0, 0)) == "0"


def test_transposed_input_uses_its_strides():
    sp = IndexSpace.pointwise((5, 7))
    assert offset(sp, (0, 1), (5, 7), (1, 5)) == "(lin // 7) + (lin % 7) * 5"


def test_reduction_rows_and_columns():
    sp = IndexSpace.reduction((4, 8, 768), (2,))
    assert offset(sp, (0, 1, 2), (4, 8, 768), (6144, 768, 1)) == "r * 768 + c"
    assert offset(sp, (0, 1, None), (4, 8, 1), (8, 1, 1)) == "r"
    sp = IndexSpace.reduction((6, 10, 12), (0, 2))  # rows walk dim 1, columns dims 0 and 2
    assert offset(sp, (0, 1, 2), (6, 10, 12), (120, 12, 1)) == "(c // 12) * 120 + (c % 12) + r * 12"


def test_linear_map_for_a_reshaped_value():
    sp = IndexSpace.pointwise((2, 3, 4))
    assert offset(sp, LinearMap((6, 4)), (6, 4), (4, 1)) == "lin"
    assert offset(sp, LinearMap((6, 4)), (6, 4), (1, 6)) == "(lin // 4) + (lin % 4) * 6"


def test_linear_map_with_a_broadcast_pick():
    sp = IndexSpace.pointwise((2, 3, 8))
    # a [8] bias read by an op living in a [6, 8] reshape of the iteration space
    assert offset(sp, LinearMap((6, 8), (1,)), (8,), (1,)) == "lin % 8"
    assert offset(sp, LinearMap((6, 8), (0, None)), (6, 1), (1, 1)) == "lin // 8"
