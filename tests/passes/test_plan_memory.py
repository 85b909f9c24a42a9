"""plan_memory: liveness, peak and arena of the schedule; the graph is not changed and the pass
is stable; buffers alive together never share arena bytes."""
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import graphopt
from graphopt import zoo
from graphopt.graph import Graph
from graphopt.memory.joint import capture_joint
from graphopt.passes import PassContext, PassManager
from graphopt.passes.plan_memory import plan_memory

aten = torch.ops.aten


def _graph(fn, *inputs) -> Graph:
    return Graph(make_fx(fn)(*inputs))


def test_before_and_expected_on_a_diamond():
    # a = x+1; b = a*2; c = a+b; d = relu(c): a lives until c, b is born while a lives.
    def fn(x):
        a = aten.add.Tensor(x, 1.0)
        b = aten.mul.Tensor(a, 2.0)
        c = aten.add.Tensor(a, b)
        return aten.relu.default(c)
    x = torch.randn(8, 8)
    g = _graph(fn, x)
    ctx = PassContext()
    result = plan_memory(g, ctx)
    n = 8 * 8 * 4
    lv = ctx.artifacts["memory"].liveness
    assert list(lv.live) == [0, n, 2 * n, 3 * n, 2 * n]
    assert result.stats["peak_bytes"] == 3 * n and not result.modified
    arena = ctx.artifacts["memory"].arena
    assert arena.size == arena.lower_bound == 3 * 256
    info = g.info
    # relu may reuse a's (or b's) bytes: they are dead when it is written.
    assert info["relu"].extra["mem_offset"] in (info["add"].extra["mem_offset"],
                                                info["mul"].extra["mem_offset"])
    assert info["add_1"].extra["live"] == [3, 4]
    torch.testing.assert_close(g.gm(x), torch.relu((x + 1) + (x + 1) * 2))


def test_stable_and_does_not_change_the_graph():
    model, inputs = zoo.build("mlp")
    g = graphopt.capture(model, inputs)
    code = g.gm.code
    ctx = PassContext()
    g = PassManager(["plan_memory", "plan_memory"]).run(g, ctx)
    first, second = ctx.history
    assert first.stats == second.stats and not first.modified and not second.modified
    assert g.gm.code == code
    torch.testing.assert_close(g.run(*inputs)[0], model(*inputs))


def test_planned_training_step_arena_is_valid():
    torch.manual_seed(0)
    x = torch.randn(16, 32)
    joint = capture_joint(graphopt.capture(zoo.ResidualMLP(dim=32, depth=2, hidden=64), (x,)),
                          (x,))
    ctx = PassContext(options={"memory_budget": 0.5, "num_fwd_outputs": joint.num_fwd_outputs})
    g = PassManager(["rematerialize", "plan_memory"]).run(joint.graph, ctx)
    plan = ctx.artifacts["memory"]
    bufs = plan.liveness.buffers
    assert plan.arena.size >= plan.arena.lower_bound >= plan.liveness.peak
    for i, a in enumerate(bufs):
        for b in bufs[i + 1:]:
            if a.overlaps(b):
                oa, ob = plan.arena.offsets[a.name], plan.arena.offsets[b.name]
                assert oa + a.size <= ob or ob + b.size <= oa
    assert plan.to_dict()["arena"]["bytes"] == plan.arena.size
    assert any("mem_offset" in g.info[b.name].extra for b in bufs)
