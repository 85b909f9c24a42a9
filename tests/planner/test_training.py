"""The training cost model: backward factors, memory per rank, schedules, refusals."""
import pytest
import torch
from torch import nn
from train_models import plan_from_cuts, prepared

import graphopt
from graphopt.costmodel.backward import backward_factors
from graphopt.costmodel.optimizer import state_factor
from graphopt.distributed.lowering import lower
from graphopt.errors import GraphoptError, PlanError
from graphopt.memory.joint import capture_joint
from graphopt.planner.training import (
    check_memory,
    plan_training,
    stage_memory,
    training_cost_graph,
)
from graphopt.schedules import check_schedule, inflight, placement, stages_per_rank


def test_a_matmul_costs_one_gradient_per_differentiable_operand():
    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    g = graphopt.capture(mlp, (torch.randn(3, 8),))
    b = dict(zip([n.name for n in g.fx_nodes()], backward_factors(g)))
    first, second = [n for n in b if g.info[n].op_class == "matmul"]
    assert b[first] == 1.0            # data needs no gradient: dW only
    assert b[second] == 2.0           # dX and dW
    assert b["x" if "x" in b else next(iter(b))] == 0.0
    gelu = next(n for n in b if "gelu" in g.info[n].target)
    assert b[gelu] == 1.0


@pytest.mark.parametrize("name", ["resmlp", "gpt2", "vit"])
def test_training_flops_agree_with_the_joint_graph(name):
    """Forward plus the per-op backward estimate, against aot_autograd's traced backward."""
    prep = prepared(name)
    joint = capture_joint(prep.graph, [t[:prep.micro] for t in prep.batches.example])
    ours = training_cost_graph(prep.graph, "cpu").total_flops
    assert abs(ours / joint.graph.total_flops - 1) < 0.10


def test_parameter_bytes_carry_gradients_and_optimizer_state():
    prep = prepared("resmlp")
    fwd = graphopt.partition.costgraph.CostGraph.from_graph(prep.graph, "cpu")
    for opt, momentum, factor in (("sgd", 0.0, 2), ("sgd", 0.9, 3), ("adamw", 0.0, 4)):
        assert state_factor(opt, momentum) == factor
        tcg = training_cost_graph(prep.graph, "cpu", optimizer=opt, momentum=momentum)
        weights = [i for i, n in enumerate(fwd.names) if prep.graph.info[n].op == "get_attr"]
        assert all(tcg.out_bytes[i] == factor * fwd.out_bytes[i] for i in weights)


def test_memory_per_rank_follows_the_schedule():
    prep = prepared("resmlp")
    plan = plan_from_cuts(prep.graph, 2, ["add_1"], "resmlp")
    low = lower(plan.split(prep.graph), prep.graph)
    gpipe = stage_memory(low, prep.graph, [0, 1], inflight("gpipe", 2, 1, 8))
    f1b = stage_memory(low, prep.graph, [0, 1], inflight("1f1b", 2, 1, 8))
    assert gpipe[0]["weights"] == f1b[0]["weights"]
    assert gpipe[0]["activations"] == 4 * f1b[0]["activations"]       # 8 vs min(8, 2 - 0)
    assert gpipe[1]["activations"] == 8 * f1b[1]["activations"]       # 8 vs 1
    worst = max(gpipe, key=lambda r: r["total"])
    with pytest.raises(PlanError, match=f"pipeline rank {worst['rank']} needs"):
        check_memory(gpipe, worst["total"] - 1, "gpipe", 8)
    check_memory(gpipe, max(r["total"] for r in gpipe), "gpipe", 8)


def test_a_cap_no_plan_fits_is_refused_by_the_partitioner():
    prep = prepared("resmlp")
    with pytest.raises(PlanError, match="memory cap"):
        plan_training(prep.graph, k=2, schedule="1f1b", microbatches=4, memory_cap=1000)


def test_schedules_place_stages_and_count_micro_batches_in_flight():
    assert placement("interleaved", 2, 2) == [0, 1, 0, 1]
    assert placement("zero-bubble", 3, 2) == [0, 1, 2, 2, 1, 0]
    assert inflight("1f1b", 3, 1, 8) == [3, 2, 1]
    assert inflight("gpipe", 3, 1, 8) == [8, 8, 8]
    assert max(inflight("interleaved", 2, 2, 4)) <= 4
    assert stages_per_rank("zero-bubble") == 2 and stages_per_rank("interleaved", 3) == 3
    with pytest.raises(GraphoptError, match="at least as many micro-batches"):
        check_schedule("1f1b", 4, 1, 2)
    with pytest.raises(GraphoptError, match="exactly 2"):
        stages_per_rank("zero-bubble", 3)
