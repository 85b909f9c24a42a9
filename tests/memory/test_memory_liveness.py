"""Liveness: live bytes per step equal what an executor that frees each value after its last use
actually holds (unique storages, so views and tuple outputs are counted once)."""
import operator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt.memory.liveness import Buffer, analyze, profile

aten = torch.ops.aten


def _traced(fn, *inputs):
    return make_fx(fn)(*inputs)


def executed_live(gm: torch.fx.GraphModule, inputs) -> list[int]:
    """Run the graph node by node, freeing values after their last use; at each step sum the
    bytes of the distinct storages alive that no input owns."""
    nodes = [n for n in gm.graph.nodes if n.op != "output"]
    index = {n: i for i, n in enumerate(nodes)}
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    last = {n: max([index[u] for u in n.users if u.op != "output"]
                   + ([len(nodes)] if out_node in n.users else []) + [index[n]]) for n in nodes}
    env, live, it = {}, [], iter(inputs)
    input_storages = set()

    def tensors(v):
        return [v] if isinstance(v, torch.Tensor) else [x for x in v if isinstance(x, torch.Tensor)] \
            if isinstance(v, (tuple, list)) else []

    for i, n in enumerate(nodes):
        if n.op in ("placeholder", "get_attr"):
            env[n] = next(it) if n.op == "placeholder" else \
                torch.fx.graph_module._get_attr(gm, n.target)
            if isinstance(env[n], torch.Tensor):
                input_storages.add(env[n].untyped_storage().data_ptr())
        else:
            args = torch.fx.node.map_arg(n.args, lambda a: env[a])
            kwargs = torch.fx.node.map_arg(n.kwargs, lambda a: env[a])
            env[n] = n.target(*args, **kwargs)
        seen = {}
        for v in env.values():
            for t in tensors(v):
                s = t.untyped_storage()
                if s.data_ptr() not in input_storages:
                    seen[s.data_ptr()] = s.nbytes()
        live.append(sum(seen.values()))
        for m in [m for m in env if last[m] == i]:
            del env[m]
    return live


def _random_program(draw_ops, n_inputs=2):
    """A function of two (4, 8) tensors built from a list of (op, a, b) choices."""
    def fn(*xs):
        vals = list(xs)
        outs = []
        for op, a, b in draw_ops:
            x, y = vals[a % len(vals)], vals[b % len(vals)]
            if op == "add":
                vals.append(aten.add.Tensor(x, y))
            elif op == "mul":
                vals.append(aten.mul.Tensor(x, y))
            elif op == "relu":
                vals.append(aten.relu.default(x))
            elif op == "alias":
                vals.append(aten.alias.default(x))
            elif op == "layer_norm":
                res = aten.native_layer_norm.default(x, [8], None, None, 1e-5)
                vals.extend([res[0], res[1].expand(4, 8), res[2].expand(4, 8)])
            elif op == "out":
                outs.append(x)
        return tuple(outs) + (vals[-1],)
    return fn


OPS = st.sampled_from(["add", "mul", "relu", "alias", "layer_norm", "out"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(OPS, st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=14))
def test_liveness_matches_an_executor_that_frees_after_last_use(program):
    xs = (torch.randn(4, 8), torch.randn(4, 8))
    gm = _traced(_random_program(program), *xs)
    lv = analyze(gm)
    assert list(lv.live) == executed_live(gm, xs)
    assert lv.peak == max(lv.live)


def test_a_chain_frees_each_value_after_its_consumer():
    gm = _traced(lambda x: aten.relu.default(aten.mul.Tensor(aten.add.Tensor(x, x), 2.0)),
                 torch.randn(16, 16))
    lv = analyze(gm)
    nbytes = 16 * 16 * 4
    # x | add | mul (add alive while mul writes) | relu (mul alive while relu writes)
    assert list(lv.live) == [0, nbytes, 2 * nbytes, 2 * nbytes]
    assert lv.peak == 2 * nbytes and lv.steps[lv.peak_step] == "mul"


def test_a_view_keeps_its_base_alive():
    def fn(x):
        a = aten.add.Tensor(x, 1.0)
        v = aten.view.default(a, [256])
        b = aten.mul.Tensor(x, 3.0)
        return aten.add.Tensor(aten.view.default(b, [256]), v)
    gm = _traced(fn, torch.randn(16, 16))
    lv = analyze(gm)
    a = next(b for b in lv.buffers if b.name == "add")
    assert a.end == len(lv.steps) - 1  # read (through its view) by the last node
    assert not any(b.name.startswith("view") for b in lv.buffers)


def test_tuple_outputs_live_until_the_last_getitem_and_inputs_can_count():
    x = torch.randn(4, 8)
    gm = _traced(lambda x: aten.native_layer_norm.default(x, [8], None, None, 1e-5)[0], x)
    lv = analyze(gm)
    producer = next(n for n in gm.graph.nodes if n.target is aten.native_layer_norm.default)
    getitems = [n for n in producer.users if n.target is operator.getitem]
    last_getitem = max(lv.steps.index(n.name) for n in getitems)
    items = [b for b in lv.buffers if b.name in {n.name for n in getitems}]
    assert items and all(b.start == lv.steps.index(producer.name) for b in items)
    assert all(b.end >= last_getitem for b in items)
    assert list(lv.live) == executed_live(gm, (x,))
    counted = analyze(gm, count_inputs={"x_1"})
    assert counted.live[0] == 4 * 8 * 4 and counted.peak > lv.peak


def test_profile_and_summary():
    bufs = [Buffer("a", 10, 0, 2), Buffer("b", 5, 1, 1), Buffer("c", 7, 2, 3)]
    assert list(profile(bufs, 4)) == [10, 15, 17, 7]
    gm = _traced(lambda x: aten.add.Tensor(x, x), torch.randn(4))
    summary = analyze(gm).summary()
    assert summary["peak_bytes"] == 16 and summary["peak_tensors"][0]["name"] == "add"


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_captured_models_match_the_executor(name):
    import graphopt
    from graphopt import zoo
    model, inputs = zoo.build(name)
    g = graphopt.capture(model, inputs)
    params = [t for n, t in g.gm.named_parameters()] + [t for n, t in g.gm.named_buffers()]
    assert params  # params are get_attr nodes, never counted
    lv = analyze(g)
    with torch.no_grad():
        assert list(lv.live) == executed_live(g.gm, inputs)
