"""What a partition costs: communication volume, balance, acyclicity, stage times, step time.

Every number a plan reports is computed here from the part of each node and the edges, never
kept from the search that produced it, so a plan read back from JSON reports the same values.

Definitions (the contract's, see ``partition.json``):

* communication volume: for each non-parameter node ``u``, ``out_bytes(u)`` times the number of
  parts other than ``part(u)`` that hold a consumer of ``u`` (the connectivity-minus-one metric
  of the hypergraph whose nets are a tensor and its consumers);
* imbalance: ``max part FLOPs / (total FLOPs / k) - 1``; time imbalance: the same over the
  stages' predicted compute seconds (each over its device's speed, against the total over the
  sum of the speeds: the time of a perfectly balanced stage);
* acyclic: the graph of parts has no cycle; stage-ordered: data flows only to higher parts.

Stage time under the alpha-beta model: a stage's compute (roofline seconds over its speed) plus
receiving each tensor it consumes from another stage once (``alpha + bytes / beta``); sends are
asynchronous and overlap the sender's next micro-batch. A stage's *work* leaves out the fixed
costs (each kernel's launch, each message's ``alpha``): roofline compute plus ``bytes / beta``,
the part of its time that grows with the model and that no launch strategy removes. A
pipeline of ``p`` stages runs ``m`` micro-batches in ``(m + p - 1)`` slots of the slowest
stage, so the bubble is ``(p - 1) / (m + p - 1)`` for GPipe and 1F1B alike; they differ in
memory: GPipe keeps every micro-batch's activations until the backward pass, 1F1B at most
``p - s`` on stage ``s``.

All functions are O(V + E log E) numpy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.partition.costgraph import CostGraph

__all__ = ["Metrics", "compute_metrics", "part_sends", "pipeline_estimate", "quotient_edges",
           "is_acyclic"]

# A backward pass costs about twice the forward (two matmuls per forward matmul).
BACKWARD_FACTOR = 2.0


def part_sends(cg: CostGraph, part: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``(producer, destination part)`` transfers: the tensors each part receives."""
    m = ~cg.is_param[cg.src]
    src, dq = cg.src[m], part[cg.dst[m]]
    cross = dq != part[src]
    key = np.unique(src[cross] * k + dq[cross])
    return key // k, key % k


def quotient_edges(cg: CostGraph, part: np.ndarray, k: int) -> set[tuple[int, int]]:
    """Edges ``p -> q`` of the graph of parts (data flowing from part p to part q)."""
    u, q = part_sends(cg, part, k)
    return {(int(a), int(b)) for a, b in set(zip(part[u].tolist(), q.tolist()))}


def part_order(edges, k: int) -> list[int] | None:
    """Topological order of the k parts given the edges between them (smallest ready part
    first, so an already stage-ordered plan keeps its numbering); None if the parts form a
    cycle. Kahn's algorithm, O(k log k + edges)."""
    import heapq
    indeg = [0] * k
    out: dict[int, set[int]] = {}
    for a, b in set(edges):
        if b not in out.setdefault(a, set()):
            out[a].add(b)
            indeg[b] += 1
    ready = [p for p in range(k) if indeg[p] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        p = heapq.heappop(ready)
        order.append(p)
        for q in sorted(out.get(p, ())):
            indeg[q] -= 1
            if indeg[q] == 0:
                heapq.heappush(ready, q)
    return order if len(order) == k else None


def is_acyclic(edges: set[tuple[int, int]], k: int) -> bool:
    """Whether the k-node graph of parts has no cycle."""
    return part_order(edges, k) is not None


@dataclass
class Metrics:
    """Everything a plan reports about itself; see the module docstring for definitions."""

    k: int
    comm_bytes: int
    imbalance: float
    acyclic: bool
    stage_ordered: bool
    part_flops: list[int]
    part_param_bytes: list[int]
    part_act_bytes: list[int]
    part_seconds: list[float]        # compute, over the part's speed
    recv_bytes: list[int]
    recv_messages: list[int]
    stage_seconds: list[float]       # compute + receives: one micro-batch through the stage
    work_seconds: list[float] = field(default_factory=list)   # the same without fixed costs
    time_imbalance: float = 0.0      # max part_seconds over the balanced stage's, minus 1

    @property
    def bottleneck_seconds(self) -> float:
        return max(self.stage_seconds) if self.stage_seconds else 0.0

    @property
    def bottleneck_work(self) -> float:
        return max(self.work_seconds) if self.work_seconds else 0.0

    def to_dict(self) -> dict:
        return {"comm_bytes": self.comm_bytes, "imbalance": self.imbalance,
                "acyclic": self.acyclic, "stage_ordered": self.stage_ordered,
                "part_flops": self.part_flops, "part_param_bytes": self.part_param_bytes,
                "part_act_bytes": self.part_act_bytes, "part_seconds": self.part_seconds,
                "recv_bytes": self.recv_bytes, "recv_messages": self.recv_messages,
                "stage_seconds": self.stage_seconds,
                "bottleneck_seconds": self.bottleneck_seconds, "work_seconds": self.work_seconds,
                "time_imbalance": self.time_imbalance,
                "bottleneck_work_seconds": self.bottleneck_work}


def compute_metrics(cg: CostGraph, part: np.ndarray, k: int, *, alpha: float = 0.0,
                    beta: float = float("inf"), speeds: list[float] | None = None) -> Metrics:
    """Recompute every reported number from ``part`` (parameters' entries are ignored).

    Example:
        >>> m = compute_metrics(cg, part, 4, alpha=2e-6, beta=450e9)
        >>> m.comm_bytes, m.imbalance, m.acyclic
    """
    part = np.asarray(part, dtype=np.int64)
    moving = ~cg.is_param
    u, q = part_sends(cg, part, k)
    comm = int(cg.out_bytes[u].sum())
    recv_bytes = np.bincount(q, weights=cg.out_bytes[u], minlength=k).astype(np.int64)
    recv_msgs = np.bincount(q, minlength=k)
    flops = np.bincount(part[moving], weights=cg.flops[moving], minlength=k)
    total = float(cg.flops.sum())
    imbalance = float(flops.max() / (total / k) - 1.0) if total > 0 else 0.0
    sp = np.asarray(speeds if speeds is not None else [1.0] * k, dtype=np.float64)
    raw = np.bincount(part[moving], weights=cg.seconds[moving], minlength=k)
    secs = raw / sp
    ideal = float(raw.sum()) / float(sp.sum())
    t_imb = float(secs.max() / ideal - 1.0) if ideal > 0 else 0.0
    work = np.bincount(part[moving], weights=cg.work_seconds[moving], minlength=k) / sp
    acts = np.bincount(part[moving], weights=cg.act_bytes[moving], minlength=k)
    pm = cg.is_param[cg.src]
    pkey = np.unique(cg.src[pm] * k + part[cg.dst[pm]])
    pbytes = np.bincount(pkey % k, weights=cg.out_bytes[pkey // k], minlength=k)
    qedges = quotient_edges(cg, part, k)
    comm_s = recv_bytes / beta + alpha * recv_msgs
    return Metrics(k=k, comm_bytes=comm, imbalance=imbalance, acyclic=is_acyclic(qedges, k),
                   stage_ordered=all(a < b for a, b in qedges),
                   part_flops=[int(x) for x in flops],
                   part_param_bytes=[int(x) for x in pbytes],
                   part_act_bytes=[int(x) for x in acts],
                   part_seconds=[float(x) for x in secs],
                   recv_bytes=[int(x) for x in recv_bytes],
                   recv_messages=[int(x) for x in recv_msgs],
                   stage_seconds=[float(x) for x in secs + comm_s],
                   work_seconds=[float(x) for x in work + recv_bytes / beta],
                   time_imbalance=t_imb)


def pipeline_estimate(metrics: Metrics, microbatches: int) -> dict:
    """Step time and memory of GPipe and 1F1B for ``microbatches`` micro-batches of the plan.

    A micro-batch is the example input the graph was captured with. Only meaningful when the
    plan is acyclic (the stages then run in a pipeline in topological order of the parts).
    """
    m, p = max(1, int(microbatches)), metrics.k
    fwd = metrics.bottleneck_seconds
    slots = m + p - 1
    train = fwd * (1.0 + BACKWARD_FACTOR)
    gpipe_mem = [pb + m * ab for pb, ab in zip(metrics.part_param_bytes, metrics.part_act_bytes)]
    f1b_mem = [pb + min(m, p - s) * ab for s, (pb, ab) in
               enumerate(zip(metrics.part_param_bytes, metrics.part_act_bytes))]
    return {"microbatches": m, "stages": p, "bubble_fraction": (p - 1) / slots,
            "bottleneck_seconds": fwd,
            "forward_step_seconds": slots * fwd,
            "gpipe": {"train_step_seconds": slots * train, "peak_memory_bytes": gpipe_mem},
            "1f1b": {"train_step_seconds": slots * train, "peak_memory_bytes": f1b_mem}}
