"""What code generation needs to know about one fused group: a :class:`KernelSpec`.

The spec is read off the group's outlined subgraph (a ``GraphModule`` whose placeholders are the
group's inputs and which returns its outputs) plus the layouts of the tensors it will run on.
Its :meth:`KernelSpec.key` names the structure, shapes, strides and dtypes and nothing else
(no node names), so twelve identical layer norms share one compiled kernel.

Example:
    >>> spec = KernelSpec.from_module("fused_3", gm.fused_3)
    >>> spec.domain.kind, spec.key()
    ('reduction', '5f0c2a9e41d7b3c8')
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.fx

from graphopt.fusion.domain import Domain, analyze
from graphopt.fusion.ops import overload_key
from graphopt.op_table import fusion_spec

__all__ = ["TensorLayout", "KernelSpec"]


@dataclass(frozen=True)
class TensorLayout:
    """Shape, strides and dtype of a tensor a kernel reads or writes."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    @staticmethod
    def of(t: torch.Tensor) -> TensorLayout:
        return TensorLayout(tuple(int(s) for s in t.shape), tuple(int(s) for s in t.stride()),
                            t.dtype)

    def describe(self) -> str:
        return f"{str(self.dtype).replace('torch.', '')}{list(self.shape)} strides " \
               f"{list(self.stride)}"


@dataclass
class KernelSpec:
    """One fused group, ready for code generation.

    Attributes:
        name: kernel name (the group's).
        domain: the group's iteration domain (see :mod:`graphopt.fusion.domain`).
        nodes: the group's ops in topological order (fx nodes of the subgraph).
        inputs: the subgraph's placeholders, in argument order.
        outputs: the member nodes returned, in output order.
        in_layouts / out_layouts: the tensors read and written.
    """

    name: str
    domain: Domain
    nodes: list[torch.fx.Node]
    inputs: list[torch.fx.Node]
    outputs: list[torch.fx.Node]
    in_layouts: list[TensorLayout]
    out_layouts: list[TensorLayout]

    @staticmethod
    def from_module(name: str, gm: torch.fx.GraphModule,
                    layouts: list[TensorLayout] | None = None) -> KernelSpec:
        """Read a spec off an outlined group; ``layouts`` override the example inputs' ones."""
        graph_nodes = list(gm.graph.nodes)
        inputs = [n for n in graph_nodes if n.op == "placeholder"]
        nodes = [n for n in graph_nodes if n.op == "call_function"]
        out_node = next(n for n in graph_nodes if n.op == "output")
        outputs = list(out_node.args[0])
        if layouts is None:
            layouts = [TensorLayout.of(n.meta["val"]) for n in inputs]
        out_layouts = [TensorLayout.of(n.meta["val"]) for n in outputs]
        return KernelSpec(name, analyze(nodes), nodes, inputs, outputs, list(layouts),
                          out_layouts)

    def key(self) -> str:
        """A short hash of everything the generated code depends on (not the names)."""
        ids = {n: f"in{i}" for i, n in enumerate(self.inputs)}
        ids.update({n: f"v{i}" for i, n in enumerate(self.nodes)})

        def norm(a):
            if isinstance(a, torch.fx.Node):
                return ids[a]
            if isinstance(a, (list, tuple)):
                return [norm(x) for x in a]
            if isinstance(a, dict):
                return {k: norm(v) for k, v in sorted(a.items())}
            return repr(a)

        parts = [self.domain.kind, list(self.domain.shape), list(self.domain.reduce_dims)]
        for n in self.nodes:
            val = n.meta["val"]
            # The op table's fusion spec is the expression the kernel is generated from: a
            # changed entry must not reuse a kernel cached from the old one.
            parts.append([overload_key(n.target), repr(fusion_spec(n.target)), norm(list(n.args)),
                          norm(dict(n.kwargs)), list(val.shape), str(val.dtype)])
        parts.append([(lay.shape, lay.stride, str(lay.dtype)) for lay in self.in_layouts])
        parts.append([ids[o] for o in self.outputs])
        parts.append([(lay.shape, lay.stride, str(lay.dtype)) for lay in self.out_layouts])
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
