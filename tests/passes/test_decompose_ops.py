"""decompose_ops: composite ops become pointwise + reduction ATen ops that compute the same
values; multi-output ops keep their users; the pass is stable."""
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import graphopt
from graphopt.capture import graph_from_fx
from graphopt.fusion.ops import FusionKind, fusion_kind
from graphopt.passes import PassContext, get_pass
from graphopt.passes.decompose_ops import COMPOSITES, FUSION_DECOMPOSITIONS

F = torch.nn.functional
aten = torch.ops.aten


def composite_targets(graph):
    return [n.target for n in graph.gm.graph.nodes if n.op == "call_function"
            and (n.target in FUSION_DECOMPOSITIONS or n.target in COMPOSITES)]


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(24)
        self.bn = torch.nn.BatchNorm1d(6)

    def forward(self, x):
        h = F.gelu(self.ln(x))
        return torch.softmax(h, -1) + torch.log_softmax(self.bn(h), -1), h.var(-1)


def test_composites_become_fusible_ops_with_the_same_values():
    model = Block().eval()
    x = torch.randn(3, 6, 24)
    g = graphopt.capture(model, (x,))
    assert composite_targets(g)
    result = get_pass("decompose_ops")(g, PassContext())
    assert result.modified and result.stats["decomposed"] >= 5
    assert composite_targets(result.graph) == []
    kinds = {fusion_kind(n) for n in result.graph.gm.graph.nodes if n.op == "call_function"}
    assert FusionKind.REDUCTION in kinds and FusionKind.POINTWISE in kinds
    for got, want in zip(result.graph.run(x), model(x)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    again = get_pass("decompose_ops")(result.graph, PassContext())
    assert not again.modified  # idempotent


def test_multi_output_ops_keep_their_users():
    def fn(x, w, b, grad):
        out, mean, rstd = aten.native_layer_norm(x, [16], w, b, 1e-5)
        gx, gw, gb = aten.native_layer_norm_backward(grad, x, [16], mean, rstd, w, b,
                                                     [True, True, True])
        return out, mean, rstd, gx, gw, gb

    args = (torch.randn(5, 16), torch.randn(16), torch.randn(16), torch.randn(5, 16))
    g = graph_from_fx(make_fx(fn, tracing_mode="fake")(*args))
    for info in g.nodes():
        info.part = 1
    g = get_pass("decompose_ops")(g, PassContext()).graph
    assert composite_targets(g) == []
    assert all(i.part == 1 for i in g.nodes() if not i.is_param)  # new nodes keep the part
    for got, want in zip(g.run(*args), fn(*args)):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_variance_is_two_pass():
    def fn(x):
        return torch.var_mean(x, dim=1, correction=0)

    x = torch.randn(4, 300) * 1e-3 + 1e4
    g = graph_from_fx(make_fx(fn, tracing_mode="fake")(x))
    g = get_pass("decompose_ops")(g, PassContext()).graph
    sums = [n for n in g.gm.graph.nodes if n.target == aten.sum.dim_IntList]
    assert len(sums) == 2  # mean, then the sum of squared deviations
    var, mean = g.run(x)
    want_var, want_mean = fn(x.double())
    assert torch.allclose(var.double(), want_var, rtol=1e-2)
    assert torch.allclose(mean.double(), want_mean)
