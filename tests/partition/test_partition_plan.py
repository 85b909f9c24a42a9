"""partition.json: written as the contract says, read back strictly, numbers recomputed."""
import copy
import json

import pytest
import torch

import graphopt
from graphopt.errors import PlanError
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.plan import SCHEMA, Partition
from graphopt.partition.search import PartitionOptions, search
from graphopt.specs import load_spec


@pytest.fixture(scope="module")
def gpt():
    loaded = load_spec("zoo:gpt")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    cg = CostGraph.from_graph(graph)
    opts = PartitionOptions(k=3)
    plan = Partition.from_search(cg, search(cg, opts), model="zoo:gpt", options=opts)
    return loaded, graph, plan


def test_json_has_the_contract_fields(gpt):
    _, graph, plan = gpt
    data = json.loads(plan.to_json())
    assert data["schema"] == SCHEMA and data["k"] == 3 and data["mode"] == "pipeline"
    assert {n["name"] for n in data["nodes"]} == set(graph.info)
    for n in data["nodes"]:
        assert {"name", "op", "target", "part", "flops", "out_bytes", "is_param"} <= set(n)
    assert len(data["edges"]) == len(graph.edges())
    assert {"comm_bytes", "imbalance", "acyclic", "part_flops", "part_param_bytes",
            "seconds"} <= set(data["summary"])
    assert set(data["baselines"]) == {"equal_flops", "contiguous_dp"}


def test_round_trip_and_recomputation(gpt):
    _, _, plan = gpt
    back = Partition.from_json(plan.to_json())
    assert back.summary() == {**plan.summary(), "seconds": back.seconds}
    # the summary follows the nodes, not what the file claims
    data = json.loads(plan.to_json())
    data["summary"]["comm_bytes"] = 1
    assert Partition.from_dict(data).summary()["comm_bytes"] == plan.summary()["comm_bytes"]


def _broken(plan, edit):
    data = copy.deepcopy(json.loads(plan.to_json()))
    edit(data)
    return json.dumps(data)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(schema="graphopt.partition/0"), "schema"),
    (lambda d: d.update(k=0), "k must be a positive integer"),
    (lambda d: d.update(mode="ring"), "mode must be"),
    (lambda d: d["nodes"][5].update(part=9), "outside 0..2"),
    (lambda d: d["nodes"][5].pop("flops"), "flops None"),
    (lambda d: d["nodes"][5].update(is_param="yes"), "is_param"),
    (lambda d: d["nodes"].append(dict(d["nodes"][0])), "appears twice"),
    (lambda d: d["edges"][0].update(dst="nowhere"), "not a node"),
    (lambda d: d["edges"][0].update(bytes=-1), "not a count"),
    (lambda d: d["nodes"].reverse(), "goes backwards"),
    (lambda d: [n.update(part=2 - n["part"]) for n in d["nodes"]], "only to higher parts"),
])
def test_malformed_plans_are_one_line_errors(gpt, edit, match):
    _, _, plan = gpt
    with pytest.raises(PlanError, match=match) as err:
        Partition.from_json(_broken(plan, edit))
    assert "\n" not in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(PlanError, match="cannot read plan"):
        Partition.from_json(tmp_path / "missing.json")
    bad = tmp_path / "partition.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="partition.json: not valid JSON"):
        Partition.from_json(bad)


def test_plan_for_another_graph_is_refused(gpt):
    _, _, plan = gpt
    loaded = load_spec("zoo:mlp")
    other = graphopt.capture(loaded.model, loaded.inputs)
    with pytest.raises(PlanError, match="does not match"):
        plan.split(other)


def test_split_composition_equals_the_model(gpt):
    loaded, graph, plan = gpt
    stages = plan.split(graph)
    x = torch.randint(0, 1024, loaded.inputs[0].shape)
    with torch.no_grad():
        want = loaded.model(x)
        got = stages.run(x)
    assert len(got) == 1 and torch.equal(got[0], graph.run(x)[0])
    assert float((got[0] - want).abs().max() / want.abs().max()) < 1e-5
    # every stage holds only the parameters it uses, and sends only forward
    for st in stages.stages:
        for name, dsts in st.sends.items():
            assert all(d > st.index for d in dsts)


def test_tuple_values_cross_stages():
    """A BatchNorm's (out, mean, invstd) tuple may be produced on one stage and unpacked on the
    next: the split and the runtime carry the tuple."""
    loaded = load_spec("zoo:cnn")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    bn = next(i.name for i in graph.nodes() if "batch_norm" in i.target)
    parts = {}
    for i, info in enumerate(graph.nodes()):
        parts[info.name] = 0
    seen = False
    for node in graph.fx_nodes():
        if node.name == bn:
            seen = True
            continue
        if seen and not graph.info[node.name].is_param:
            parts[node.name] = 1
    from graphopt.partition.stages import split_graph
    stages = split_graph(graph, parts, 2)
    assert stages.stages[1].layout[bn] is not None  # a tuple travels
    x = torch.randn_like(loaded.inputs[0])
    with torch.no_grad():
        torch.testing.assert_close(stages.run(x), graph.run(x))


def test_html_repr(gpt):
    html = gpt[2]._repr_html_()
    assert "<table>" in html and "communication" in html
