"""Triton source for one fused group: a standalone, readable module.

Two templates, chosen by the group's domain (:mod:`graphopt.fusion.domain`):

* **pointwise**: a 1-D grid over the ``N`` elements; each program takes ``BLOCK`` of them,
  masked at the tail. Inputs are read through their own strides (broadcast dims have stride 0),
  so expanded, sliced and transposed inputs need no copy.
* **reduction**: a 1-D grid over rows; each program takes ``BLOCK_R`` rows as a
  ``[BLOCK_R, BLOCK_C]`` tile. *Persistent* when a row fits (``BLOCK_C`` >= the row): the row is
  loaded once and every reduction, its prologue and its epilogue run in registers. *Looped*
  otherwise: one loop over the columns per dependency level of reductions (sibling reductions
  share a loop), recomputing the prologue from memory, then a last loop for the epilogue's
  stores. Variance arrives as the two-pass form ``decompose_ops`` writes (mean, then the sum of
  squared deviations), which is exact in registers and costs one extra pass when looped.

Half-precision values are computed in float32 and rounded when stored; explicit casts to a half
type round where they happen. Sums accumulate in float32; ``amax``/``amin`` propagate NaN.

The module has the ``@triton.jit`` kernel, ``CONFIGS`` (block sizes and warps to autotune
over), ``INTERPRET_CONFIG`` (few, large blocks: the interpreter pays per program),
``SIGNATURE`` (for ahead-of-time compiles), ``launch(*inputs, config=None)``, which allocates
the outputs and returns them as a tuple, and ``example_inputs()`` so it runs on its own.

Example:
    >>> src = generate(KernelSpec.from_module("fused_0", gm.fused_0))
    >>> print(src)           # a module you can save and run
"""
from __future__ import annotations

import keyword
import re

import torch

from graphopt.fusion.domain import PERSISTENT_MAX_COLS, operand_map
from graphopt.fusion.ops import (
    CONSTANTS,
    POINTWISE,
    REDUCTIONS,
    VIEWS,
    compute_type,
    constant_value,
    literal,
    overload_key,
    storage_type,
)
from graphopt.kernels.indexing import IndexSpace, contiguous_strides, terms
from graphopt.kernels.indexing import offset as offset_expr
from graphopt.kernels.render import domain_text, render
from graphopt.kernels.spec import KernelSpec

__all__ = ["generate", "persistent_default", "next_pow2", "PERSISTENT_MAX_COLS"]

_RESERVED = {"tl", "triton", "libdevice", "torch", "os", "lin", "r", "c", "c0", "mask", "rmask",
             "cmask", "pid", "range", "float", "int", "min", "max", "abs", "sum", "len",
             "INTERPRET", "BLOCK", "BLOCK_R", "BLOCK_C"}

_HELPERS = {
    "_tanh": '''@triton.jit
def _tanh(x):
    # libdevice on the GPU; the interpreter has none, so a series near 0, exp elsewhere.
    if INTERPRET:
        ax = tl.abs(x)
        e = tl.exp(-2.0 * ax)
        big = (1.0 - e) / (1.0 + e)
        x2 = x * x
        small = ax * (1.0 + x2 * (-0.3333333333333333 + x2 * (0.13333333333333333
                                                          - x2 * 0.05396825396825397)))
        t = tl.where(ax < 0.0625, small, big)
        return tl.where(x < 0, -t, t)
    else:
        return libdevice.tanh(x)
''',
    "_combine": '''if INTERPRET:
    # Triton's interpreter reduces in numpy when it is handed its own combine functions.
    _sum = tl.standard._sum_combine
    _max = tl.standard._elementwise_max
    _min = tl.standard._elementwise_min
else:
    @triton.jit
    def _sum(a, b):
        return a + b

    @triton.jit
    def _max(a, b):
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _min(a, b):
        return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)
''',
    "_row_max": '''@triton.jit
def _row_max(x):
    m = tl.reduce(x, 1, _max, keep_dims=True)
    if INTERPRET:  # numpy's nanmax skips NaN; torch.amax returns it
        nans = tl.reduce((x != x).to(tl.float32), 1, _sum, keep_dims=True)
        m = tl.where(nans > 0, float("nan"), m)
    return m
''',
    "_row_min": '''@triton.jit
def _row_min(x):
    m = tl.reduce(x, 1, _min, keep_dims=True)
    if INTERPRET:  # numpy's nanmin skips NaN; torch.amin returns it
        nans = tl.reduce((x != x).to(tl.float32), 1, _sum, keep_dims=True)
        m = tl.where(nans > 0, float("nan"), m)
    return m
''',
}


def next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def persistent_default(cols: int) -> bool:
    return next_pow2(cols) <= PERSISTENT_MAX_COLS


def _ident(name: str) -> str:
    name = re.sub(r"\W", "_", name)
    if not name or name[0].isdigit():
        name = "v_" + name
    if name in _RESERVED or keyword.iskeyword(name) or re.fullmatch(r"(in|out|ld|acc)\d+", name):
        name += "_"
    return name


def _cast(expr: str, src: torch.dtype, dst: torch.dtype) -> str:
    """Convert a value computed as ``src`` to one computed as ``dst``."""
    if dst == torch.bool:
        return expr if src == torch.bool else f"({expr} != 0)"
    if compute_type(src) == compute_type(dst):
        if dst in (torch.float16, torch.bfloat16) and src != dst:
            return f"{expr}.to({storage_type(dst)}).to(tl.float32)"  # round as torch does
        return expr
    return f"{expr}.to({compute_type(dst)})"


class _Emitter:
    def __init__(self, spec: KernelSpec, persistent: bool):
        self.spec = spec
        self.dom = spec.domain
        self.persistent = persistent
        self.reduction = self.dom.kind == "reduction"
        self.space = (IndexSpace.reduction(self.dom.shape, self.dom.reduce_dims)
                      if self.reduction else IndexSpace.pointwise(self.dom.shape))
        self.in_index = {n: i for i, n in enumerate(spec.inputs)}
        self.helpers: set[str] = set()
        self.body: list[str] = []
        self.indent = 1
        self.value: dict = {}       # node -> expression (a variable name or a literal)
        self.dtype: dict = {}       # node -> torch dtype of its value
        self.loads: dict = {}       # (input, offset, mask) -> variable name
        self.exprs: dict = {}       # (expression, dtype) -> variable name (CSE)
        self.n_loads = 0
        self.lin_vars = self._lin_vars()
        self.members = set(spec.nodes)

    # -- small helpers ---------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.body.append("    " * self.indent + line)

    def _lin_vars(self) -> set[str]:
        if not self.reduction:
            return {"lin"}
        sp = self.space
        return {t.var for t in terms(sp, tuple(range(len(sp.shape))), sp.shape,
                                     contiguous_strides(sp.shape))}

    def access_vars(self, index_map, shape, strides) -> set[str]:
        vs = {t.var for t in terms(self.space, index_map, shape, strides)}
        if "lin" in vs and self.reduction:
            vs = (vs - {"lin"}) | self.lin_vars
        return vs

    def mask_for(self, vs: set[str]) -> str | None:
        if not vs:
            return None
        if not self.reduction:
            return "mask"
        if vs == {"r"}:
            return "rmask"
        if vs == {"c"}:
            return "cmask"
        return "mask"

    def define_lin(self) -> None:
        if self.reduction:
            sp = self.space
            lin = offset_expr(sp, tuple(range(len(sp.shape))), sp.shape,
                              contiguous_strides(sp.shape))
            self.emit(f"lin = {lin}")

    # -- values ----------------------------------------------------------------------------
    def load(self, inp, index_map) -> str:
        j = self.in_index[inp]
        layout = self.spec.in_layouts[j]
        off = offset_expr(self.space, index_map, layout.shape, layout.stride)
        vs = self.access_vars(index_map, layout.shape, layout.stride)
        m = self.mask_for(vs)
        key = (j, off, m)
        if key not in self.loads:
            name = f"ld{self.n_loads}"
            self.n_loads += 1
            ptr = f"in{j}" if off == "0" else f"in{j} + {off}"
            text = f"tl.load({ptr}, mask={m}, other=0)" if m else f"tl.load({ptr})"
            if storage_type(layout.dtype) != compute_type(layout.dtype):
                text += f".to({compute_type(layout.dtype)})"
            self.emit(f"{name} = {text}")
            self.loads[key] = name
        return self.loads[key]

    def operand(self, node, arg):
        """(expression, dtype) of one operand of ``node``."""
        if isinstance(arg, torch.fx.Node):
            if arg in self.value:
                return self.value[arg], self.dtype[arg]
            m = operand_map(self.dom, node, tuple(arg.meta["val"].shape),
                            self.dom.maps[node.name])
            return self.load(arg, m), self.spec.in_layouts[self.in_index[arg]].dtype
        return arg, None

    def compute(self, node) -> None:
        key = overload_key(node.target)
        out = node.meta["val"].dtype
        if key in CONSTANTS:
            self.value[node] = literal(constant_value(node), compute_type(out))
            self.dtype[node] = out
            return
        if key in VIEWS:
            self.value[node], self.dtype[node] = self.operand(node, node.args[0])
            return
        if key in REDUCTIONS:
            raise AssertionError("reductions are emitted by the template")
        rule = POINTWISE[key]
        raw = [self.operand(node, node.args[i]) if i < len(node.args) else (None, None)
               for i in range(rule.operands)]
        attrs = dict(zip(rule.attrs, node.args[rule.operands:]))
        attrs.update(node.kwargs)
        promoted = None
        if "p" in rule.types:
            vals = [node.args[i].meta["val"] if isinstance(node.args[i], torch.fx.Node)
                    else node.args[i] for i in range(rule.operands)]
            promoted = torch.result_type(*vals)
        exprs = []
        for (expr, dt), kind in zip(raw, rule.types):
            target = {"o": out, "p": promoted, "b": torch.bool}.get(kind)
            if dt is None:  # a Python scalar
                exprs.append(literal(expr, compute_type(target or out)))
            elif target is None:
                exprs.append(expr)
            else:
                exprs.append(_cast(expr, dt, target))
        self.helpers.update(rule.helpers)
        text = rule.emit(exprs, attrs)
        if rule.types == "r" and key != "isnan.default":
            text = _cast(text, raw[0][1], out)
        if re.fullmatch(r"\w+", text):  # identity (clone, same-type cast): no new variable
            self.value[node], self.dtype[node] = text, out
            return
        if (text, out) in self.exprs:  # the same expression again: reuse it
            self.value[node], self.dtype[node] = self.exprs[(text, out)], out
            return
        name = _ident(node.name)
        self.emit(f"{name} = {text}  # {key}")
        self.exprs[(text, out)] = name
        self.value[node], self.dtype[node] = name, out

    def combine(self, node) -> tuple[str, str]:
        """(combine, neutral element) of a reduction node; registers its helpers."""
        red = REDUCTIONS[overload_key(node.target)]
        self.helpers.add("_combine")
        if red.combine != "sum":
            self.helpers.add(f"_row_{red.combine}")
        neutral = {"sum": "0.0", "max": 'float("-inf")', "min": 'float("inf")'}[red.combine]
        return red.combine, neutral

    def finish(self, combine: str, tile: str) -> str:
        """Reduce a ``[BLOCK_R, BLOCK_C]`` tile over its columns, keeping a column of rows."""
        if combine == "sum":
            return f"tl.reduce({tile}, 1, _sum, keep_dims=True)"
        return f"_row_{combine}({tile})"


    def store(self, j: int, node) -> None:
        layout = self.spec.out_layouts[j]
        m_out = self.dom.maps[node.name]
        off = offset_expr(self.space, m_out, layout.shape, layout.stride)
        vs = self.access_vars(m_out, layout.shape, layout.stride)
        need = {"lin"} if not self.reduction else (
            {"r"} if self.dom.levels[node.name] == "row" else {"r", "c"})
        for v in sorted(need - vs):
            off = f"{off} + 0 * {v}" if off != "0" else f"0 * {v}"
        m = self.mask_for(vs | need)
        val, dt = self.value[node], self.dtype[node]
        if dt != layout.dtype:
            val = _cast(val, dt, layout.dtype)
        if storage_type(layout.dtype) != compute_type(layout.dtype):
            val = f"{val}.to({storage_type(layout.dtype)})"
        self.emit(f"tl.store(out{j} + {off}, {val}, mask={m})")

    # -- templates -------------------------------------------------------------------------
    def pointwise(self) -> None:
        big = max(self.space.extents["lin"], 1) >= 2**31 or self._big_offsets()
        pid = "tl.program_id(0).to(tl.int64)" if big else "tl.program_id(0)"
        self.emit(f"lin = {pid} * BLOCK + tl.arange(0, BLOCK)")
        self.emit(f"mask = lin < {self.space.extents['lin']}")
        for node in self.spec.nodes:
            self.compute(node)
        for j, node in enumerate(self.spec.outputs):
            self.store(j, node)

    def _big_offsets(self) -> bool:
        spans = [sum((s - 1) * abs(st) for s, st in zip(lay.shape, lay.stride))
                 for lay in (*self.spec.in_layouts, *self.spec.out_layouts)]
        return max(spans, default=0) >= 2**31 - 1

    def reduction_body(self) -> None:
        sp = self.space
        rows, cols = sp.extents["r"], sp.extents["c"]
        big = sp.extents["lin"] >= 2**31 or self._big_offsets()
        pid = "tl.program_id(0).to(tl.int64)" if big else "tl.program_id(0)"
        self.emit(f"r = {pid} * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]")
        self.emit(f"rmask = r < {rows}")
        if self.persistent:
            self.emit("c = tl.arange(0, BLOCK_C)[None, :]")
            self.emit(f"cmask = c < {cols}")
            self.emit("mask = rmask & cmask")
            self.define_lin()
            for node in self.spec.nodes:
                if _is_reduction(node):
                    self.persistent_reduce(node)
                else:
                    self.compute(node)
            for j, node in enumerate(self.spec.outputs):
                self.store(j, node)
            return
        self.looped(rows, cols)

    def persistent_reduce(self, node) -> None:
        v, _ = self.operand(node, node.args[0])
        combine, neutral = self.combine(node)
        name = _ident(node.name)
        self.emit(f"{name} = {self.finish(combine, f'tl.where(mask, {v}, {neutral})')}")
        self.value[node], self.dtype[node] = name, node.meta["val"].dtype

    def looped(self, rows: int, cols: int) -> None:
        nodes = self.spec.nodes
        levels = self.dom.levels
        reds = [n for n in nodes if _is_reduction(n)]
        deps: dict = {}
        for n in nodes:  # reductions each node depends on
            d = set()
            for a in n.all_input_nodes:
                d |= deps.get(a, set())
            deps[n] = d | ({n} if n in reds else set())
        stage: dict = {}
        for red in reds:
            before = deps[red.args[0]] if red.args[0] in deps else set()
            stage[red] = 1 + max((stage[r] for r in before), default=-1)
        ready = {n: max((stage[r] for r in deps[n]), default=-1) for n in nodes
                 if levels[n.name] != "full" and n not in reds}
        out_index = {n: j for j, n in enumerate(self.spec.outputs)}

        def rows_ready(s: int) -> None:
            for n in nodes:
                if n in ready and ready[n] == s and n not in self.value:
                    self.compute(n)
                    if n in out_index:
                        self.store(out_index[n], n)

        rows_ready(-1)
        for s in range(max(stage.values(), default=-1) + 1):
            batch = [r for r in reds if stage[r] == s]
            accs = {}
            for red in batch:
                combine, neutral = self.combine(red)
                acc = f"acc_{_ident(red.name)}"
                self.emit(f"{acc} = tl.full([BLOCK_R, BLOCK_C], {neutral}, tl.float32)")
                accs[red] = (acc, combine, neutral)
            self.open_loop(cols)
            for red, (acc, combine, neutral) in accs.items():
                self.full_values(red.args[0])
                v, _ = self.operand(red, red.args[0])
                masked = f"tl.where(mask, {v}, {neutral})"
                upd = f"{acc} + {masked}" if combine == "sum" else \
                    f"tl.{combine}imum({acc}, {masked}, propagate_nan=tl.PropagateNan.ALL)"
                self.emit(f"{acc} = {upd}")
            self.close_loop()
            for red, (acc, combine, _) in accs.items():
                name = _ident(red.name)
                self.emit(f"{name} = {self.finish(combine, acc)}")
                self.value[red], self.dtype[red] = name, red.meta["val"].dtype
                if red in out_index:
                    self.store(out_index[red], red)
            rows_ready(s)
        full_outs = [n for n in self.spec.outputs if levels[n.name] == "full" and n not in reds]
        if full_outs:
            self.open_loop(cols)
            for n in full_outs:
                self.full_values(n)
                self.store(out_index[n], n)
            self.close_loop()

    def full_values(self, node) -> None:
        """Compute, inside the current loop, the full-level values ``node`` needs."""
        if not isinstance(node, torch.fx.Node) or node in self.value or \
                node not in self.members:
            return
        for a in node.all_input_nodes:
            self.full_values(a)
        self.compute(node)

    def open_loop(self, cols: int) -> None:
        self.emit(f"for c0 in range(0, {cols}, BLOCK_C):")
        self.indent += 1
        self.saved = (dict(self.value), dict(self.dtype), dict(self.loads), dict(self.exprs))
        self.emit("c = c0 + tl.arange(0, BLOCK_C)[None, :]")
        self.emit(f"cmask = c < {cols}")
        self.emit("mask = rmask & cmask")
        self.define_lin()

    def close_loop(self) -> None:
        # Values computed inside the loop are gone after it.
        self.value, self.dtype, self.loads, self.exprs = self.saved
        self.indent -= 1


def _is_reduction(node) -> bool:
    return overload_key(node.target) in REDUCTIONS


def generate(spec: KernelSpec, persistent: bool | None = None) -> str:
    """The Triton module for ``spec``.

    Args:
        spec: the group and the layouts of the tensors it runs on.
        persistent: reductions only: one tile per row (True) or a loop over columns (False);
            by default persistent when the row fits in ``PERSISTENT_MAX_COLS``.

    Example:
        >>> src = generate(spec)
        >>> "@triton.jit" in src
        True
    """
    dom = spec.domain
    if dom.kind == "pointwise":
        persistent = False
    elif persistent is None:
        persistent = persistent_default(dom.cols)
    em = _Emitter(spec, persistent)
    if dom.kind == "pointwise":
        em.pointwise()
    else:
        em.reduction_body()
    body = em.body
    if not any(re.search(r"\blin\b", line) for line in body if "lin = " not in line):
        body = [line for line in body if not line.strip().startswith("lin = ")]
    order = [h for h in ("_combine", "_row_max", "_row_min", "_tanh") if h in em.helpers]
    return render(name=spec.name, kind=dom.kind, persistent=persistent,
                  node_names=[n.name for n in spec.nodes],
                  targets=[overload_key(n.target) for n in spec.nodes],
                  domain_text=domain_text(dom.kind, dom.shape, dom.reduce_dims, dom.rows,
                                          dom.cols),
                  inputs=list(zip([n.name for n in spec.inputs], spec.in_layouts)),
                  outputs=list(zip([n.name for n in spec.outputs], spec.out_layouts)),
                  body=body, helpers=[_HELPERS[h] for h in order], numel=dom.numel,
                  rows=dom.rows if dom.kind == "reduction" else 1,
                  cols=dom.cols if dom.kind == "reduction" else 1)
