"""The reported numbers agree with the contract's definitions on random DAGs and partitions."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_dags import dags, has_cycle, naive_comm, naive_part_graph

from graphopt.partition.costgraph import CostGraph
from graphopt.partition.metrics import compute_metrics, pipeline_estimate


@settings(max_examples=60, deadline=None)
@given(dags(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_metrics_match_definitions(cg, k, rnd):
    part = np.array([rnd.randrange(k) for _ in range(cg.n)])
    m = compute_metrics(cg, part, k)
    assert m.comm_bytes == naive_comm(cg, part)
    edges = naive_part_graph(cg, part)
    assert m.acyclic == (not has_cycle(edges, k))
    assert m.stage_ordered == all(a < b for a, b in edges)
    flops = [sum(int(cg.flops[v]) for v in range(cg.n) if not cg.is_param[v] and part[v] == p)
             for p in range(k)]
    assert m.part_flops == flops
    total = sum(flops)
    if total:
        assert m.imbalance == pytest.approx(max(flops) / (total / k) - 1)
    # parameter bytes: each parameter counts on every part that uses it
    held = [0] * k
    for u in np.flatnonzero(cg.is_param):
        for p in {int(part[v]) for v in cg.succs(u)}:
            held[p] += int(cg.out_bytes[u])
    assert m.part_param_bytes == held


def test_a_tensor_sent_to_a_part_counts_once():
    # x feeds a and b on part 1: one transfer of x, not two (METIS' edge cut would say two)
    cg = CostGraph(names=["x", "a", "b"], flops=[0, 1, 1], out_bytes=[100, 4, 4],
                   seconds=[0, 1, 1], is_param=[False] * 3, is_compute=[False, True, True],
                   act_bytes=[0, 4, 4], src=[0, 0], dst=[1, 2])
    m = compute_metrics(cg, np.array([0, 1, 1]), 2, alpha=1.0, beta=100.0)
    assert m.comm_bytes == 100 and m.recv_messages == [0, 1]
    assert m.stage_seconds == [0.0, pytest.approx(2 + 1.0 + 100 / 100.0)]


def test_parameters_are_never_sent():
    cg = CostGraph(names=["w", "x", "y"], flops=[0, 0, 10], out_bytes=[1000, 8, 8],
                   seconds=[0, 0, 1], is_param=[True, False, False],
                   is_compute=[False, False, True], act_bytes=[0, 0, 8], src=[0, 1], dst=[2, 2])
    m = compute_metrics(cg, np.array([0, 0, 1]), 2)
    assert m.comm_bytes == 8 and m.part_param_bytes == [0, 1000]


def test_pipeline_estimate_bubble_and_memory():
    cg = CostGraph.random(200, seed=3)
    part = (np.arange(cg.n) * 4) // cg.n
    m = compute_metrics(cg, part, 4)
    est = pipeline_estimate(m, 8)
    assert est["bubble_fraction"] == pytest.approx(3 / 11)
    assert est["forward_step_seconds"] == pytest.approx(11 * m.bottleneck_seconds)
    # 1F1B keeps at most k - s micro-batches in flight on stage s, GPipe all of them
    assert all(a <= b for a, b in zip(est["1f1b"]["peak_memory_bytes"],
                                      est["gpipe"]["peak_memory_bytes"]))
