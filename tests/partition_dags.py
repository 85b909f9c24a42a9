"""Random DAGs for the partitioning property tests, and the contract's metrics by definition."""
from __future__ import annotations

from hypothesis import strategies as st

from graphopt.partition.costgraph import CostGraph


@st.composite
def dags(draw, min_nodes: int = 3, max_nodes: int = 24, constants: bool = False) -> CostGraph:
    """A random DAG in topological order: some parameters, some zero-FLOP nodes, fan-out.

    ``constants``: some parameters are derived constants computed from earlier parameters (a
    RoPE table from ``inv_freq``), so parameters feed parameters and some feed nothing else.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    is_param = [False] + [draw(st.integers(0, 4)) == 0 for _ in range(n - 1)]
    src, dst = [], []
    for v in range(1, n):
        if is_param[v]:
            earlier = [u for u in range(v) if is_param[u]]
            if constants and earlier and draw(st.booleans()):
                preds = draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=2,
                                      unique=True))
                src += preds
                dst += [v] * len(preds)
            continue
        preds = draw(st.lists(st.integers(0, v - 1), min_size=1, max_size=3, unique=True))
        src += preds
        dst += [v] * len(preds)
    flops = [0 if p else draw(st.sampled_from([0, 1, 5, 20, 100, 400])) for p in is_param]
    out_bytes = [draw(st.integers(1, 64)) for _ in range(n)]
    compute = [not p and i > 0 for i, p in enumerate(is_param)]
    return CostGraph(names=[f"v{i}" for i in range(n)], flops=flops, out_bytes=out_bytes,
                     seconds=[f * 1e-6 + (1e-6 if c else 0.0) for f, c in zip(flops, compute)],
                     is_param=is_param, is_compute=compute,
                     act_bytes=[b if c else 0 for b, c in zip(out_bytes, compute)],
                     src=src, dst=dst)


def naive_comm(cg: CostGraph, part) -> int:
    """The contract's volume, by its words: each non-parameter tensor, once per other part
    holding a consumer."""
    total = 0
    for u in range(cg.n):
        if cg.is_param[u]:
            continue
        others = {int(part[v]) for v in cg.succs(u)} - {int(part[u])}
        total += int(cg.out_bytes[u]) * len(others)
    return total


def naive_part_graph(cg: CostGraph, part) -> set[tuple[int, int]]:
    return {(int(part[u]), int(part[v])) for u, v in zip(cg.src, cg.dst)
            if not cg.is_param[u] and part[u] != part[v]}


def has_cycle(edges: set[tuple[int, int]], k: int) -> bool:
    """Depth-first search for a back edge."""
    adj = {p: [b for a, b in edges if a == p] for p in range(k)}
    state = [0] * k

    def visit(p):
        state[p] = 1
        for q in adj[p]:
            if state[q] == 1 or (state[q] == 0 and visit(q)):
                return True
        state[p] = 2
        return False
    return any(state[p] == 0 and visit(p) for p in range(k))
