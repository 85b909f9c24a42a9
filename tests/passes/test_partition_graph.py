"""The ``partition_graph`` pass: parts on every node, stable, and stages equal to eager PyTorch."""
import re

import pytest
import torch
from checks import max_rel_err
from torch import nn

import graphopt
from graphopt.errors import GraphoptError, PlanError
from graphopt.passes import PassContext, PassManager, check_invariants, get_pass
from graphopt.specs import load_spec


def _partition(graph, **options):
    ctx = PassContext(options=options, seed=options.pop("seed", 0))
    result = get_pass("partition_graph")(graph, ctx)
    check_invariants(result.graph)
    return result, ctx.artifacts["partition"]


def _chain(width=64, depth=4):
    layers = []
    for i in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers).eval()


def test_before_expected_chain_splits_in_the_middle():
    """Before: 4 equal Linear+ReLU layers. Expected at k=2: layers 0-1 on part 0, 2-3 on part 1,
    one activation crossing."""
    model, x = _chain(), torch.randn(8, 64)
    graph = graphopt.capture(model, (x,))
    result, plan = _partition(graph, k=2)
    parts = {i.name: i.part for i in graph.nodes()}
    linears = [i.name for i in graph.nodes() if i.target == "aten.linear.default"]
    assert [parts[n] for n in linears] == [0, 0, 1, 1]
    assert plan.summary()["comm_bytes"] == 8 * 64 * 4
    assert result.modified and result.stats["acyclic"]
    # parameters sit with the lowest part that uses them
    for info in graph.nodes():
        if info.is_param:
            users = [u.name for n in graph.fx_nodes() if n.name == info.name for u in n.users]
            assert info.part == min(parts[u] for u in users)


def test_pass_is_stable_and_deterministic():
    loaded = load_spec("zoo:gpt")
    g1 = graphopt.capture(loaded.model, loaded.inputs)
    g2 = g1.copy()
    r1, _ = _partition(g1, k=3)
    again, _ = _partition(g1, k=3)
    assert r1.modified and not again.modified
    _partition(g2, k=3)
    assert {i.name: i.part for i in g1.nodes()} == {i.name: i.part for i in g2.nodes()}


@pytest.mark.parametrize("spec,k", [("zoo:gpt", 2), ("zoo:gpt", 4), ("zoo:cnn", 2),
                                    ("zoo:resmlp", 3)])
def test_stages_match_eager_on_fresh_inputs(spec, k):
    loaded = load_spec(spec)
    graph = graphopt.capture(loaded.model, loaded.inputs)
    ctx = PassContext(options={"k": k})
    graph = PassManager(["annotate_costs", "partition_graph"]).run(graph, ctx)
    plan = ctx.artifacts["partition"]
    summary = plan.summary()
    assert summary["acyclic"] and summary["stage_ordered"]
    assert all(i.part is not None and 0 <= i.part < k for i in graph.nodes())
    stages = plan.split(graph)
    assert len(stages) == k
    x = loaded.inputs[0]
    fresh = torch.randint_like(x, 0, 1024) if not x.dtype.is_floating_point else torch.randn_like(x)
    with torch.no_grad():
        want = loaded.model(fresh)
        got = stages.run(fresh)
    assert max_rel_err(got, (want,)) < 1e-5


def test_cut_mode_keeps_the_general_answer():
    loaded = load_spec("zoo:gpt")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    _, cut = _partition(graph, k=4, mode="cut")
    _, pipe = _partition(graph.copy(), k=4, mode="pipeline")
    if cut.options["imbalance_used"] >= pipe.options["imbalance_used"]:
        # every stage-ordered plan is a placement too: cut mode never sends more
        assert cut.summary()["comm_bytes"] <= pipe.summary()["comm_bytes"]
    else:   # pipeline mode had to relax the balance at node granularity; cut mode did not
        assert cut.summary()["imbalance"] <= cut.options["imbalance_used"] + 1e-9
    if not cut.summary()["acyclic"]:
        with pytest.raises(PlanError, match="cycle"):
            cut.split(graph)


def test_memory_cap_moves_work_off_the_fullest_device():
    """Parameters plus the activations of in-flight micro-batches must fit every device."""
    loaded = load_spec("zoo:resmlp")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    _, free = _partition(graph, k=2, imbalance=0.2)

    def memory(plan):
        est = plan.estimate()["1f1b"]["peak_memory_bytes"]  # parameters + in-flight activations
        return max(est)
    cap = 0.9 * memory(free)
    _, capped = _partition(graph.copy(), k=2, imbalance=0.2, memory_cap=cap)
    assert memory(capped) <= cap < memory(free)
    assert capped.summary()["stage_ordered"]


@pytest.mark.parametrize("options,match", [
    ({}, "needs options\\['k'\\]"),
    ({"k": 0}, "at least 1"),
    ({"k": 500}, "more than the .* compute nodes"),
    ({"k": 2, "imbalance": -0.1}, "imbalance must be in"),
    ({"k": 2, "imbalance": 7.0}, "imbalance must be in"),
    ({"k": 2, "mode": "ring"}, "mode.* must be .*pipeline"),
])
def test_bad_options_are_plan_errors(options, match):
    """One clear line, as a GraphoptError (a PlanError, or the pass options' own type check)."""
    loaded = load_spec("zoo:mlp")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    with pytest.raises(GraphoptError, match=match):
        get_pass("partition_graph")(graph, PassContext(options=options))


class _OneBigMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(512, 512))

    def forward(self, x):
        return torch.relu(x @ self.w).sum(-1) + 1


def test_a_single_giant_node_is_refused_with_the_best_achievable():
    # FLOPs balance: the matmul holds most of the FLOPs (its predicted time on an H100 is
    # mostly kernel launches, so by time the graph balances)
    graph = graphopt.capture(_OneBigMatmul(), (torch.randn(64, 512),))
    with pytest.raises(PlanError, match=r"best achievable imbalance is .*--imbalance") as err:
        _partition(graph, k=2, balance="flops")
    big = max(graph.nodes(), key=lambda i: i.flops)
    best = big.flops / (graph.total_flops / 2) - 1
    suggested = float(re.search(r"--imbalance ([0-9.]+)", str(err.value)).group(1))
    assert best <= suggested <= best + 0.001
    # accepting the suggested imbalance gives the plan: the matmul's part is the slowest
    _, plan = _partition(graph, k=2, imbalance=suggested, balance="flops")
    s = plan.summary()
    assert s["part_flops"][plan.parts[big.name]] == max(s["part_flops"])
