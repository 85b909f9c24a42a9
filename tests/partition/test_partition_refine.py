"""Refinement only ever lowers the true volume, and keeps order, balance and the time limit."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_dags import dags, naive_comm

from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import cuts_to_parts, equal_flops_split, make_budget
from graphopt.partition.metrics import compute_metrics
from graphopt.partition.refine import Refiner, rebalance, refine

ALPHA, BETA = 1e-6, 64.0


def _within_caps(cg, part, k, budget):
    """Every part under its cap on the balance weight (predicted seconds by default)."""
    w, g = budget.part_weights(part)
    return all(f <= budget.cap(p, g[p]) + budget.tol for p, f in enumerate(w))


@settings(max_examples=60, deadline=None)
@given(dags(min_nodes=6, max_nodes=30), st.integers(2, 4), st.booleans())
def test_refine_never_worsens(cg, k, ordered):
    order = cg.movable
    if len(order) < k:
        return
    part = cuts_to_parts(cg, order, equal_flops_split(cg, order, k))
    m0 = compute_metrics(cg, part, k)
    timed = cg.seconds[cg.movable].sum() > 0        # the budget balances time when it can
    eps = max(m0.time_imbalance if timed else m0.imbalance, 0.0) + 0.01
    budget = make_budget(cg, k, eps)
    if not _within_caps(cg, part, k, budget):
        return
    before = compute_metrics(cg, part, k, alpha=ALPHA, beta=BETA)
    new = refine(cg, part, k, budget, alpha=ALPHA, beta=BETA, ordered=ordered)
    after = compute_metrics(cg, new, k, alpha=ALPHA, beta=BETA)
    assert after.comm_bytes == naive_comm(cg, new) <= before.comm_bytes
    assert after.bottleneck_seconds <= before.bottleneck_seconds * (1 + 1e-9)
    assert _within_caps(cg, new, k, budget)
    if ordered:
        assert after.stage_ordered


@settings(max_examples=60, deadline=None)
@given(dags(min_nodes=4, max_nodes=25), st.integers(2, 3), st.data())
def test_incremental_state_matches_recomputation(cg, k, data):
    """After any sequence of legal moves the refiner's totals equal a fresh computation."""
    part = cuts_to_parts(cg, cg.movable, equal_flops_split(cg, cg.movable, k)) \
        if len(cg.movable) >= k else np.zeros(cg.n, dtype=np.int64)
    budget = make_budget(cg, k, float(k))
    st_ = Refiner(cg, part, k, budget, alpha=ALPHA, beta=BETA, ordered=data.draw(st.booleans()))
    for _ in range(data.draw(st.integers(1, 12))):
        nodes = [v for v in cg.movable.tolist() if st_.targets(v)]
        if not nodes:
            break
        v = data.draw(st.sampled_from(nodes))
        st_.apply(v, data.draw(st.sampled_from(st_.targets(v))))
    m = compute_metrics(cg, cg.param_parts(st_.parts(), k), k, alpha=ALPHA, beta=BETA)
    assert st_.comm == m.comm_bytes
    assert st_.R == m.recv_bytes and st_.M == m.recv_messages
    assert [int(round(x)) for x in st_.P] == m.part_param_bytes
    assert np.allclose(st_.times(), m.stage_seconds)


def test_refine_finds_the_cheaper_side_of_a_fan_out():
    # x (big) feeds a and b; equal split puts b on the other side of x: moving it saves x's bytes
    cg = CostGraph(names=["in", "x", "a", "b", "c"], flops=[0, 10, 10, 1, 10],
                   out_bytes=[4, 1000, 4, 4, 4], seconds=[0, 1e-6, 1e-6, 1e-7, 1e-6],
                   is_param=[False] * 5, is_compute=[False, True, True, True, True],
                   act_bytes=[0, 1000, 4, 4, 4], src=[0, 1, 1, 2, 3], dst=[1, 2, 3, 4, 4])
    part = np.array([0, 0, 0, 1, 1])
    budget = make_budget(cg, 2, 0.5)
    new = refine(cg, part, 2, budget, alpha=0.0, beta=1e12, ordered=True, time_limit=1.0)
    assert compute_metrics(cg, part, 2).comm_bytes == 1004
    assert compute_metrics(cg, new, 2).comm_bytes == 8
    assert new[3] == 0


def test_rebalance_restores_the_caps():
    cg = CostGraph.random(400, seed=2)
    part = cg.param_parts(np.where(np.arange(cg.n) < cg.n * 0.8, 0, 1), 2)
    budget = make_budget(cg, 2, 0.03)
    assert not _within_caps(cg, part, 2, budget)
    fixed = rebalance(cg, part, 2, budget, alpha=ALPHA, beta=BETA, ordered=True)
    assert fixed is not None and _within_caps(cg, fixed, 2, budget)
    assert compute_metrics(cg, fixed, 2).stage_ordered
