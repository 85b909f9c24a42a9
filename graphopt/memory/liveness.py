"""Liveness of a schedule: which buffers are alive at each step, live bytes over time, the peak.

A *schedule* is the graph's node order (fx order, a topological order). Every node that allocates
owns a :class:`Buffer`; views, ``getitem`` of a view op (``split``) and in-place ops alias the
buffer of their input instead, and keep it alive as long as they are used. A tuple-producing op
(``native_layer_norm``) owns one buffer per output, alive at least until the op's last
``getitem`` (the tuple holds them all until then).

Counted: call_function results, and placeholders named in ``count_inputs`` (a backward graph's
saved activations). Parameters, user inputs and tangents are alive before and after the step and
are left out, so the numbers are *activation* bytes. Graph outputs live to the last step.

At step ``i`` the inputs of node ``i`` and its output are all alive (the op reads while it
writes), so ``live[i]`` is what the allocator must hold while node ``i`` runs.

Complexity: O(V + E) for the buffers and O(V) for the profile.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx

from graphopt import op_table
from graphopt.cost import tensor_bytes

__all__ = ["Buffer", "Liveness", "analyze", "storage_roots"]


@dataclass
class Buffer:
    """One allocation: ``size`` bytes alive from step ``start`` to step ``end`` (inclusive)."""

    name: str
    size: int
    start: int
    end: int

    def overlaps(self, other: Buffer) -> bool:
        return self.start <= other.end and other.start <= self.end


@dataclass
class Liveness:
    """Live bytes at every step of a schedule.

    Example:
        >>> lv = analyze(graph)
        >>> lv.peak, lv.steps[lv.peak_step]
        >>> [(b.name, b.size) for b in lv.at_peak()[:3]]    # the tensors that make the peak
    """

    steps: list[str]
    live: np.ndarray
    buffers: list[Buffer] = field(default_factory=list)
    first_op: int = 0  # the first step that runs an op (earlier steps are the inputs)

    @property
    def peak(self) -> int:
        return int(self.live.max()) if len(self.live) else 0

    @property
    def peak_step(self) -> int:
        return int(self.live.argmax()) if len(self.live) else 0

    def at(self, step: int) -> list[Buffer]:
        """Buffers alive at ``step``, largest first."""
        return sorted((b for b in self.buffers if b.start <= step <= b.end),
                      key=lambda b: (-b.size, b.name))

    def at_peak(self) -> list[Buffer]:
        return self.at(self.peak_step)

    def summary(self, top: int = 5) -> dict:
        return {"peak_bytes": self.peak, "peak_step": self.peak_step,
                "peak_node": self.steps[self.peak_step] if self.steps else None,
                "peak_tensors": [{"name": b.name, "bytes": b.size}
                                 for b in self.at_peak()[:top]]}


def _is_mutating(node: torch.fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


def _aliases_input(node: torch.fx.Node) -> bool:
    """True if the node's result shares storage with its first tensor input."""
    if node.op != "call_function" or not node.all_input_nodes:
        return False
    if node.target is operator.getitem:
        parent = node.args[0]
        return isinstance(parent, torch.fx.Node) and _aliases_input(parent)
    if isinstance(node.target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return op_table.aliases(node.target) or _is_mutating(node)
    return False


def storage_roots(nodes: list[torch.fx.Node]) -> dict[torch.fx.Node, torch.fx.Node]:
    """Map every node to the node whose buffer it lives in (itself unless it aliases)."""
    root: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in nodes:
        if _aliases_input(node):
            base = node.args[0] if node.target is operator.getitem else node.all_input_nodes[0]
            root[node] = root.get(base, base)
        else:
            root[node] = node
    return root


def analyze(gm_or_graph, count_inputs: set[str] | None = None) -> Liveness:
    """Liveness of a graph's node order.

    Args:
        gm_or_graph: a :class:`~graphopt.graph.Graph` or ``torch.fx.GraphModule``.
        count_inputs: placeholder names that are activations (alive from step 0).

    Example:
        >>> lv = analyze(graph)               # a captured Graph, in its fx order
        >>> print(lv.peak / 2**20, "MiB")
    """
    gm = getattr(gm_or_graph, "gm", gm_or_graph)
    count_inputs = set(count_inputs or ())
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    last = len(nodes) - 1
    end = {n: index[n] for n in nodes}
    for n in nodes:
        for u in n.users:
            end[n] = max(end[n], index[u] if u.op != "output" else last)
    root = storage_roots(nodes)
    owned_end: dict[torch.fx.Node, int] = {}
    for n in nodes:
        r = root[n]
        owned_end[r] = max(owned_end.get(r, -1), end[n])

    buffers: list[Buffer] = []
    for n in nodes:
        if root[n] is not n:
            continue
        counted = n.op == "call_function" or (n.op == "placeholder" and n.name in count_inputs)
        if not counted:
            continue
        start = 0 if n.op == "placeholder" else index[n]
        val = n.meta.get("val")
        if isinstance(val, (tuple, list)):
            # Outputs read through a getitem are owned by it; the tuple itself holds every
            # output until its last getitem has run.
            taken = {u.args[1] for u in n.users if u.target is operator.getitem}
            for i, item in enumerate(val):
                if i not in taken and tensor_bytes(item):
                    buffers.append(Buffer(f"{n.name}[{i}]", tensor_bytes(item), start,
                                          end[n]))
            continue
        stop = owned_end[n]
        if n.target is operator.getitem and isinstance(n.args[0], torch.fx.Node):
            start, stop = index[n.args[0]], max(stop, end[n.args[0]])
        size = tensor_bytes(val)
        if size:
            buffers.append(Buffer(n.name, size, start, stop))
    first_op = next((i for i, n in enumerate(nodes) if n.op == "call_function"), len(nodes))
    return Liveness([n.name for n in nodes], profile(buffers, len(nodes)), buffers, first_op)


def profile(buffers: list[Buffer], steps: int) -> np.ndarray:
    """Live bytes at each of ``steps`` steps (a difference array over the buffers)."""
    diff = np.zeros(steps + 1, dtype=np.int64)
    if buffers:
        starts = np.fromiter((b.start for b in buffers), np.int64, len(buffers))
        ends = np.fromiter((b.end for b in buffers), np.int64, len(buffers))
        sizes = np.fromiter((b.size for b in buffers), np.int64, len(buffers))
        np.add.at(diff, starts, sizes)
        np.add.at(diff, ends + 1, -sizes)
    return np.cumsum(diff[:-1])
