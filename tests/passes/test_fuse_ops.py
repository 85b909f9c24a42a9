"""fuse_ops: the groups it forms (before/expected), idempotence, the reasons it records, and, on
random DAGs (hypothesis), that fused graphs stay acyclic, never cross partitions and compute the
same function as eager PyTorch when the groups run as generated kernels."""
import networkx as nx
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

from graphopt.capture import graph_from_fx
from graphopt.kernels import bind_kernels
from graphopt.pass_lists import run_pipeline
from graphopt.passes import PassContext, get_pass

F = torch.nn.functional


def trace(fn, *examples):
    return graph_from_fx(make_fx(fn, tracing_mode="fake")(*examples), name=fn.__name__)


def plan_of(graph, **options):
    ctx = PassContext(options=options)
    graph = run_pipeline(graph, ["decompose_ops", "eliminate_dead_code", "fuse_ops"], ctx)
    return graph, ctx.artifacts["fusion"]


def targets(graph, group):
    return [graph.info[n].target.split(".")[1] for n in group.nodes]


def rel_err(a, b):
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# -- before / expected -----------------------------------------------------------------------
def test_pointwise_chain_is_one_group():
    def fn(x, b):
        return torch.relu(x + b) * 2

    graph, plan = plan_of(trace(fn, torch.randn(4, 8), torch.randn(8)))
    assert [g.kind for g in plan.groups] == ["pointwise"]
    assert targets(graph, plan.groups[0]) == ["add", "relu", "mul"]
    assert plan.groups[0].outputs == [plan.groups[0].nodes[-1]] and plan.unfused == []


def test_matmul_stays_in_aten_and_its_epilogue_is_refused_with_a_reason():
    def fn(x, w, b):
        return F.gelu(x @ w + b)

    graph, plan = plan_of(trace(fn, torch.randn(4, 8), torch.randn(8, 16), torch.randn(16)))
    assert len(plan.groups) == 1 and plan.groups[0].kind == "pointwise"
    assert [graph.info[n].target for n in plan.unfused] == ["aten.mm.default"]
    reasons = {(r.reason, r.detail) for r in plan.rejected}
    assert ("producer_opaque", "no_rule") in reasons


def test_layer_norm_then_gelu_is_a_reduction_with_prologue_and_epilogue():
    def fn(x, res, w, b):
        return F.gelu(F.layer_norm(x + res, (32,), w, b))

    graph, plan = plan_of(trace(fn, torch.randn(6, 32), torch.randn(6, 32), torch.randn(32),
                                torch.randn(32)))
    (group,) = plan.groups
    assert group.kind == "reduction" and group.shape == [6, 32] and group.reduce_dims == [1]
    ops = targets(graph, group)
    assert ops[0] == "add" and ops.count("sum") == 2 and "erf" in ops
    assert group.bytes_read + group.bytes_written < group.bytes_unfused


def test_fusing_through_an_outside_path_would_be_a_cycle():
    # a -> mm -> c and a -> c: putting a and c in one kernel would need mm inside it.
    def fn(x, w):
        a = x.exp()
        return a @ w + a

    graph, plan = plan_of(trace(fn, torch.randn(4, 4), torch.randn(4, 4)))
    assert len(plan.groups) == 2
    assert any(r.reason == "cycle" for r in plan.rejected)
    assert "mm" in {graph.info[n].target.split(".")[1] for n in plan.unfused}


def test_groups_never_cross_partitions():
    def fn(x):
        return (x.exp() + 1).relu() * 3

    graph = trace(fn, torch.randn(5, 5))
    compute = [i for i in graph.nodes() if not i.is_param]
    for i, info in enumerate(compute):
        info.part = 0 if i < len(compute) // 2 else 1
    graph, plan = plan_of(graph)
    for g in plan.groups:
        assert len({graph.info[n].part for n in g.nodes}) == 1 and g.part is not None
    assert any(r.reason == "cross_partition" for r in plan.rejected)


def test_kernel_size_cap_is_a_recorded_reason():
    def fn(x):
        return x.exp().neg().abs().sigmoid()

    _, plan = plan_of(trace(fn, torch.randn(9)), fuse_max_ops=2)
    assert all(g.ops <= 2 for g in plan.groups) and len(plan.groups) == 2
    assert any(r.reason == "too_large" for r in plan.rejected)


def test_reductions_over_different_dims_stay_apart():
    def fn(x):
        return x.sum(0, keepdim=True) + x.sum(1, keepdim=True)

    _, plan = plan_of(trace(fn, torch.randn(6, 7)))
    assert sum(g.kind == "reduction" for g in plan.groups) == 2
    assert any(r.reason in ("reduction_mismatch", "domain_mismatch") for r in plan.rejected)


def test_pass_is_idempotent_and_annotates_groups():
    def fn(x, b):
        return torch.softmax(x + b, -1) * 2

    graph, plan = plan_of(trace(fn, torch.randn(3, 10), torch.randn(10)))
    ctx = PassContext()
    again = get_pass("fuse_ops")(graph, ctx)
    assert not again.modified
    assert [g.nodes for g in ctx.artifacts["fusion"].groups] == [g.nodes for g in plan.groups]
    for g in plan.groups:
        assert all(graph.info[n].group == g.name for n in g.nodes)


# -- random DAGs -----------------------------------------------------------------------------
UNARY = [torch.tanh, torch.sigmoid, torch.relu, torch.neg, torch.abs,
         lambda v: torch.exp(-v.abs()), lambda v: v * 0.5 + 1]
BINARY = [torch.add, torch.mul, torch.sub, torch.maximum]
KINDS = ["unary", "binary", "bias", "row", "center", "softmax", "layernorm", "matmul",
         "transpose_copy", "reshape", "where", "colmean", "reshaped_scale"]


@st.composite
def programs(draw):
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(2, 33))
    steps = []
    for i in range(draw(st.integers(4, 14))):
        steps.append((draw(st.sampled_from(KINDS)), draw(st.integers(0, i)),
                      draw(st.integers(0, i)), draw(st.integers(0, 6)), draw(st.integers(0, 3))))
    outs = draw(st.lists(st.integers(0, len(steps)), min_size=1, max_size=3, unique=True))
    parts = draw(st.integers(1, 3))
    return rows, cols, steps, outs, parts


def build(steps, outs):
    def fn(x, bias, row, w):
        vals = [x]
        for kind, a, b, u, o in steps:
            va, vb = vals[a], vals[b]
            if kind == "unary":
                v = UNARY[u](va)
            elif kind == "binary":
                v = BINARY[o](va, vb)
            elif kind == "bias":
                v = va + bias
            elif kind == "row":
                v = va * row
            elif kind == "center":
                v = va - (va.amax(-1, keepdim=True) if u % 2 else va.mean(-1, keepdim=True))
            elif kind == "softmax":
                v = torch.softmax(va, -1)
            elif kind == "layernorm":
                v = F.layer_norm(va, (va.shape[-1],))
            elif kind == "matmul":
                v = va @ w
            elif kind == "transpose_copy":
                v = va.t().contiguous().t()
            elif kind == "reshape":
                v = va.reshape(-1).reshape(va.shape) + 1
            elif kind == "where":
                v = torch.where(va > 0, va, vb)
            elif kind == "reshaped_scale":  # a broadcast inside a reshape of the kernel's space
                rows, cols = va.shape
                v = (va.reshape(cols, rows) * row.reshape(-1)).reshape(rows, cols)
            else:
                v = va - va.mean(0, keepdim=True)
            vals.append(v)
        return tuple(vals[i] for i in outs)
    return fn


def inputs(rows, cols):
    return (torch.randn(rows, cols), torch.randn(cols), torch.randn(rows, 1),
            torch.randn(cols, cols) / cols ** 0.5)


@settings(max_examples=50, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_dags_fuse_acyclic_within_parts_and_compute_the_same(program):
    rows, cols, steps, outs, n_parts = program
    fn = build(steps, outs)
    graph = run_pipeline(trace(fn, *inputs(rows, cols)),
                         ["decompose_ops", "eliminate_dead_code", "annotate_costs"])
    compute = [i for i in graph.nodes() if not i.is_param]
    if n_parts > 1:  # parts in topological order, as a pipeline partition makes them
        for i, info in enumerate(compute):
            info.part = i * n_parts // len(compute)
    part_of = {i.name: i.part for i in compute}
    ctx = PassContext()
    graph = run_pipeline(graph, ["fuse_ops", "outline_groups"], ctx)
    plan = ctx.artifacts["fusion"]

    # acyclic: the graph of groups (each group one node) is a DAG, and the outlined fx graph
    # (one call per group) is topologically ordered
    graph.gm.graph.lint()
    G = graph.nx
    assert nx.is_directed_acyclic_graph(G)
    for g in plan.groups:
        assert len({part_of[n] for n in g.nodes}) == 1  # never across partitions
        call = graph.info[g.name]
        assert call.op == "call_module" and call.group == g.name

    # the same function, with the groups running as interpreted Triton kernels
    bind_kernels(graph, plan, "interpret")
    fresh = inputs(rows, cols)
    got = graph.run(*fresh)
    want = fn(*fresh)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert rel_err(a, b) < 1e-4
