"""The kernel runtime: the compile cache (keyed by structure, shapes, strides, dtypes), loading
in interpreted or compiled mode, the ATen fallback, standalone modules, and (on a GPU)
autotuning."""
import logging
import os
import subprocess
import sys

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt.capture import graph_from_fx
from graphopt.kernels import KernelSpec, TensorLayout, bind_kernels, generate, runtime
from graphopt.pass_lists import FUSION, run_pipeline
from graphopt.passes import PassContext

F = torch.nn.functional


def two_layer_norms(x, w, b, m):
    a = F.layer_norm(x, (40,), w, b)
    return a, F.layer_norm(a @ m, (40,), w, b)  # the matmul keeps them apart


def fused(fn, *args, mode="interpret"):
    graph = graph_from_fx(make_fx(fn, tracing_mode="fake")(*args))
    ctx = PassContext()
    graph = run_pipeline(graph, FUSION, ctx)
    plan = ctx.artifacts["fusion"]
    bind_kernels(graph, plan, mode)
    return graph, plan


def test_identical_groups_share_one_compiled_kernel():
    args = (torch.randn(3, 40), torch.randn(40), torch.randn(40), torch.randn(40, 40))
    graph, plan = fused(two_layer_norms, *args)
    graph.run(*args)
    mods = [getattr(graph.gm, g.name) for g in plan.groups]
    keys = {m.spec([TensorLayout.of(a) for a in args]).key() for m in mods if m.fallback}
    compiled = [next(iter(m._kernels.values())) for m in mods]
    norm_kernels = [k for k, g in zip(compiled, plan.groups) if g.kind == "reduction"]
    assert len(norm_kernels) == 2 and norm_kernels[0].module is norm_kernels[1].module
    assert keys


def test_key_names_layout_and_dtype_not_node_names():
    def fn(x):
        return (x * 2).exp()

    graph, plan = fused(fn, torch.randn(6, 10))
    sub = getattr(graph.gm, plan.groups[0].name).fallback
    base = KernelSpec.from_module("a", sub)
    same = KernelSpec.from_module("b", sub)
    transposed = KernelSpec.from_module("a", sub, [TensorLayout((6, 10), (1, 6), torch.float32)])
    assert base.key() == same.key() != transposed.key()
    assert "(lin // 10) + (lin % 10) * 6" in generate(transposed)


def test_cpu_tensors_without_the_interpreter_run_the_aten_subgraph(caplog, monkeypatch):
    monkeypatch.setattr(runtime, "_said_fallback", False)
    args = (torch.randn(3, 40), torch.randn(40), torch.randn(40), torch.randn(40, 40))
    graph, plan = fused(two_layer_norms, *args, mode="triton")
    with caplog.at_level(logging.DEBUG, logger="graphopt.kernels"):
        got = graph.run(*args)
        graph.run(*args)
    for g, w in zip(got, two_layer_norms(*args)):
        assert torch.allclose(g, w, atol=1e-6)
    said = [r for r in caplog.records if "ATen subgraphs" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    assert not any(getattr(graph.gm, g.name)._kernels for g in plan.groups)


def test_modules_load_interpreted_or_compiled():
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    def fn(x):
        return x.sigmoid() + 1

    graph, plan = fused(fn, torch.randn(9))
    src = generate(KernelSpec.from_module("k", getattr(graph.gm, plan.groups[0].name).fallback))
    interp = runtime.load_module(src, "test_load_mode", interpret=True)
    compiled = runtime.load_module(src, "test_load_mode", interpret=False)
    assert isinstance(interp.k_kernel, InterpretedFunction)
    assert isinstance(compiled.k_kernel, JITFunction)
    assert runtime.load_module(src, "test_load_mode", interpret=True) is interp  # cached


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    assert runtime.cache_dir() == tmp_path / "kernels" and (tmp_path / "kernels").is_dir()


def test_generated_module_runs_on_its_own(tmp_path):
    def fn(x, b):
        return torch.softmax(x + b, -1)

    graph, plan = fused(fn, torch.randn(5, 33), torch.randn(33))
    src = generate(KernelSpec.from_module("fused_0", graph.gm.fused_0.fallback))
    path = tmp_path / "fused_0.py"
    path.write_text(src)
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(5, 33)" in out.stdout


@pytest.mark.gpu
def test_gpu_kernels_autotune_and_match_eager(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(runtime, "_tuned", {})
    args = (torch.randn(300, 40, device="cuda"), torch.randn(40, device="cuda"),
            torch.randn(40, device="cuda"), torch.randn(40, 40, device="cuda"))
    graph, plan = fused(two_layer_norms, *args, mode="triton")
    got = graph.run(*args)
    for g, w in zip(got, two_layer_norms(*args)):
        assert torch.allclose(g, w, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "kernels" / "autotune.json").exists()
    assert all(next(iter(getattr(graph.gm, g.name)._kernels.values())).config
               for g in plan.groups)
