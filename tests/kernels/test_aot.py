"""Every generated kernel family also compiles ahead of time for Hopper (sm_90) down to a
cubin, with no GPU: code the interpreter accepts but the real compiler rejects fails here."""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import graphopt
from graphopt.capture import graph_from_fx
from graphopt.kernels import KernelSpec, generate, kernel_sources
from graphopt.kernels.aot import compile_for_target
from graphopt.pass_lists import FUSION, run_pipeline
from graphopt.passes import PassContext

F = torch.nn.functional
bf16 = torch.bfloat16


def families():
    yield "pointwise_broadcast", lambda x, b: torch.tanh(x * 2 + b).sigmoid(), \
        (torch.randn(37, 129), torch.randn(129))
    yield "bias_gelu_bf16", lambda x, b: F.gelu(x + b, approximate="tanh"), \
        (torch.randn(8, 300, dtype=bf16), torch.randn(300, dtype=bf16))
    yield "where_mask_bool", lambda x, m: (torch.where(m, x, -x) > 0, x.isnan()), \
        (torch.randn(10, 10), torch.rand(10, 10) < 0.5)
    yield "softmax", lambda x: torch.softmax(x, -1), (torch.randn(6, 1000),)
    yield "layer_norm_fp16", lambda x, w, b: F.layer_norm(x, (768,), w, b), \
        (torch.randn(4, 768, dtype=torch.float16), torch.randn(768, dtype=torch.float16),
         torch.randn(768, dtype=torch.float16))
    yield "rms_norm", lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w, \
        (torch.randn(5, 4096), torch.randn(4096))
    yield "sum_middle_dims", lambda x: (x.sum((0, 2)), x.amin(1)), (torch.randn(3, 5, 7),)
    yield "long_rows", lambda x: torch.log_softmax(x, -1), (torch.randn(2, 20000),)


def sources_of(fn, args):
    graph = graph_from_fx(make_fx(fn, tracing_mode="fake")(*args))
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    for group in ctx.artifacts["fusion"].groups:
        spec = KernelSpec.from_module(group.name, getattr(graph.gm, group.name))
        variants = [None] if group.kind == "pointwise" else [True, False]
        for persistent in variants:
            yield group.name, generate(spec, persistent=persistent)


@pytest.mark.parametrize("name,fn,args", list(families()), ids=[f[0] for f in families()])
def test_kernel_family_compiles_for_hopper(name, fn, args):
    n = 0
    for kernel, src in sources_of(fn, args):
        compiled = compile_for_target(src)
        assert compiled.asm["cubin"] and ".target sm_90" in compiled.asm["ptx"], kernel
        n += 1
    assert n >= 1


def test_every_autotuning_candidate_compiles():
    import hashlib

    from graphopt.kernels.runtime import load_module
    (name, src), *_ = sources_of(lambda x: torch.softmax(x * 3, -1), (torch.randn(64, 2048),))
    module = load_module(src, "cfg" + hashlib.sha256(src.encode()).hexdigest()[:12],
                         interpret=False)
    assert len(module.CONFIGS) > 1
    for cfg in module.CONFIGS[:6]:
        assert compile_for_target(src, config=cfg).asm["cubin"], cfg


def test_gpt2_kernels_compile_for_hopper():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=64, n_head=4, use_cache=False,
                                     vocab_size=128, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    graph = graphopt.capture(model, (torch.randint(0, 128, (2, 16)),))
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    sources = kernel_sources(graph, ctx.artifacts["fusion"])
    assert len(sources) >= 4
    for name, src in sources.items():
        assert compile_for_target(src).asm["cubin"], name


def test_offsets_past_2_31_use_64_bit_indices():
    from graphopt.kernels import TensorLayout
    graph = graph_from_fx(make_fx(lambda x: x * 2 + 1, tracing_mode="fake")(torch.randn(4, 8)))
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    group = ctx.artifacts["fusion"].groups[0]
    huge = [TensorLayout((4, 8), (2**30, 1), torch.float32)]  # rows 1 GiB elements apart
    src = generate(KernelSpec.from_module(group.name, getattr(graph.gm, group.name), huge))
    assert "tl.program_id(0).to(tl.int64)" in src and "(lin // 8) * 1073741824" in src
    assert compile_for_target(src).asm["cubin"]
