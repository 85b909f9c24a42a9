"""METIS labels, and their repair into stage-ordered partitions and guided topological orders."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from partition_dags import dags

import graphopt
from graphopt.partition.acyclic import guided_order, rank_labels, renumber_topologically, repair
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.metis import metis_labels
from graphopt.partition.metrics import compute_metrics
from graphopt.specs import load_spec


@settings(max_examples=60, deadline=None)
@given(dags(min_nodes=4, max_nodes=30), st.integers(2, 5), st.randoms(use_true_random=False))
def test_repair_is_stage_ordered_and_keeps_consistent_nodes(cg, k, rnd):
    labels = np.where(cg.is_param, -1, [rnd.randrange(k) for _ in range(cg.n)])
    ranked = rank_labels(cg, labels, k)
    stage = repair(cg, ranked, k)
    part = cg.param_parts(stage, k)
    m = compute_metrics(cg, part, k)
    assert m.stage_ordered
    # a node is only ever lifted, and only as far as its highest-ranked ancestor
    mv = cg.movable
    assert np.all(stage[mv] >= ranked[mv])
    for v in mv:
        preds = [u for u in cg.preds(v) if not cg.is_param[u]]
        assert stage[v] == max([ranked[v]] + [stage[u] for u in preds])


@settings(max_examples=60, deadline=None)
@given(dags(min_nodes=4, max_nodes=30), st.integers(2, 4), st.randoms(use_true_random=False))
def test_guided_order_is_topological(cg, k, rnd):
    labels = np.where(cg.is_param, -1, [rnd.randrange(k) for _ in range(cg.n)])
    order = guided_order(cg, repair(cg, rank_labels(cg, labels, k), k))
    pos = {int(v): i for i, v in enumerate(order)}
    assert sorted(pos) == cg.movable.tolist()
    assert all(pos[int(u)] < pos[int(v)] for u, v in zip(cg.src, cg.dst) if not cg.is_param[u])


@settings(max_examples=40, deadline=None)
@given(dags(min_nodes=4, max_nodes=20), st.integers(2, 4), st.randoms(use_true_random=False))
def test_renumbering_an_acyclic_plan_makes_it_stage_ordered(cg, k, rnd):
    stage = repair(cg, np.where(cg.is_param, -1, [rnd.randrange(k) for _ in range(cg.n)]), k)
    perm = np.array(rnd.sample(range(k), k))
    shuffled = cg.param_parts(np.where(cg.is_param, 0, perm[np.maximum(stage, 0)]), k)
    new = renumber_topologically(cg, shuffled, k)
    assert new is not None and compute_metrics(cg, cg.param_parts(new, k), k).stage_ordered


def test_metis_labels_are_deterministic_and_cover_the_parts():
    cg = CostGraph.random(3000, seed=1)
    a = metis_labels(cg, 4, seed=7, ncuts=2)
    b = metis_labels(cg, 4, seed=7, ncuts=2)
    assert np.array_equal(a, b)
    assert np.all(a[cg.is_param] == -1) and set(a[cg.movable]) == {0, 1, 2, 3}
    # k-way, not recursive bisection: the 3% tolerance is used, and the parts are balanced by it
    m = compute_metrics(cg, cg.param_parts(np.maximum(a, 0), 4), 4)
    assert m.imbalance < 0.1


def test_metis_on_a_disconnected_graph():
    # two independent chains plus an isolated input: METIS' `contiguous` would crash here
    cg = CostGraph(names=[f"n{i}" for i in range(9)], flops=[5] * 9, out_bytes=[8] * 9,
                   seconds=[1e-6] * 9, is_param=[False] * 9, is_compute=[True] * 9,
                   act_bytes=[8] * 9, src=[0, 1, 2, 4, 5, 6], dst=[1, 2, 3, 5, 6, 7])
    labels = metis_labels(cg, 2, seed=0)
    assert set(labels.tolist()) == {0, 1}


def test_metis_speeds_become_target_weights():
    cg = CostGraph.random(4000, seed=4)
    labels = metis_labels(cg, 2, seed=0, speeds=[3.0, 1.0])
    m = compute_metrics(cg, cg.param_parts(np.maximum(labels, 0), 2), 2)
    share = m.part_flops[0] / sum(m.part_flops)
    assert share == pytest.approx(0.75, abs=0.05)


def test_raw_metis_is_cyclic_on_a_transformer_and_repair_fixes_it():
    loaded = load_spec("zoo:gpt")
    cg = CostGraph.from_graph(graphopt.capture(loaded.model, loaded.inputs))
    labels = metis_labels(cg, 4, seed=0, ncuts=4)
    raw = compute_metrics(cg, cg.param_parts(np.maximum(labels, 0), 4), 4)
    assert not raw.acyclic  # what split_module refuses and a pipeline cannot run
    fixed = cg.param_parts(repair(cg, rank_labels(cg, labels, 4), 4), 4)
    assert compute_metrics(cg, fixed, 4).stage_ordered
