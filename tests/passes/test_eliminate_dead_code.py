"""eliminate_dead_code: removes unused nodes, keeps outputs equal, and is stable."""
import torch

import graphopt
from graphopt.passes import PassContext, get_pass


class WithDeadBranch(torch.nn.Module):
    def forward(self, x):
        unused = torch.exp(x) * 3  # noqa: F841 - the dead code under test
        return torch.relu(x) + 1


def test_removes_dead_nodes_and_keeps_results():
    g = graphopt.capture(WithDeadBranch(), (torch.randn(5),))
    # export already prunes dead code; add a dead node by hand to see the pass work
    fx = g.gm.graph
    relu = next(n for n in fx.nodes if "relu" in n.name)
    with fx.inserting_after(relu):
        dead = fx.call_function(torch.ops.aten.exp.default, (relu,))
    dead.meta["val"] = relu.meta["val"]
    g.gm.recompile()
    g.reannotate()
    before = len(g)
    dce = get_pass("eliminate_dead_code")
    result = dce(g, PassContext())
    assert result.modified and result.stats["removed"] == 1 and len(result.graph) == before - 1
    x = torch.randn(5)
    assert torch.allclose(result.graph.run(x)[0], WithDeadBranch()(x))
    again = dce(result.graph, PassContext())
    assert not again.modified  # idempotent


def test_annotate_costs_is_idempotent():
    g = graphopt.capture(torch.nn.Linear(3, 4), (torch.randn(2, 3),))
    ann = get_pass("annotate_costs")
    g.nodes()[0].part = 1
    first = ann(g, PassContext())
    assert not first.modified and g.nodes()[0].part == 1  # annotations survive
    g.info[g.nodes()[-1].name].flops = 0
    assert ann(g, PassContext()).modified
    assert not ann(g, PassContext()).modified
