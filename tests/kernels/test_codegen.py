"""Every kernel family the code generator writes, run through Triton's interpreter against eager
PyTorch on fresh random inputs of awkward sizes: not multiples of the block, broadcast inputs,
non-contiguous inputs, half precision, NaN and -inf, persistent and looped reductions with
small blocks so that masking and multi-program grids are exercised."""
import math

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt.capture import graph_from_fx
from graphopt.kernels import KernelSpec, TensorLayout, bind_kernels, compile_kernel, generate
from graphopt.pass_lists import FUSION, run_pipeline
from graphopt.passes import PassContext

F = torch.nn.functional


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double(), want.double()
    if want.dtype == torch.bool or got.dtype == torch.bool:
        return float((got != want).sum())
    both_nan = torch.isnan(got) & torch.isnan(want)
    if (torch.isnan(got) != torch.isnan(want)).any():
        return math.inf  # NaN never passes unless eager has it too
    got, want = got.masked_fill(both_nan, 0), want.masked_fill(both_nan, 0)
    same_inf = torch.isinf(want) & (got == want)
    got, want = got.masked_fill(same_inf, 0), want.masked_fill(same_inf, 0)
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def fused(fn, *examples, **options):
    """Trace ``fn``, fuse it, and bind its kernels to the interpreter."""
    gm = make_fx(fn, tracing_mode="fake")(*examples)
    graph = graph_from_fx(gm, name=fn.__name__)
    ctx = PassContext(options=options)
    graph = run_pipeline(graph, FUSION, ctx)
    plan = ctx.artifacts["fusion"]
    bind_kernels(graph, plan, "interpret")
    return graph, plan


def check(fn, *examples, kernels=None, kinds=None, tol=1e-5, fresh=None):
    graph, plan = fused(fn, *examples)
    if kernels is not None:
        assert len(plan.groups) == kernels, [g.nodes for g in plan.groups]
    if kinds is not None:
        assert sorted(g.kind for g in plan.groups) == sorted(kinds)
    inputs = fresh() if fresh else examples
    got = graph.run(*inputs)
    want = fn(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) < tol
    ran = [getattr(graph.gm, g.name) for g in plan.groups]
    assert all(any(v is not None for v in k._kernels.values()) for k in ran), \
        "every group ran as a generated kernel"
    return graph, plan


def group_args(graph, *inputs) -> dict:
    """The tensors each outlined group is called with when the graph runs on ``inputs``."""
    env = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            env[n] = super().run_node(n)
            return env[n]

    Recorder(graph.gm).run(*inputs)
    return {n.target: [env[a] for a in n.args] for n in graph.gm.graph.nodes
            if n.op == "call_module"}


def kernels_with_small_blocks(graph, plan, *inputs):
    """Run each group's kernel with tiny blocks (and both reduction templates) against its ATen
    subgraph, so masking, multi-program grids and column loops are exercised."""
    args_of = group_args(graph, *inputs)
    for group in plan.groups:
        mod = getattr(graph.gm, group.name)
        args = args_of[group.name]
        spec = KernelSpec.from_module(group.name, mod.fallback, [TensorLayout.of(a) for a in args])
        want = mod.fallback(*args)
        if group.kind == "pointwise":
            variants = [(None, dict(BLOCK=64, num_warps=4))]
        else:
            cols = 1 << max(spec.domain.cols - 1, 0).bit_length()
            variants = [(True, dict(BLOCK_R=4, BLOCK_C=cols, num_warps=4)),
                        (False, dict(BLOCK_R=2, BLOCK_C=16, num_warps=4))]
        for persistent, cfg in variants:
            k = compile_kernel(spec, interpret=True, persistent=persistent, config=cfg)
            for g, w in zip(k(*args), want):
                assert rel_err(g, w) < 1e-5, (group.name, persistent, cfg)


# -- pointwise -------------------------------------------------------------------------------
def test_pointwise_chain_with_broadcast_and_awkward_size():
    def fn(x, bias, col):
        return torch.sigmoid((x * 1.5 + bias).exp().clamp(max=4.0) - col) * torch.tanh(x)

    x, bias, col = torch.randn(37, 129), torch.randn(129), torch.randn(37, 1)
    graph, plan = check(fn, x, bias, col, kernels=1, kinds=["pointwise"])
    kernels_with_small_blocks(graph, plan, x, bias, col)


def test_pointwise_reads_non_contiguous_inputs_through_strides():
    def fn(x, y):
        return (x + y).relu() * 2

    base = torch.randn(33, 65)
    x, y = base.t(), torch.randn(65, 33)           # x is transposed: strides (1, 65)
    graph, plan = fused(fn, x.contiguous(), y)      # traced contiguous, run transposed
    got = graph.run(x, y)[0]
    assert rel_err(got, fn(x, y)) < 1e-6
    sl = torch.randn(65, 70)[:, 3:36]              # a slice: offset and row stride 70
    assert rel_err(graph.run(sl, y)[0], fn(sl, y)) < 1e-6
    mod = getattr(graph.gm, plan.groups[0].name)
    assert len(mod._kernels) == 2                   # one kernel per input layout


def test_broadcast_inside_a_reshaped_space():
    # The scale multiplies in the matmul's [6, 8] space; the kernel walks the view's [2, 3, 8].
    def fn(a, w, scale, r):
        return ((a @ w) * scale).view(2, 3, 8) + r

    args = (torch.randn(6, 4), torch.randn(4, 8), torch.randn(8), torch.randn(2, 3, 8))
    graph, plan = check(fn, *args, kernels=1, kinds=["pointwise"])
    kernels_with_small_blocks(graph, plan, *args)


def test_bias_gelu_both_forms():
    def fn(x, b):
        h = x + b
        return F.gelu(h), F.gelu(h, approximate="tanh")

    x, b = torch.randn(17, 257) * 3, torch.randn(257)
    check(fn, x, b, kernels=1, kinds=["pointwise"])


def test_masks_comparisons_where_and_nan():
    def fn(x, m):
        keep = (x > 0.1) & ~m
        y = torch.where(keep, x, torch.full_like(x, -1.0))
        return y + torch.isnan(x).float(), keep

    x = torch.randn(5, 3, 77)
    x[0, 0, :5] = float("nan")
    m = torch.rand(5, 3, 77) < 0.3
    check(fn, x, m, kernels=1)


def test_explicit_cast_to_bfloat16_rounds():
    def fn(x):
        return x.to(torch.bfloat16).float() * 3

    x = torch.randn(9, 130)
    graph, _ = fused(fn, x)
    # Compiled Triton rounds to nearest even like torch; the interpreter truncates, so allow
    # one bfloat16 ulp (2**-7 relative).
    assert rel_err(graph.run(x)[0], fn(x)) < 2 ** -7


def test_half_precision_inputs_and_outputs():
    def fn(x, w):
        return (x * w + 1).sigmoid().to(torch.bfloat16), (x.float() * 2).half()

    x, w = torch.randn(31, 40, dtype=torch.bfloat16), torch.randn(40, dtype=torch.bfloat16)
    graph, plan = fused(fn, x, w)
    got = graph.run(x, w)
    want = fn(x, w)
    for g, ww in zip(got, want):
        assert g.dtype == ww.dtype
        assert rel_err(g, ww) < 1e-2  # eager rounds every op to bf16; the kernel once


def test_per_channel_values_are_recomputed_inside_the_kernel():
    # Batch norm in inference: per-channel scale computed from running stats, applied to NCHW.
    def fn(x, mean, var, w, b):
        return F.relu(F.batch_norm(x, mean, var, w, b, training=False, eps=1e-5))

    args = (torch.randn(3, 5, 7, 9), torch.randn(5), torch.rand(5) + 0.5, torch.randn(5),
            torch.randn(5))
    check(fn, *args, kernels=1, kinds=["pointwise"])


# -- reductions ------------------------------------------------------------------------------
def test_softmax_with_minus_inf_mask():
    def fn(x, mask):
        return torch.softmax(x.masked_fill(mask, float("-inf")), dim=-1)

    x = torch.randn(2, 3, 19, 101)
    mask = torch.ones(19, 101, dtype=torch.bool).triu(1)
    graph, plan = check(fn, x, mask, kernels=1, kinds=["reduction"])
    kernels_with_small_blocks(graph, plan, x, mask)


def test_log_softmax_and_amax_propagate_nan():
    def fn(x):
        return torch.log_softmax(x, dim=1), x.amax(dim=1), x.amin(dim=1)

    x = torch.randn(23, 45)
    x[3, 7] = float("nan")
    graph, plan = check(fn, x)
    assert torch.isnan(graph.run(x)[1][3])


def test_layer_norm_is_one_kernel_persistent_and_looped():
    def fn(x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b, eps=1e-5)

    x, w, b = torch.randn(3, 11, 300) * 4 + 2, torch.randn(300), torch.randn(300)
    graph, plan = check(fn, x, w, b, kernels=1, kinds=["reduction"])
    kernels_with_small_blocks(graph, plan, x, w, b)


def test_rms_norm():
    def fn(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    x, w = torch.randn(13, 97), torch.randn(97)
    check(fn, x, w, kernels=1, kinds=["reduction"])


def test_variance_is_two_pass_and_accurate_with_a_large_mean():
    def fn(x):
        return torch.var_mean(x, dim=-1, correction=1)

    x = torch.randn(9, 513) + 1000.0  # one-pass E[x^2]-E[x]^2 would lose most digits here
    check(fn, x, kernels=1, tol=1e-4)


def test_reduction_over_leading_and_middle_dims():
    def fn(x, g):
        return (x * g).sum(dim=(0, 2)), x.sum(dim=(0, 2), keepdim=True) * 2

    x, g = torch.randn(5, 7, 33), torch.randn(5, 1, 33)
    graph, plan = check(fn, x, g, kernels=1, kinds=["reduction"])
    kernels_with_small_blocks(graph, plan, x, g)


def test_reduction_that_also_drops_a_size_one_dim():
    def fn(x):
        return x.sum((0, 2)) * 2, x.amax((0, 2), keepdim=True) - x

    check(fn, torch.randn(1, 5, 9), kernels=1)


def test_full_reduction_of_an_odd_size():
    def fn(x):
        return (x * x).sum(), x.sum(dim=[]) + 1

    check(fn, torch.randn(7, 129, 3))


def test_layer_norm_backward_row_and_column_sums():
    def fn(x, w, b, grad):
        out, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], w, b, 1e-5)
        return torch.ops.aten.native_layer_norm_backward(grad, x, [x.shape[-1]], mean, rstd,
                                                         w, b, [True, True, True])

    x, w, b, g = torch.randn(6, 70), torch.randn(70), torch.randn(70), torch.randn(6, 70)
    graph, plan = check(fn, x, w, b, g, tol=1e-4)
    assert any(g.kind == "reduction" for g in plan.groups)


def test_generated_module_is_readable_and_names_its_nodes():
    def fn(x, b):
        return torch.softmax(x + b, -1)

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(4, 10), torch.randn(10))
    graph = graph_from_fx(gm)
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    group = ctx.artifacts["fusion"].groups[0]
    src = generate(KernelSpec.from_module(group.name, getattr(graph.gm, group.name)))
    assert "Implements graph nodes: " in src and all(n in src for n in group.nodes)
    assert "@triton.jit" in src and "def launch(" in src and "CONFIGS = [" in src
    compile(src, "<kernel>", "exec")
    assert max(len(line) for line in src.splitlines()) < 200
