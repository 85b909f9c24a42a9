"""The partitioner's view of a graph: flat numpy arrays of per-node cost and the data edges.

Partitioning algorithms run on 10^5-10^6 edges, so they never touch fx nodes or NodeInfo: a
:class:`CostGraph` holds one array entry per node (FLOPs, output bytes, roofline seconds,
activation bytes, parameter flag) and the deduplicated edges ``src -> dst`` with ``src < dst``
(node indices are a topological order). It is built from a :class:`~graphopt.graph.Graph` in
O(V + E), or directly from arrays (synthetic graphs in tests and benchmarks).

Parameters (``is_param``) are held by every part that uses them and never sent, so the
partitioners place only the other nodes; a parameter's part is derived from its consumers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.costmodel.target import CostModel, as_cost_model
from graphopt.op_table import OpClass

__all__ = ["CostGraph", "segment_reduce"]


def _csr(keys: np.ndarray, vals: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (ptr, idx) grouping ``vals`` by ``keys``; within a group ``vals`` stay sorted."""
    order = np.lexsort((vals, keys))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys, minlength=n), out=ptr[1:])
    return ptr, vals[order].astype(np.int64)


def segment_reduce(ufunc, values: np.ndarray, ptr: np.ndarray, empty) -> np.ndarray:
    """``ufunc`` over each CSR segment ``values[ptr[i]:ptr[i+1]]``; ``empty`` for empty ones.

    ``ufunc.reduceat`` on the starts of the non-empty segments: one C pass, unlike ``ufunc.at``.
    """
    out = np.full(len(ptr) - 1, empty, dtype=values.dtype if values.size else np.int64)
    nonempty = ptr[1:] > ptr[:-1]
    if values.size:
        out[nonempty] = ufunc.reduceat(values, ptr[:-1][nonempty])
    return out


@dataclass
class CostGraph:
    """Per-node costs and data edges of a DAG whose node indices are a topological order.

    Attributes:
        names: node names, in topological order.
        flops: FLOPs per node (the balance weight).
        out_bytes: bytes of each node's output (what a transfer of it carries).
        seconds: forward seconds per node as the cost model prices it.
        is_param: parameters, buffers and constants (held locally, never sent).
        is_compute: nodes that do work (call_function nodes that are not views).
        act_bytes: bytes a node allocates for its output (0 for views, inputs and parameters).
        src, dst: edge arrays, deduplicated, ``src < dst``.
        launch_seconds: the fixed cost each compute node's ``seconds`` includes (kernel launch
            or eager dispatch); ``seconds - launch_seconds`` is the node's work.

    Example:
        >>> cg = CostGraph.from_graph(graphopt.capture(model, (x,)))
        >>> cg.n, cg.total_flops, len(cg.src)
    """

    names: list[str]
    flops: np.ndarray
    out_bytes: np.ndarray
    seconds: np.ndarray
    is_param: np.ndarray
    is_compute: np.ndarray
    act_bytes: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    ops: list[str] | None = None
    targets: list[str] | None = None
    name: str = "graph"
    output_nodes: list[int] = field(default_factory=list)
    launch_seconds: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.names)
        self.flops = np.asarray(self.flops, dtype=np.int64)
        self.out_bytes = np.asarray(self.out_bytes, dtype=np.int64)
        self.seconds = np.asarray(self.seconds, dtype=np.float64)
        self.is_param = np.asarray(self.is_param, dtype=bool)
        self.is_compute = np.asarray(self.is_compute, dtype=bool)
        self.act_bytes = np.asarray(self.act_bytes, dtype=np.int64)
        src = np.asarray(self.src, dtype=np.int64)
        dst = np.asarray(self.dst, dtype=np.int64)
        for arr, what in ((self.flops, "flops"), (self.out_bytes, "out_bytes"),
                          (self.seconds, "seconds"), (self.is_param, "is_param"),
                          (self.is_compute, "is_compute"), (self.act_bytes, "act_bytes")):
            if len(arr) != n:
                raise ValueError(f"{what} has {len(arr)} entries for {n} nodes")
        if len(src) != len(dst):
            raise ValueError("src and dst differ in length")
        if len(src) and (src.min() < 0 or dst.max() >= n or np.any(src >= dst)):
            raise ValueError("edges must satisfy 0 <= src < dst < n (indices in topological order)")
        key = np.unique(src * n + dst)
        self.src, self.dst = key // n, key % n
        self.n = n
        self.succ_ptr, self.succ_idx = _csr(self.src, self.dst, n)
        self.pred_ptr, self.pred_idx = _csr(self.dst, self.src, n)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_graph(cls, graph, cost_model: CostModel | str = "h100") -> CostGraph:
        """Flatten a :class:`~graphopt.graph.Graph`; ``seconds``: each node's forward seconds as
        ``cost_model`` prices it (:meth:`~graphopt.costmodel.target.CostModel.node_seconds`:
        measured curves where the spec has them, roofline otherwise; a preset key is taken as
        that preset's model)."""
        cm = as_cost_model(cost_model)
        infos = graph.nodes()
        index = {info.name: i for i, info in enumerate(infos)}
        src, dst = [], []
        for s, d, _ in graph.edges():
            src.append(index[s])
            dst.append(index[d])
        compute = [i.op == "call_function" and i.op_class != OpClass.VIEW for i in infos]
        seconds = [cm.node_seconds(i) if c else 0.0 for i, c in zip(infos, compute)]
        return cls(names=[i.name for i in infos], flops=[i.flops for i in infos],
                   out_bytes=[i.out_bytes for i in infos], seconds=seconds,
                   is_param=[i.is_param for i in infos], is_compute=compute,
                   act_bytes=[i.out_bytes if c else 0 for i, c in zip(infos, compute)],
                   src=src, dst=dst, ops=[i.op for i in infos],
                   targets=[i.target for i in infos], name=graph.name,
                   output_nodes=[index[o] for o in graph.output_names() if o in index],
                   launch_seconds=float(cm.spec.launch_seconds))

    # -- structure -----------------------------------------------------------------------------
    def succs(self, v: int) -> np.ndarray:
        return self.succ_idx[self.succ_ptr[v]:self.succ_ptr[v + 1]]

    def preds(self, v: int) -> np.ndarray:
        return self.pred_idx[self.pred_ptr[v]:self.pred_ptr[v + 1]]

    @property
    def work_seconds(self) -> np.ndarray:
        """Per-node time without the fixed per-kernel cost: what the plan cannot amortize."""
        return np.maximum(self.seconds - np.where(self.seconds > 0, self.launch_seconds, 0.0),
                          0.0)

    @property
    def total_flops(self) -> int:
        return int(self.flops.sum())

    @property
    def movable(self) -> np.ndarray:
        """Indices of the nodes the partitioners place (everything but parameters)."""
        return np.flatnonzero(~self.is_param)

    @property
    def compute_count(self) -> int:
        return int(self.is_compute.sum())

    def param_parts(self, part: np.ndarray, k: int) -> np.ndarray:
        """Give each parameter the lowest part among the compute nodes it feeds, directly or
        through constants (a RoPE table made from ``inv_freq``, a mask from ``arange``); 0 when
        it feeds none. Whatever ``part`` holds for parameters is ignored (a partitioner may
        leave them at -1), so every node ends with a part in ``0..k-1``."""
        part = np.array(part, dtype=np.int64)
        params = np.flatnonzero(self.is_param)
        if not len(params):
            return part
        part[params] = k                       # unresolved: ignored by the minimum below
        low = segment_reduce(np.minimum, part[self.succ_idx], self.succ_ptr, k)
        part[params] = low[params]
        # a parameter feeding constants takes theirs: settle those chains consumers first
        chained = np.unique(self.src[self.is_param[self.src] & self.is_param[self.dst]])
        for p in chained[::-1].tolist():
            part[p] = min(int(part[p]), int(part[self.succs(p)].min()))
        part[params] = np.where(part[params] < k, part[params], 0)
        return part

    @classmethod
    def random(cls, n: int, *, degree: float = 2.0, seed: int = 0, param_frac: float = 0.2,
               span: float = 8.0, long_frac: float = 0.05) -> CostGraph:
        """A synthetic network-shaped DAG (for tests and benchmarks).

        Each non-parameter node takes about ``degree`` inputs: mostly recent nodes (distance
        drawn from a geometric law of mean ``span``, like ops within a layer) and, with
        probability ``long_frac``, any earlier node (skip connections). A ``param_frac`` share
        of nodes are parameters feeding one later node; a quarter of the rest are free views.
        """
        rng = np.random.default_rng(seed)
        is_param = rng.random(n) < param_frac
        is_param[0] = False
        idx = np.flatnonzero(~is_param)
        m = len(idx)
        pos = np.empty(n, dtype=np.int64)
        pos[idx] = np.arange(m)
        # data edges among non-parameter nodes, in the order of idx
        per = rng.poisson(max(degree - 1.0, 0.0), m) + 1
        per[0] = 0
        dst_l = np.repeat(np.arange(m), per)
        far = rng.random(len(dst_l)) < long_frac
        dist = np.where(far, (rng.random(len(dst_l)) * np.maximum(dst_l, 1)).astype(np.int64) + 1,
                        rng.geometric(1.0 / span, len(dst_l)))
        src_l = np.maximum(dst_l - dist, 0)
        ok = src_l < dst_l
        src, dst = idx[src_l[ok]], idx[dst_l[ok]]
        # each parameter feeds the next non-parameter node after it
        params = np.flatnonzero(is_param)
        after = np.searchsorted(idx, params)
        keep = after < m
        src = np.concatenate([src, params[keep]])
        dst = np.concatenate([dst, idx[after[keep]]])
        view = (rng.random(n) < 0.25) & ~is_param
        flops = np.where(is_param | view, 0, rng.lognormal(15, 1.5, n)).astype(np.int64)
        out_bytes = rng.lognormal(12, 1.0, n).astype(np.int64) + 4
        seconds = np.where(flops > 0, flops / 1e12 + 3e-6, 0.0)
        compute = ~is_param & ~view
        compute[idx[0]] = False  # the first node is the input
        return cls(names=[f"n{i}" for i in range(n)], flops=flops, out_bytes=out_bytes,
                   seconds=seconds, is_param=is_param, is_compute=compute,
                   act_bytes=np.where(compute, out_bytes, 0), src=src, dst=dst,
                   name=f"random-{n}")

    def __repr__(self) -> str:
        return (f"CostGraph({self.name!r}, nodes={self.n}, edges={len(self.src)}, "
                f"flops={self.total_flops:.3g})")
