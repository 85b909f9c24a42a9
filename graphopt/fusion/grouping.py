"""Group memory-bound ops into kernels: pointwise chains, and reductions with their prologue and
epilogue, so intermediates stay in registers.

Needs: an ATen graph with ``meta['val']`` on its nodes; composites lowered by
``decompose_ops`` first for norms and softmax to fuse (without it they stay in ATen). Takes the
size caps ``max_ops`` (default 64 ops a kernel) and ``max_inputs`` (default 24 tensors a kernel)
and the ``device`` whose roofline the cost rule uses. The pass :mod:`graphopt.passes.fuse_ops`
is its adapter.

Guarantees:

* every group is one kernel :mod:`graphopt.fusion.domain` can lay out (pointwise, or row
  reductions over one shape and dims with their prologue and epilogue);
* no group creates a cycle: merging two groups is refused when a path leaves one and re-enters
  the other through a node outside both (checked by reachability), so the graph with each
  group outlined into one node stays a DAG;
* groups never cross partitions when nodes carry ``part``;
* every refused candidate is recorded with a reason code (``FusionPlan.rejected``);
* the graph itself is not changed: the pass records each member's group in ``NodeInfo.group``
  and ``outline_groups`` rewrites the graph, so planning is idempotent.

Greedy vertical fusion in topological order: for each op, its producers are tried
largest-edge first; a merge stands when it is legal and the cost rule agrees: the merged
kernel's roofline time (launch + bytes once / bandwidth) is no worse than the two apart, and it
stays under the size caps. Then sibling reductions that read the same input over the same
domain are merged (layer-norm backward's row and column sums, for example). Complexity: each
merge attempt costs O(group size) for the domain check plus a reachability search bounded by
the topological window between the groups: O(V * (V + E)) worst case, near-linear on models,
whose edges are short.
"""
from __future__ import annotations

import math

import torch
import torch.fx

from graphopt import op_table
from graphopt.cost import OpClass
from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.fusion.domain import PERSISTENT_MAX_COLS, Domain, FusionReject, analyze
from graphopt.fusion.ops import CONSTANTS, FusionKind, fusion_kind, not_fusible_reason, overload_key
from graphopt.fusion.plan import FusionGroup, FusionPlan, Rejection, value_bytes
from graphopt.graph import Graph

__all__ = ["plan_fusion", "DEFAULT_MAX_OPS", "DEFAULT_MAX_INPUTS"]

DEFAULT_MAX_OPS = 64
DEFAULT_MAX_INPUTS = 24


def _val(node: torch.fx.Node):
    return node.meta.get("val")


def _is_compute(node: torch.fx.Node) -> bool:
    return node.op in ("call_function", "call_module", "call_method")


def _is_view(node: torch.fx.Node) -> bool:
    kind = fusion_kind(node)
    if kind in (FusionKind.VIEW, FusionKind.BROADCAST):
        return True
    # INJECTIVE nodes are OpOverloads and getitem: the table says which of them alias.
    return kind == FusionKind.INJECTIVE and node.op == "call_function" and \
        op_table.aliases(node.target)


def _does_work(node: torch.fx.Node) -> bool:
    """A member that computes something (not a view, not a constant)."""
    return not _is_view(node) and overload_key(node.target) not in CONSTANTS


class _Groups:
    """Union of node sets with the queries merging needs."""

    def __init__(self, gm: torch.fx.GraphModule, fusible: set[torch.fx.Node]):
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        self.of: dict[torch.fx.Node, int] = {}
        self.members: dict[int, list[torch.fx.Node]] = {}
        for n in fusible:
            gid = self.order[n]
            self.of[n] = gid
            self.members[gid] = [n]

    def merged(self, a: int, b: int) -> list[torch.fx.Node]:
        return sorted(self.members[a] + self.members[b], key=self.order.__getitem__)

    def union(self, a: int, b: int) -> None:
        nodes = self.merged(a, b)
        keep, drop = min(a, b), max(a, b)
        for n in self.members[drop]:
            self.of[n] = keep
        self.members[keep] = nodes
        del self.members[drop]

    def creates_cycle(self, nodes: list[torch.fx.Node]) -> bool:
        """Is there a path that leaves ``nodes`` and comes back (through a node outside)?"""
        inside = set(nodes)
        last = max(self.order[n] for n in nodes)
        stack = [u for n in nodes for u in n.users if u not in inside]
        seen: set[torch.fx.Node] = set()
        while stack:
            n = stack.pop()
            if n in seen or self.order[n] > last:
                continue
            seen.add(n)
            for u in n.users:
                if u in inside:
                    return True
                stack.append(u)
        return False

    def inputs(self, nodes: list[torch.fx.Node]) -> list[torch.fx.Node]:
        inside = set(nodes)
        return list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in inside))

    def outputs(self, nodes: list[torch.fx.Node]) -> list[torch.fx.Node]:
        inside = set(nodes)
        return [n for n in nodes if any(u not in inside for u in n.users)]


def _passes(dom: Domain, nodes: list[torch.fx.Node]) -> int:
    """How many times the kernel reads its inputs (looped reductions re-read per reduction)."""
    if dom.kind != "reduction" or \
            1 << max(dom.cols - 1, 0).bit_length() <= PERSISTENT_MAX_COLS:
        return 1
    return 1 + sum(fusion_kind(n) == FusionKind.REDUCTION for n in nodes)


def _traffic(groups: _Groups, nodes: list[torch.fx.Node], dom: Domain) -> tuple[int, int]:
    read = sum(value_bytes(_val(i)) for i in groups.inputs(nodes)) * _passes(dom, nodes)
    written = sum(value_bytes(_val(o)) for o in groups.outputs(nodes))
    return read, written


def _unfused_bytes(nodes: list[torch.fx.Node]) -> int:
    total = 0
    for n in nodes:
        if _does_work(n):
            total += sum(value_bytes(_val(a)) for a in dict.fromkeys(n.all_input_nodes))
            total += value_bytes(_val(n))
    return total


class _Fuser:
    def __init__(self, graph: Graph, max_ops: int, max_inputs: int, device: CostModel | str):
        self.graph = graph
        self.gm = graph.gm
        self.max_ops = max_ops
        self.max_inputs = max_inputs
        spec = as_cost_model(device).spec
        self.bandwidth = spec.bandwidth
        self.launch = spec.launch_seconds or 3e-6
        self.why: dict[torch.fx.Node, str | None] = {
            n: not_fusible_reason(n) for n in self.gm.graph.nodes if _is_compute(n)}
        self.groups = _Groups(self.gm, {n for n, r in self.why.items() if r is None})
        self.rejected: list[Rejection] = []
        self.domains: dict[int, Domain] = {}

    def part(self, node: torch.fx.Node):
        info = self.graph.info.get(node.name)
        return info.part if info is not None else None

    def seconds(self, nodes: list[torch.fx.Node], dom: Domain) -> float:
        read, written = _traffic(self.groups, nodes, dom)
        return self.launch + (read + written) / self.bandwidth

    def domain(self, gid: int) -> Domain:
        if gid not in self.domains:
            self.domains[gid] = analyze(self.groups.members[gid])
        return self.domains[gid]

    def try_merge(self, a: int, b: int) -> tuple[str, str] | None:
        """Merge groups ``a`` and ``b`` if legal and worth it; else the (reason, detail)."""
        g = self.groups
        nodes = g.merged(a, b)
        parts = {self.part(n) for n in nodes}
        if len(parts) > 1:
            return "cross_partition", f"parts {sorted(p for p in parts if p is not None)}"
        ops = sum(_does_work(n) for n in nodes)
        if ops > self.max_ops:
            return "too_large", f"{ops} ops > fuse_max_ops={self.max_ops}"
        if g.creates_cycle(nodes):
            return "cycle", "a path leaves the merged group and re-enters it"
        try:
            dom = analyze(nodes)
        except FusionReject as exc:
            return exc.reason, exc.detail
        n_inputs = len(g.inputs(nodes))
        if n_inputs > self.max_inputs:
            return "too_large", f"{n_inputs} inputs > fuse_max_inputs={self.max_inputs}"
        try:
            apart = self.seconds(g.members[a], self.domain(a)) + \
                self.seconds(g.members[b], self.domain(b))
        except FusionReject:
            apart = math.inf
        together = self.seconds(nodes, dom)
        if together > apart * (1 + 1e-9):
            return "no_benefit", f"{together * 1e6:.2f} us fused > {apart * 1e6:.2f} us apart"
        g.union(a, b)
        self.domains.pop(a, None)
        self.domains.pop(b, None)
        self.domains[min(a, b)] = dom
        return None

    def reject(self, producer, consumer, reason: str, detail: str = "") -> None:
        self.rejected.append(Rejection(producer.name, consumer.name, reason, detail))

    def vertical(self) -> None:
        g = self.groups
        for node in self.gm.graph.nodes:
            if not _is_compute(node):
                continue
            producers = [p for p in dict.fromkeys(node.all_input_nodes) if _is_compute(p)]
            if node not in g.of:
                for p in producers:
                    if p in g.of and _does_work(p):
                        self.reject(p, node, "consumer_opaque", self.why.get(node) or "")
                continue
            producers.sort(key=lambda p: -value_bytes(_val(p)))
            for p in producers:
                if p not in g.of:
                    if not _is_view(p):
                        self.reject(p, node, "producer_opaque", self.why.get(p) or "")
                    continue
                a, b = g.of[p], g.of[node]
                if a == b:
                    continue
                failed = self.try_merge(a, b)
                if failed:
                    self.reject(p, node, *failed)

    def siblings(self) -> None:
        """Merge reduction groups that read a common input over the same domain."""
        g = self.groups
        for node in self.gm.graph.nodes:
            cands = sorted({g.of[u] for u in node.users if u in g.of})
            cands = [c for c in cands if self._reduces(c)]
            i = 0
            while i < len(cands):
                j = i + 1
                while j < len(cands):
                    a, b = cands[i], cands[j]
                    da, db = self.domain(a), self.domain(b)
                    failed = None
                    if (da.shape, da.reduce_dims) == (db.shape, db.reduce_dims):
                        failed = self.try_merge(a, b)
                        if failed is None:
                            cands.pop(j)  # merged into cands[i] (the smaller id)
                            continue
                        self.reject(node, g.members[b][0], *failed)
                    j += 1
                i += 1

    def _reduces(self, gid: int) -> bool:
        try:
            return self.domain(gid).kind == "reduction"
        except FusionReject:
            return False

    def plan(self) -> FusionPlan:
        g = self.groups
        plan = FusionPlan(rejected=self.rejected)
        kept = [gid for gid in sorted(g.members, key=lambda x: g.order[g.members[x][0]])
                if any(_does_work(n) for n in g.members[gid])]
        for gid in kept:
            nodes = g.members[gid]
            dom = self.domain(gid)
            read, written = _traffic(g, nodes, dom)
            parts = {self.part(n) for n in nodes} - {None}
            plan.groups.append(FusionGroup(
                name=f"fused_{len(plan.groups)}", kind=dom.kind, nodes=[n.name for n in nodes],
                inputs=[n.name for n in g.inputs(nodes)],
                outputs=[n.name for n in g.outputs(nodes)], shape=list(dom.shape),
                reduce_dims=list(dom.reduce_dims), bytes_read=read, bytes_written=written,
                bytes_unfused=_unfused_bytes(nodes), ops=sum(_does_work(n) for n in nodes),
                part=parts.pop() if parts else None))
        grouped = {n for gid in kept for n in g.members[gid]}
        extern = (OpClass.MATMUL, OpClass.CONV, OpClass.ATTENTION)
        for node in self.gm.graph.nodes:
            if _is_compute(node) and not _is_view(node):
                plan.graph_ops += 1
                if node not in grouped:
                    plan.unfused.append(node.name)
                    info = self.graph.info.get(node.name)
                    plan.extern_ops += bool(info is not None and info.op_class in extern)
        return plan


def plan_fusion(graph: Graph, *, max_ops: int = DEFAULT_MAX_OPS,
                max_inputs: int = DEFAULT_MAX_INPUTS, device: CostModel | str = "h100") -> FusionPlan:
    """Plan the fusion of ``graph`` without touching it.

    Example:
        >>> plan = plan_fusion(graphopt.capture(model, (x,)))
        >>> plan.summary()["kernels"]
    """
    fuser = _Fuser(graph, max_ops, max_inputs, device)
    fuser.vertical()
    fuser.siblings()
    return fuser.plan()
