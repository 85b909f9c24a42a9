"""METIS k-way partitioning (through pymetis) of a cost graph's movable nodes.

Needs: a :class:`~graphopt.partition.costgraph.CostGraph`. Guarantees: a label in ``0..k-1`` for
every non-parameter node (parameters get ``-1``), deterministic for a fixed seed.

What METIS sees: an undirected graph on the non-parameter nodes; vertex weight = FLOPs (scaled
to integers, at least 1 so zero-cost views still count as vertices); edge weight = the
producer's output bytes (scaled, at least 1: METIS rejects zero weights); ``tpwgts`` = the
devices' relative speeds; ``ufactor`` from the imbalance tolerance.

pymetis traps this module steps around:

* it silently uses *recursive bisection* for ``k <= 8`` (balance tolerance 1.001, not k-way's),
  so ``recursive=False`` is always passed;
* ``contiguous`` crashes on a disconnected graph (a graph with an unused input is one), so it
  is never set;
* it takes a single balance constraint, so memory balance is left to graphopt's refinement;
* its objective is the edge cut, which counts a tensor once per consuming edge; the partitioner
  refines toward the true communication volume afterwards.

Complexity: METIS' own, about O((V + E) log k) per cut, times ``ncuts`` and ``seeds``.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from graphopt.partition.costgraph import CostGraph

__all__ = ["metis_labels", "metis_csr"]

_VW_TOTAL = 1 << 30   # total vertex weight after scaling
_EW_MAX = 1 << 20     # largest edge weight after scaling


def metis_csr(cg: CostGraph, weight: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The symmetric weighted graph METIS takes: ``(nodes, xadj, adjncy, vweights, eweights)``.

    ``nodes`` maps METIS vertex ids back to cost-graph node indices; vertex weights are
    ``weight`` (the balance weight, e.g. predicted seconds) or the FLOPs.
    """
    nodes = cg.movable
    local = np.full(cg.n, -1, dtype=np.int64)
    local[nodes] = np.arange(len(nodes))
    m = ~cg.is_param[cg.src]
    a, b = local[cg.src[m]], local[cg.dst[m]]
    w = cg.out_bytes[cg.src[m]].astype(np.float64)
    wmax = max(float(w.max(initial=0.0)), 1.0)
    w = np.maximum(1, np.round(w * _EW_MAX / wmax)).astype(np.int64)
    # both directions; scipy's CSR conversion sums the weights of repeated pairs
    nv = len(nodes)
    sym = sp.coo_matrix((np.concatenate([w, w]), (np.concatenate([a, b]), np.concatenate([b, a]))),
                        shape=(nv, nv)).tocsr()
    sym.sum_duplicates()
    xadj, vv = sym.indptr.astype(np.int64), sym.indices.astype(np.int64)
    ew = sym.data.astype(np.int64)
    fl = (cg.flops if weight is None else np.asarray(weight))[nodes].astype(np.float64)
    total = max(float(fl.sum()), 1.0)
    vw = np.maximum(1, np.round(fl * _VW_TOTAL / total)).astype(np.int64)
    return nodes, xadj, vv.astype(np.int64), vw, ew


def metis_labels(cg: CostGraph, k: int, *, seed: int = 0, ncuts: int = 1, eps: float = 0.03,
                 speeds=None, csr=None) -> np.ndarray:
    """METIS k-way labels for every node (``-1`` for parameters).

    Example:
        >>> labels = metis_labels(cg, 4, seed=0, ncuts=4, eps=0.03)
        >>> labels[cg.movable].max()
        3
    """
    import pymetis

    nodes, xadj, adjncy, vw, ew = csr if csr is not None else metis_csr(cg)
    labels = np.full(cg.n, -1, dtype=np.int64)
    if k == 1 or len(nodes) <= k:
        labels[nodes] = np.arange(len(nodes)) % k if k > 1 else 0
        return labels
    opts = pymetis.Options(seed=int(seed), ncuts=max(1, int(ncuts)),
                           ufactor=max(1, int(round(1000 * eps))))
    tpwgts = None
    if speeds is not None:
        sp = np.asarray(speeds, dtype=np.float64)
        tpwgts = (sp / sp.sum()).tolist()
    _, parts = pymetis.part_graph(k, pymetis.CSRAdjacency(xadj, adjncy), vweights=vw,
                                  eweights=ew, tpwgts=tpwgts, recursive=False, options=opts)
    labels[nodes] = np.asarray(parts, dtype=np.int64)
    return labels
