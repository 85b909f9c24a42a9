"""Ahead-of-time compiles of generated kernels for a GPU target, with no GPU present.

Triton's interpreter accepts some code the real compiler rejects (and the reverse), so CI
compiles every generated kernel for Hopper (``sm_90``) down to a cubin as well:
``triton.compile(ASTSource(kernel, SIGNATURE, constexprs), target=GPUTarget("cuda", 90, 32))``
needs only Triton's bundled ``ptxas``, not a device.

The module is imported with ``TRITON_INTERPRET=0`` whatever the process was started with, so
this works inside an interpreted test session too (generated modules reference no Triton
library ``@jit`` function outside their interpreter-only branch).

Example:
    >>> out = compile_for_target(generate(spec))
    >>> sorted(out.asm)          # ['cubin', 'llir', 'ptx', 'source', 'ttgir', 'ttir']
"""
from __future__ import annotations

import hashlib

from graphopt.kernels.runtime import load_module

__all__ = ["compile_for_target", "kernel_function", "HOPPER"]

#: (backend, compute capability, warp size) of an H100.
HOPPER = ("cuda", 90, 32)


def kernel_function(module):
    """The ``@triton.jit`` kernel of a generated module (named ``<group>_kernel``)."""
    names = [n for n in vars(module) if n.endswith("_kernel") and not n.startswith("_")]
    if len(names) != 1:
        raise ValueError(f"expected one *_kernel in {module.__name__}, found {names}")
    return getattr(module, names[0])


def compile_for_target(source: str, *, target: tuple = HOPPER, config: dict | None = None):
    """Compile a generated module's kernel for ``target``; returns Triton's compiled kernel.

    Args:
        source: a module from :func:`graphopt.kernels.generate`.
        target: ``(backend, arch, warp_size)``; Hopper by default.
        config: the launch config to compile (block sizes, ``num_warps``); the module's
            default (``CONFIGS[0]``) when None.

    Raises:
        triton.CompilationError (or another Triton error) when the compiler rejects the code.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    module = load_module(source, f"aot{digest}", interpret=False)
    cfg = dict(config or module.CONFIGS[0])
    warps = cfg.pop("num_warps", 4)
    src = ASTSource(kernel_function(module), dict(module.SIGNATURE), constexprs=cfg)
    return triton.compile(src, target=GPUTarget(*target),
                          options={"num_warps": warps, "enable_fp_fusion": True})
