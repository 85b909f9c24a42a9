"""Cost-model formulas per op family against hand counts."""
import pytest
import torch

import graphopt
from graphopt.cost import OpClass, node_flops, op_class, tensor_bytes
from graphopt.costmodel.device import LinkSpec, roofline_seconds
from graphopt.costmodel.presets import DEVICES, get_device, get_link

aten = torch.ops.aten


def flops_of(op, *args, **kwargs):
    out = op(*args, **kwargs)
    return node_flops(op, list(args), kwargs, out)


def test_matmul_family_is_2mnk():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert flops_of(aten.mm.default, a, b) == 2 * 3 * 5 * 7
    assert flops_of(aten.addmm.default, torch.randn(7), a, b) == 2 * 3 * 5 * 7
    x, y = torch.randn(4, 3, 5), torch.randn(4, 5, 7)
    assert flops_of(aten.bmm.default, x, y) == 2 * 4 * 3 * 5 * 7
    assert flops_of(aten.baddbmm.default, torch.randn(4, 3, 7), x, y) == 2 * 4 * 3 * 5 * 7
    w = torch.randn(7, 5)
    assert flops_of(aten.linear.default, torch.randn(2, 3, 5), w) == 2 * 6 * 5 * 7
    assert flops_of(aten.matmul.default, torch.randn(2, 3, 5), b) == 2 * 2 * 3 * 7 * 5


def test_convolution_counts_output_times_kernel_volume():
    x, w = torch.randn(2, 4, 9, 9), torch.randn(6, 4, 3, 3)
    out_numel = 2 * 6 * 7 * 7
    assert flops_of(aten.conv2d.default, x, w) == 2 * out_numel * 4 * 9
    # groups: each output channel sees C_in / groups inputs
    wg = torch.randn(6, 2, 3, 3)
    assert flops_of(aten.conv2d.default, x, wg, None, [1], [0], [1], 2) == 2 * out_numel * 2 * 9
    # transposed: every input element meets C_out/groups * kernel weights
    wt = torch.randn(4, 6, 3, 3)
    got = flops_of(aten.convolution.default, x, wt, None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)
    assert got == 2 * x.numel() * 6 * 9


def test_attention_is_two_matmuls():
    q, k, v = torch.randn(2, 3, 8, 16), torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 16)
    assert flops_of(aten.scaled_dot_product_attention.default, q, k, v) == 4 * 2 * 3 * 8 * 10 * 16


def test_pointwise_reduction_and_views():
    x = torch.randn(4, 6)
    assert flops_of(aten.add.Tensor, x, x) == 24
    assert flops_of(aten.gelu.default, x) == 24 * 8
    assert flops_of(aten.sum.dim_IntList, x, [1]) == 24
    assert flops_of(aten.view.default, x, [24]) == 0
    assert flops_of(aten.layer_norm.default, x, [6]) == 24 * 8
    assert flops_of(aten._softmax.default, x, 1, False) == 24 * 5


def test_op_classes():
    assert op_class(aten.mm.default) == OpClass.MATMUL
    assert op_class(aten.add.Tensor) == OpClass.ELEMENTWISE
    assert op_class(aten.view.default) == OpClass.VIEW
    assert op_class(aten.cat.default) == OpClass.INJECTIVE
    assert op_class(aten.amax.default) == OpClass.REDUCTION
    assert op_class(aten.native_dropout.default) == OpClass.RANDOM
    assert op_class(aten._local_scalar_dense.default) == OpClass.OPAQUE


def test_tensor_bytes_nested():
    assert tensor_bytes((torch.zeros(3, dtype=torch.float16), [torch.zeros(2)])) == 3 * 2 + 2 * 4
    assert tensor_bytes(3.0) == 0


def test_roofline_takes_the_slower_bound():
    dev = get_device("h100")
    # memory-bound: 1 GB moved, few flops
    t_mem = roofline_seconds(10, 10**9, OpClass.ELEMENTWISE, "float32", dev)
    assert t_mem == pytest.approx(1e9 / dev.bandwidth + dev.launch_seconds)
    # compute-bound matmul in bf16 uses the tensor-core peak
    t_mm = roofline_seconds(10**15, 10, OpClass.MATMUL, "bfloat16", dev)
    assert t_mm == pytest.approx(1e15 / dev.matmul_flops["bfloat16"] + dev.launch_seconds)
    assert roofline_seconds(0, 0, OpClass.VIEW, "float32", dev) == 0.0
    assert set(DEVICES) >= {"h100", "a100", "cpu"}


def test_alpha_beta_link():
    link = LinkSpec("x", alpha=1e-5, beta=1e9)
    assert link.seconds(0) == 0.0
    assert link.seconds(10**9) == pytest.approx(1.0 + 1e-5)
    assert get_link("nvlink4").beta > get_link("pcie4").beta
    with pytest.raises(ValueError, match="known"):
        get_link("carrier-pigeon")


def test_graph_totals_match_hand_count():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    g = graphopt.capture(model, (torch.randn(5, 8),))
    assert g.total_flops == 2 * 5 * 8 * 16 + 5 * 16 + 2 * 5 * 16 * 4
    assert g.param_bytes == (8 * 16 + 16 + 16 * 4 + 4) * 4
    assert g.input_bytes == 5 * 8 * 4
