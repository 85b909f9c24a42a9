"""One step prediction: ``plan``, ``train`` and ``pipeline`` price a configuration through
:func:`graphopt.costmodel.predict_step`, so for one configuration they print the same step."""
import pytest

from graphopt.cli.cmd_pipeline import pipeline_estimate
from graphopt.costmodel.stage_profile import stage_profile
from graphopt.costmodel.step import predict_step
from graphopt.costmodel.target import CostModel, Target
from graphopt.distributed.job import TrainConfig
from graphopt.parallel import ParallelConfig
from graphopt.planner.model import ModelCosts
from graphopt.planner.predict import predict
from graphopt.planner.training import estimate_step
from graphopt.specs import load_spec


@pytest.fixture(scope="module")
def costs():
    return ModelCosts(load_spec("zoo:resmlp"), CostModel(Target.preset("h100")))


def test_plan_predicted_step_equals_train_and_pipeline_estimates(costs):
    cm = costs.cost_model
    config = ParallelConfig(dp=1, pp=2, schedule="1f1b", microbatches=4)
    micro = config.split_batch(costs.batch)
    planned = predict(costs, config).predicted_step_seconds
    # graphopt train on the same plan and configuration
    train_cfg = TrainConfig(config)
    plan = costs.plan(2, micro)
    trained = estimate_step(plan, costs.prepared(micro), train_cfg, cm)
    assert trained["step_seconds"] == pytest.approx(planned, rel=1e-12)
    assert trained["priced_for"] == "H100 SXM + NVLink 4, preset"
    # graphopt pipeline (forward only) on that plan: the same function, forwards alone
    graph = costs.prepared(micro).graph
    piped = pipeline_estimate(graph, plan, 4, cm)
    fwd = predict_step(stage_profile(graph, plan.parts, 2, cm),
                       ParallelConfig(pp=2, schedule="gpipe", microbatches=4), cm,
                       forward_only=True)
    assert piped.step_seconds == pytest.approx(fwd.step_seconds, rel=1e-12)
    assert 0 < piped.step_seconds < planned


def test_cost_graph_prices_nodes_as_the_cost_model():
    from graphopt.partition.costgraph import CostGraph
    graph = load_spec("zoo:resmlp")
    from graphopt.capture import capture
    g = capture(graph.model, graph.inputs)
    cm = CostModel(Target.preset("cpu"))
    cg = CostGraph.from_graph(g, cm)
    want = {i.name: cm.node_seconds(i) for i in g.compute_nodes()}
    got = dict(zip(cg.names, cg.seconds))
    assert all(got[n] == pytest.approx(t) for n, t in want.items())


def test_targets_name_what_they_price():
    assert CostModel(Target.preset("h100")).describe() == "H100 SXM + NVLink 4, preset"
    assert Target.preset("cpu").on_host_cpu and not Target.preset("h100").on_host_cpu
