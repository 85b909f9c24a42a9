"""The contiguous-split dynamic program is exact: it matches exhaustive search on small DAGs."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_dags import dags

from graphopt.partition.costgraph import CostGraph
from graphopt.partition.dp import cuts_to_parts, equal_flops_split, make_budget, split_order
from graphopt.partition.metrics import compute_metrics

ALPHA, BETA = 1e-6, 64.0


def _feasible(cg, order, cuts, budget, m):
    for s in range(len(cuts) - 1):
        seg = order[cuts[s]:cuts[s + 1]]
        if not cg.is_compute[seg].any():
            return False
        f = budget.weight[seg].sum()     # the balance weight: predicted seconds by default
        g = budget.weight[seg][budget.giant[seg]].sum()
        if f > (1 + budget.eps) * max(budget.target[s], g) + budget.tol:
            return False
        if m.part_param_bytes[s] + budget.inflight[s] * m.part_act_bytes[s] > budget.mem_cap:
            return False
    return True


def _brute(cg, order, k, budget):
    best = None
    for comb in itertools.combinations(range(1, len(order)), k - 1):
        cuts = np.array((0,) + comb + (len(order),))
        m = compute_metrics(cg, cuts_to_parts(cg, order, cuts), k, alpha=ALPHA, beta=BETA)
        if _feasible(cg, order, cuts, budget, m):
            key = (round(m.bottleneck_seconds, 12), m.comm_bytes)
            best = key if best is None or key < best else best
    return best


@settings(max_examples=80, deadline=None)
@given(dags(max_nodes=12), st.integers(1, 3), st.sampled_from([0.05, 0.3, 2.0]),
       st.sampled_from([float("inf"), 300.0]))
def test_dp_is_exact(cg, k, eps, mem_cap):
    order = cg.movable
    if len(order) < k or cg.compute_count < k:
        return
    budget = make_budget(cg, k, eps, mem_cap=mem_cap)
    cuts = split_order(cg, order, k, budget=budget, alpha=ALPHA, beta=BETA, time_slack=0.0)
    best = _brute(cg, order, k, budget)
    if best is None:
        assert cuts is None
        return
    assert cuts is not None
    m = compute_metrics(cg, cuts_to_parts(cg, order, cuts), k, alpha=ALPHA, beta=BETA)
    assert (round(m.bottleneck_seconds, 12), m.comm_bytes) == best


@settings(max_examples=40, deadline=None)
@given(dags(min_nodes=6, max_nodes=20), st.integers(2, 4))
def test_contiguous_splits_are_stage_ordered(cg, k):
    order = cg.movable
    if len(order) < k:
        return
    m = compute_metrics(cg, cuts_to_parts(cg, order, equal_flops_split(cg, order, k)), k)
    assert m.acyclic and m.stage_ordered


def test_equal_flops_cuts_after_the_node_that_reaches_each_share():
    cg = CostGraph(names=list("abcde"), flops=[0, 10, 10, 10, 10], out_bytes=[1] * 5,
                   seconds=[0, 1, 1, 1, 1], is_param=[False] * 5, is_compute=[False] + [True] * 4,
                   act_bytes=[0, 1, 1, 1, 1], src=[0, 1, 2, 3], dst=[1, 2, 3, 4])
    assert equal_flops_split(cg, cg.movable, 2).tolist() == [0, 3, 5]
    assert equal_flops_split(cg, cg.movable, 4).tolist() == [0, 2, 3, 4, 5]


def test_giant_node_gets_its_own_stage_and_a_note():
    # one node with 70% of the work: at k=4 no part can be balanced around it
    flops = [0] + [10] * 6 + [140]
    n = len(flops)
    cg = CostGraph(names=[f"n{i}" for i in range(n)], flops=flops, out_bytes=[4] * n,
                   seconds=[f * 1e-6 for f in flops], is_param=[False] * n,
                   is_compute=[False] + [True] * (n - 1), act_bytes=[4] * n,
                   src=list(range(n - 1)), dst=list(range(1, n)))
    budget = make_budget(cg, 4, 0.03)
    assert budget.giant[n - 1] and "alone holds" in budget.notes[0]
    assert budget.best_imbalance == pytest.approx(140 / 50 - 1)
    cuts = split_order(cg, cg.movable, 4, budget=budget, alpha=0.0, beta=1e12)
    part = cuts_to_parts(cg, cg.movable, cuts)
    m = compute_metrics(cg, part, 4)
    assert m.part_flops[part[n - 1]] == 140 == max(m.part_flops)


def test_windows_keep_the_baseline_on_large_graphs():
    # more candidate cuts than the DP keeps: the forced baseline cuts must survive the pruning
    cg = CostGraph.random(20000, seed=5)
    order = cg.movable
    base = equal_flops_split(cg, order, 4)
    mb = compute_metrics(cg, cuts_to_parts(cg, order, base), 4, alpha=ALPHA, beta=1e9)
    budget = make_budget(cg, 4, max(0.03, mb.imbalance))
    cuts = split_order(cg, order, 4, budget=budget, alpha=ALPHA, beta=1e9, force=[base],
                       max_candidates=64, comm_time_limit=mb.bottleneck_seconds)
    m = compute_metrics(cg, cuts_to_parts(cg, order, cuts), 4, alpha=ALPHA, beta=1e9)
    assert m.bottleneck_seconds <= mb.bottleneck_seconds * (1 + 1e-12)
    assert m.comm_bytes <= mb.comm_bytes
