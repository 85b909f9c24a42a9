"""outline_groups: each planned group becomes one call to a submodule holding its ATen subgraph;
the graph computes the same values and the pass is stable."""
import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt.capture import graph_from_fx
from graphopt.pass_lists import run_pipeline
from graphopt.passes import PassContext, PassError, PassManager, get_pass


def fn(x, w, b):
    h = torch.layer_norm(x, (12,)) * b
    return torch.relu(h @ w + 1), h.sum()


def test_groups_become_calls_with_the_same_results():
    args = (torch.randn(4, 12), torch.randn(12, 12), torch.randn(12))
    g = graph_from_fx(make_fx(fn, tracing_mode="fake")(*args))
    ctx = PassContext()
    g = run_pipeline(g, ["decompose_ops", "eliminate_dead_code", "fuse_ops"], ctx)
    plan = ctx.artifacts["fusion"]
    result = get_pass("outline_groups")(g, ctx)
    assert result.modified and result.stats["outlined"] == len(plan.groups) >= 2
    gm = result.graph.gm
    calls = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert sorted(c.target for c in calls) == sorted(grp.name for grp in plan.groups)
    for grp in plan.groups:
        sub = getattr(gm, grp.name)
        placeholders = [n.name for n in sub.graph.nodes if n.op == "placeholder"]
        assert placeholders == grp.inputs
        assert result.graph.info[grp.name].group == grp.name
    for got, want in zip(result.graph.run(*args), fn(*args)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    again = get_pass("outline_groups")(result.graph, ctx)
    assert not again.modified


def test_without_a_plan_is_an_error_naming_fuse_ops():
    args = (torch.randn(4, 12), torch.randn(12, 12), torch.randn(12))
    g = graph_from_fx(make_fx(fn, tracing_mode="fake")(*args))
    with pytest.raises(PassError, match="needs the 'fusion' artifact, made by 'fuse_ops'"):
        get_pass("outline_groups")(g, PassContext())
    with pytest.raises(PassError, match="'outline_groups' needs the 'fusion' artifact.*add it"):
        PassManager(["annotate_costs", "outline_groups"]).run(g, PassContext())
