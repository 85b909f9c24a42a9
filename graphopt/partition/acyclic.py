"""From METIS labels to stage-ordered partitions: ranking, acyclic repair, guided orders.

Needs: METIS labels on the movable nodes of a :class:`~graphopt.partition.costgraph.CostGraph`.
Guarantees: :func:`repair` returns parts in which every edge goes from a lower or equal part to
a higher or equal one (acyclic and stage-ordered); :func:`guided_order` a topological order in
which each repaired part is contiguous, for the contiguous-split dynamic program.

Repair (dagP's fix-acyclicity, in its simplest form): rank METIS' parts by the mean topological
position of their nodes, then lift every node to the highest rank among its ancestors:
``stage(v) = max(rank(label(v)), max stage(pred))``. Nodes METIS placed consistently keep their
part; the ones that would close a cycle move downstream. The balance this breaks is restored
by the dynamic program along the guided order and by the balance-aware refinement.

Complexity: O(k (V + E)) — one breadth-first search per rank, in scipy's C code, instead of a
Python loop over the edges.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order

from graphopt.partition.costgraph import CostGraph

__all__ = ["rank_labels", "repair", "guided_order", "renumber_topologically"]


def rank_labels(cg: CostGraph, labels: np.ndarray, k: int) -> np.ndarray:
    """Relabel parts 0..k-1 by the (FLOPs-weighted) mean position of their nodes."""
    nodes = cg.movable
    lab = labels[nodes]
    w = cg.flops[nodes].astype(np.float64) + 1.0
    mean = np.bincount(lab, weights=w * nodes, minlength=k) / \
        np.maximum(np.bincount(lab, weights=w, minlength=k), 1e-300)
    mean[np.bincount(lab, minlength=k) == 0] = np.inf
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(mean, kind="stable")] = np.arange(k)
    out = labels.copy()
    out[nodes] = rank[lab]
    return out


def repair(cg: CostGraph, labels: np.ndarray, k: int) -> np.ndarray:
    """Lift each node to the highest ranked label among its ancestors (labels already ranked).

    ``stage(v) >= c`` exactly when v is reachable from some node ranked ``>= c``, so each
    threshold is one breadth-first search from a virtual source joined to those nodes.
    """
    m = ~cg.is_param[cg.src]
    src, dst = cg.src[m], cg.dst[m]
    n = cg.n
    stage = np.zeros(n, dtype=np.int64)
    nodes = cg.movable
    for c in range(1, k):
        seeds = nodes[labels[nodes] >= c]
        if len(seeds) == 0:
            break
        rows = np.concatenate([src, np.full(len(seeds), n)])
        cols = np.concatenate([dst, seeds])
        g = sp.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n + 1, n + 1))
        reached = breadth_first_order(g, n, directed=True, return_predecessors=False)
        stage[reached[reached < n]] += 1
    out = np.full(n, -1, dtype=np.int64)
    out[nodes] = stage[nodes]
    return out


def guided_order(cg: CostGraph, stage: np.ndarray) -> np.ndarray:
    """Movable nodes sorted by (stage, index): topological whenever ``stage`` is monotone
    along edges, since ties keep the graph's own topological order."""
    nodes = cg.movable
    return nodes[np.lexsort((nodes, stage[nodes]))]


def renumber_topologically(cg: CostGraph, part: np.ndarray, k: int) -> np.ndarray | None:
    """Renumber the parts of an acyclic partition so data flows to higher parts; None if cyclic."""
    from graphopt.partition.metrics import part_order, quotient_edges
    order = part_order(quotient_edges(cg, part, k), k)
    if order is None:
        return None
    new = np.empty(k, dtype=np.int64)
    new[order] = np.arange(k)
    return new[part]
