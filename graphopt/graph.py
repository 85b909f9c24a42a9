"""graphopt's one IR: an ATen-level ``torch.fx.GraphModule`` plus typed per-node cost data.

Passes read and annotate :class:`NodeInfo` records; they never reach into ``node.meta`` or networkx
themselves. The fx module stays runnable at every point, so any pass can be checked against eager
PyTorch by running the graph.

Node set: every fx node except the final ``output`` node (which is a return statement, not data),
in the fx order, which is a topological order.
"""
from __future__ import annotations

import copy
import operator
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

from graphopt.cost import OpClass, node_flops, op_class, tensor_bytes

__all__ = ["NodeInfo", "Graph", "annotate_node"]


@dataclass
class NodeInfo:
    """What graphopt knows about one node. ``part`` and ``group`` are set by later passes."""

    name: str
    op: str                       # fx opcode: placeholder, get_attr, call_function, ...
    target: str                   # "aten.mm.default", parameter path, or input name
    op_class: str                 # one of cost.OpClass
    shape: list | None            # output shape, or a list of shapes for tuple outputs
    dtype: str | None
    out_bytes: int
    flops: int
    bytes_read: int
    bytes_written: int
    is_param: bool                # parameters, buffers and constants: held by every device
    part: int | None = None
    group: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _shape_dtype(val) -> tuple[list | None, str | None]:
    if isinstance(val, torch.Tensor):
        return [int(s) for s in val.shape], str(val.dtype).replace("torch.", "")
    if isinstance(val, (tuple, list)):
        parts = [_shape_dtype(v) for v in val]
        dtypes = [d for _, d in parts if d]
        return [s for s, _ in parts], (dtypes[0] if dtypes else None)
    return None, None


def _meta_value(arg):
    """The example value an fx argument stands for (its node's ``meta['val']``)."""
    if isinstance(arg, torch.fx.Node):
        return arg.meta.get("val")
    return arg


def target_str(node: torch.fx.Node) -> str:
    if node.op == "call_function":
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            return f"aten.{t._opname}.{t._overloadname}" if t.namespace == "aten" else str(t)
        return getattr(t, "__name__", str(t))
    return str(node.target)


def annotate_node(node: torch.fx.Node, is_param: bool = False) -> NodeInfo:
    """Cost the node from the example values fx recorded (``meta['val']``, fake or real)."""
    val = node.meta.get("val")
    shape, dtype = _shape_dtype(val)
    out_bytes = tensor_bytes(val)
    flops = bytes_read = bytes_written = 0
    if node.op == "placeholder":
        cls = OpClass.PARAM if is_param else OpClass.PLACEHOLDER
    elif node.op == "get_attr":
        cls, is_param = OpClass.PARAM, True
    elif node.op == "call_function":
        cls = op_class(node.target) if isinstance(node.target, torch._ops.OpOverload) else (
            OpClass.VIEW if node.target.__name__ == "getitem" else OpClass.OPAQUE)
        args = pytree.tree_map(_meta_value, list(node.args))
        kwargs = pytree.tree_map(_meta_value, dict(node.kwargs))
        flops = node_flops(node.target, args, kwargs, val)
        if cls != OpClass.VIEW:
            bytes_read = sum(tensor_bytes(_meta_value(a)) for a in node.all_input_nodes)
            bytes_written = out_bytes
    else:
        cls = OpClass.OPAQUE
    draws = random_draws(node, cls, args if node.op == "call_function" else [], val)
    return NodeInfo(name=node.name, op=node.op, target=target_str(node), op_class=cls,
                    shape=shape, dtype=dtype, out_bytes=out_bytes, flops=int(flops),
                    bytes_read=int(bytes_read), bytes_written=int(bytes_written),
                    is_param=bool(is_param), extra={"draws": draws} if draws else {})


def random_draws(node: torch.fx.Node, cls: str, args: list, val) -> int:
    """How many random numbers the node draws: one per output element for a random op (dropout,
    ``bernoulli``), one per attention weight for attention with dropout. Drawing costs far more
    than the arithmetic the roofline charges (:func:`graphopt.device_spec.node_seconds`)."""
    from graphopt import op_table
    if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
        return 0
    first = val[0] if isinstance(val, (tuple, list)) and val else val
    if not isinstance(first, torch.Tensor):
        return 0
    if cls == OpClass.RANDOM:
        return int(first.numel())
    if cls == OpClass.ATTENTION and op_table.node_effect(node) == op_table.Effect.RANDOM:
        key = args[1] if len(args) > 1 else None
        if isinstance(key, torch.Tensor) and key.dim() >= 2 and first.dim() >= 2:
            return int(first.numel() // first.shape[-1] * key.shape[-2])
    return 0


def _is_derived_constant(node: torch.fx.Node, info: dict[str, NodeInfo]) -> bool:
    """Whether ``node`` computes a constant: a deterministic op whose inputs are all constants.

    A causal mask built from ``arange``, or a transposed weight, is the same on every call and
    on every device, so each stage recomputes it instead of receiving it (the contract's
    "constants, which every part holds locally"). Its FLOPs are counted as zero: they are done
    once per stage, not once per step of the model.
    """
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return all(info[a.name].is_param for a in node.all_input_nodes)
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in node.target.tags or \
            op_class(node.target) == OpClass.RANDOM:
        return False
    return all(info[a.name].is_param for a in node.all_input_nodes)


class Graph:
    """A captured model: a runnable ATen ``GraphModule`` and a :class:`NodeInfo` per node.

    Example:
        >>> g = graphopt.capture(model, (x,))
        >>> g.total_flops, len(g)
        >>> out = g.run(x)          # same as model(x), as a flat tuple of tensors
        >>> G = g.nx                # networkx.DiGraph with the same attributes
    """

    def __init__(self, gm: torch.fx.GraphModule, *, name: str = "model",
                 param_placeholders: set[str] | None = None, capture_mode: str = "manual",
                 out_spec=None, info: dict[str, NodeInfo] | None = None,
                 capture_seconds: float = 0.0, notes: list[str] | None = None):
        self.gm = gm
        self.name = name
        self.capture_mode = capture_mode
        self.param_placeholders = set(param_placeholders or ())
        self.out_spec = out_spec
        self.capture_seconds = capture_seconds
        self.notes = list(notes or [])
        self.info: dict[str, NodeInfo] = info if info is not None else {}
        if info is None:
            self.reannotate()

    # -- structure -------------------------------------------------------------------------------
    def reannotate(self) -> None:
        """Recompute every node's costs, keeping ``part``/``group`` annotations already made."""
        old = self.info
        self.info = {}
        for node in self.fx_nodes():
            rec = annotate_node(node, node.name in self.param_placeholders)
            if node.name in old:
                rec.part, rec.group, rec.extra = old[node.name].part, old[node.name].group, \
                    old[node.name].extra
            if _is_derived_constant(node, self.info):
                rec.is_param, rec.flops = True, 0
            self.info[node.name] = rec

    def fx_nodes(self) -> Iterator[torch.fx.Node]:
        return (n for n in self.gm.graph.nodes if n.op != "output")

    def nodes(self) -> list[NodeInfo]:
        """NodeInfo of every node in topological (fx) order."""
        return [self.info[n.name] for n in self.fx_nodes()]

    def __len__(self) -> int:
        return len(self.info)

    def __getitem__(self, name: str) -> NodeInfo:
        return self.info[name]

    def edges(self) -> list[tuple[str, str, int]]:
        """Data dependencies ``(src, dst, bytes)``; bytes = the producer's output bytes."""
        out = []
        for node in self.fx_nodes():
            for src in dict.fromkeys(node.all_input_nodes):
                out.append((src.name, node.name, self.info[src.name].out_bytes))
        return out

    def output_names(self) -> list[str]:
        out = self.gm.graph.output_node() if hasattr(self.gm.graph, "output_node") else \
            next(n for n in reversed(self.gm.graph.nodes) if n.op == "output")
        return [n.name for n in out.all_input_nodes]

    def compute_nodes(self) -> list[NodeInfo]:
        """Nodes that do work (call_function nodes)."""
        return [i for i in self.nodes() if i.op == "call_function"]

    # -- totals ----------------------------------------------------------------------------------
    @property
    def total_flops(self) -> int:
        return sum(i.flops for i in self.info.values())

    @property
    def param_bytes(self) -> int:
        return sum(i.out_bytes for i in self.info.values() if i.is_param)

    @property
    def input_bytes(self) -> int:
        return sum(i.out_bytes for i in self.info.values()
                   if i.op == "placeholder" and not i.is_param)

    @property
    def activation_bytes(self) -> int:
        """Bytes of all intermediate results that allocate memory (views excluded)."""
        return sum(i.out_bytes for i in self.info.values()
                   if i.op == "call_function" and i.op_class != OpClass.VIEW)

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for i in self.compute_nodes():
            hist[i.target] = hist.get(i.target, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> dict[str, Any]:
        return {"model": self.name, "capture_mode": self.capture_mode, "nodes": len(self),
                "compute_nodes": len(self.compute_nodes()), "edges": len(self.edges()),
                "flops": self.total_flops, "param_bytes": self.param_bytes,
                "input_bytes": self.input_bytes, "activation_bytes": self.activation_bytes,
                "capture_seconds": round(self.capture_seconds, 4), "op_histogram":
                self.op_histogram(), "notes": self.notes}

    # -- execution -------------------------------------------------------------------------------
    def run(self, *inputs) -> tuple:
        """Run the graph on flat user inputs; returns the flat tuple of outputs."""
        out = self.gm(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def unflatten_outputs(self, flat: tuple):
        """Rebuild the model's own output structure (e.g. a ModelOutput) from flat outputs."""
        return pytree.tree_unflatten(list(flat), self.out_spec) if self.out_spec else flat

    def copy(self) -> Graph:
        gm = torch.fx.GraphModule(self.gm, copy.deepcopy(self.gm.graph))
        return Graph(gm, name=self.name, param_placeholders=self.param_placeholders,
                     capture_mode=self.capture_mode, out_spec=self.out_spec,
                     info={k: copy.deepcopy(v) for k, v in self.info.items()},
                     capture_seconds=self.capture_seconds, notes=self.notes)

    # -- views -----------------------------------------------------------------------------------
    @property
    def nx(self):
        """A networkx DiGraph: node attributes are NodeInfo fields, edges carry ``bytes``."""
        from graphopt.export import to_networkx
        return to_networkx(self)

    def to_dot(self, **kw) -> str:
        from graphopt.export import to_dot
        return to_dot(self, **kw)

    def _repr_svg_(self) -> str | None:
        from graphopt.export import GraphvizMissing, to_svg
        if len(self) > 400:
            return None
        try:
            return to_svg(self)
        except GraphvizMissing:
            return None

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, nodes={len(self)}, flops={self.total_flops:.3g}, "
                f"params={self.param_bytes / 2**20:.1f} MiB, mode={self.capture_mode})")
