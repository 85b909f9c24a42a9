"""graphopt's kernels: Triton code generation for fused groups, and the runtime that compiles,
caches, autotunes and launches what it generates.

Layers: :mod:`~graphopt.kernels.spec` (what a group computes) -> :mod:`~graphopt.kernels.codegen`
and :mod:`~graphopt.kernels.render` (source text) -> :mod:`~graphopt.kernels.runtime` (loading,
caching, launching) and :mod:`~graphopt.kernels.aot` (ahead-of-time compiles for a GPU target).
"""
from __future__ import annotations

import torch

from graphopt.kernels.codegen import generate
from graphopt.kernels.runtime import MODES, CompiledKernel, FusedKernel, bind_kernels, compile_kernel
from graphopt.kernels.spec import KernelSpec, TensorLayout

__all__ = ["generate", "KernelSpec", "TensorLayout", "FusedKernel", "CompiledKernel",
           "bind_kernels", "compile_kernel", "kernel_sources", "MODES"]


def kernel_sources(graph, plan) -> dict[str, str]:
    """Source of every group's kernel for the layouts the graph was traced with.

    Needs the graph outlined (``outline_groups``). Returns group name -> module text.

    Example:
        >>> srcs = kernel_sources(graph, ctx.artifacts["fusion"])
        >>> print(srcs["fused_0"])
    """
    out = {}
    for group in plan.groups:
        sub = getattr(graph.gm, group.name, None)
        if isinstance(sub, FusedKernel):
            sub = sub.fallback
        if isinstance(sub, torch.fx.GraphModule):
            out[group.name] = generate(KernelSpec.from_module(group.name, sub))
    return out
