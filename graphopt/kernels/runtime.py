"""Compile, cache, autotune and launch generated kernels; run outlined groups through them.

* **Cache**: a kernel is keyed by :meth:`KernelSpec.key` (structure, shapes, strides, dtypes),
  a hash of the code generator itself (so a changed generator never reuses an old kernel), its
  variant (persistent or looped) and whether it runs in Triton's interpreter. Sources
  are written once to a cache directory (``$GRAPHOPT_CACHE_DIR``, default
  ``<tmp>/graphopt_<user>/kernels``) because ``@triton.jit`` reads the source of what it
  compiles; Triton caches the binaries itself.
* **Interpreter**: Triton decides at ``@triton.jit`` time whether a function is interpreted, so
  each module is imported with ``TRITON_INTERPRET`` set to the mode asked for, whatever the
  process was started with.
* **Autotuning** (CUDA only): every candidate in the module's ``CONFIGS`` (and the looped
  variant of reductions with long rows) is timed with ``triton.testing.do_bench`` (median of
  the runs after warm-up); the winner is kept in memory and in ``autotune.json`` in the cache
  directory, so a second process skips the search.
* :class:`FusedKernel` replaces an outlined group's submodule. It keeps the ATen subgraph:
  on CPU tensors without the interpreter it runs that instead (said once, at debug level), and
  it builds a kernel per distinct input layout on first use.

Example:
    >>> bind_kernels(graph, plan, mode="interpret")   # graph outlined by outline_groups
    >>> graph.run(*inputs)                             # fused groups run as Triton kernels
"""
from __future__ import annotations

import getpass
import importlib.util
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

import torch
import torch.fx

from graphopt.kernels.codegen import generate, next_pow2, persistent_default
from graphopt.kernels.spec import KernelSpec, TensorLayout

__all__ = ["FusedKernel", "CompiledKernel", "bind_kernels", "compile_kernel", "cache_dir",
           "load_module", "MODES"]

log = logging.getLogger("graphopt.kernels")

#: How fused groups run: generated kernels on CUDA, through Triton's interpreter, or as ATen.
MODES = ("triton", "interpret", "aten")

_lock = threading.RLock()


def _generator_hash() -> str:
    """A hash of the modules that decide what a kernel's source says."""
    import hashlib
    import inspect

    from graphopt.fusion import domain as fusion_domain
    from graphopt.fusion import ops as fusion_ops
    from graphopt.kernels import codegen, indexing, render
    h = hashlib.sha256()
    for mod in (fusion_ops, fusion_domain, indexing, codegen, render):
        h.update(inspect.getsource(mod).encode())
    return h.hexdigest()[:8]


GENERATOR = _generator_hash()
_modules: dict[tuple, object] = {}
_tuned: dict[str, dict] = {}
_said_fallback = False


def cache_dir() -> Path:
    """Where generated sources and autotuning results live."""
    root = os.environ.get("GRAPHOPT_CACHE_DIR")
    if root:
        path = Path(root)
    else:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid()) if hasattr(os, "getuid") else "user"
        path = Path(tempfile.gettempdir()) / f"graphopt_{user}"
    path = path / "kernels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_module(source: str, name: str, *, interpret: bool):
    """Import generated ``source`` as a module, interpreted by Triton or compiled for the GPU."""
    key = (name, interpret)
    with _lock:
        if key in _modules:
            return _modules[key]
        path = cache_dir() / f"{name}.py"
        # Same name, same code: only the comments and names of the first group to use a key
        # differ, so a file another process wrote is reused as it is.
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(source)
            tmp.replace(path)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            mod_name = f"graphopt_kernel_{name}_{'interp' if interpret else 'gpu'}"
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
        _modules[key] = module
        return module


class CompiledKernel:
    """A loaded kernel module and the launch config chosen for it."""

    def __init__(self, module, config: dict | None, source: str, interpret: bool = False):
        self.module = module
        self.config = config
        self.source = source
        self.interpret = interpret

    def __call__(self, *inputs) -> tuple:
        if self.interpret:
            import numpy as np
            # The interpreter computes masked-off lanes too (e.g. log(0) past a row's end);
            # their values are never stored, so numpy's warnings about them are noise.
            with np.errstate(all="ignore"):
                return self.module.launch(*inputs, config=self.config)
        return self.module.launch(*inputs, config=self.config)


def _tuning_file() -> Path:
    return cache_dir() / "autotune.json"


def _load_tuned() -> None:
    if _tuned:
        return
    try:
        _tuned.update(json.loads(_tuning_file().read_text()))
    except (OSError, ValueError):
        pass


def _save_tuned() -> None:
    tmp = _tuning_file().with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_tuned, indent=1, sort_keys=True))
    tmp.replace(_tuning_file())


def _variants(spec: KernelSpec, persistent: bool | None, tune: bool) -> list[bool | None]:
    if spec.domain.kind != "reduction":
        return [None]
    if persistent is not None:
        return [persistent]
    first = persistent_default(spec.domain.cols)
    # Long rows that still fit in registers may run faster looped: let the timer decide.
    if tune and first and next_pow2(spec.domain.cols) >= 2048:
        return [True, False]
    return [first]


def compile_kernel(spec: KernelSpec, *, interpret: bool, example: list | None = None,
                   persistent: bool | None = None, config: dict | None = None,
                   autotune: bool = True) -> CompiledKernel:
    """Generate (or reuse), load and configure the kernel for ``spec``.

    Args:
        spec: the group and its input layouts.
        interpret: run through Triton's interpreter (CPU tensors) instead of compiling.
        example: tensors to autotune on (CUDA only); without them the default config is used.
        persistent: force the persistent or looped reduction template.
        config: force a launch config (block sizes, warps).
        autotune: time the candidates on ``example`` (CUDA, not interpreted).
    """
    key = spec.key()
    tune = autotune and not interpret and config is None and example is not None and \
        all(t.is_cuda for t in example)
    candidates = []
    for variant in _variants(spec, persistent, tune):
        source = generate(spec, persistent=variant)
        tag = "p" if variant else ("l" if variant is False else "")
        module = load_module(source, f"k{key}{tag}_{GENERATOR}", interpret=interpret)
        candidates.append((tag, module, source))
    if not tune:
        tag, module, source = candidates[0]
        return CompiledKernel(module, config, source, interpret)
    tuned_key = f"{key}_{GENERATOR}"
    with _lock:
        _load_tuned()
        best = _tuned.get(tuned_key)
    if best is None:
        best = _autotune(candidates, example)
        with _lock:
            _tuned[tuned_key] = best
            _save_tuned()
    chosen = next(c for c in candidates if c[0] == best["variant"])
    return CompiledKernel(chosen[1], best["config"], chosen[2])


def _autotune(candidates, example) -> dict:
    from triton.testing import do_bench
    results = []
    for tag, module, _ in candidates:
        for cfg in module.CONFIGS:
            try:
                ms = do_bench(lambda: module.launch(*example, config=cfg), warmup=10, rep=40,
                              return_mode="median")
            except Exception as exc:  # noqa: BLE001 - a config the compiler refuses is skipped
                log.debug("config %s of %s failed: %s", cfg, module.__name__, exc)
                continue
            results.append((ms, tag, cfg))
    if not results:
        tag, module, _ = candidates[0]
        return {"variant": tag, "config": module.CONFIGS[0], "ms": None}
    ms, tag, cfg = min(results, key=lambda x: x[0])
    log.debug("autotuned %s: %s %s (%.4f ms)", candidates[0][1].__name__, tag, cfg, ms)
    return {"variant": tag, "config": cfg, "ms": ms}


class FusedKernel(torch.nn.Module):
    """An outlined fusion group that runs as its generated kernel.

    Args:
        name: the group's name (kernel name).
        fallback: the group's ATen subgraph (what ``outline_groups`` made).
        mode: one of :data:`MODES`.
    """

    def __init__(self, name: str, fallback: torch.fx.GraphModule, mode: str):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.name = name
        self.fallback = fallback
        self.mode = mode
        self._kernels: dict[tuple, CompiledKernel] = {}

    def spec(self, layouts: list[TensorLayout] | None = None) -> KernelSpec:
        return KernelSpec.from_module(self.name, self.fallback, layouts)

    def kernel_for(self, inputs) -> CompiledKernel | None:
        """The kernel for these inputs' layouts (built on first use); None when the shapes are
        not the ones the group was planned for."""
        layouts = tuple(TensorLayout.of(t) for t in inputs)
        if layouts not in self._kernels:
            if [lay.shape for lay in layouts] != self._shapes:
                log.debug("%s: input shapes %s differ from the planned %s; running ATen",
                          self.name, [lay.shape for lay in layouts], self._shapes)
                self._kernels[layouts] = None
            else:
                self._kernels[layouts] = compile_kernel(
                    self.spec(list(layouts)), interpret=self.mode == "interpret",
                    example=list(inputs))
        return self._kernels[layouts]

    @property
    def _shapes(self) -> list[tuple]:
        return [tuple(n.meta["val"].shape) for n in self.fallback.graph.nodes
                if n.op == "placeholder"]

    def forward(self, *inputs):
        if self.mode == "aten" or not inputs or (self.mode == "triton" and
                                                 not inputs[0].is_cuda):
            _say_fallback()
            return self.fallback(*inputs)
        kernel = self.kernel_for(inputs)
        return kernel(*inputs) if kernel is not None else self.fallback(*inputs)


def _say_fallback() -> None:
    global _said_fallback
    if not _said_fallback:
        _said_fallback = True
        log.debug("fused groups run as their ATen subgraphs: no CUDA tensors and "
                  "triton_interpret is off")


def bind_kernels(graph, plan, mode: str) -> int:
    """Swap each outlined group's submodule for a :class:`FusedKernel`; returns how many."""
    gm = graph.gm
    count = 0
    for group in plan.groups:
        sub = getattr(gm, group.name, None)
        if isinstance(sub, torch.fx.GraphModule):
            setattr(gm, group.name, FusedKernel(group.name, sub, mode))
            count += 1
        elif isinstance(sub, FusedKernel):
            sub.mode = mode
    return count
