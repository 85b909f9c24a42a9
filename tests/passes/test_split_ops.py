"""The ``split_ops`` pass: heavy matmuls, attention and convolutions cut into blocks that compute
the same function, only where a balanced stage boundary needs them."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.errors import PlanError
from graphopt.passes import PassContext, check_invariants, get_pass
from graphopt.passes.split_ops import _split_node, split_points
from graphopt.pipeline import PARTITION, run_pipeline
from graphopt.specs import load_spec
from graphopt.stage_runtime import run_pipeline as run_stages


def _rel_err(got, want) -> float:
    err = 0.0
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        err = max(err, float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)))
    return err


def _split_all(graph, frac=(0.3,)):
    """Cut every node the pass can split at the given fractions of its rows/channels."""
    from graphopt.passes.split_ops import _plan
    done = 0
    for node in list(graph.fx_nodes()):
        how = _plan(node)
        if how is None or how[0] < 2:
            continue
        cuts = sorted({min(max(round(f * how[0]), 1), how[0] - 1) for f in frac})
        _split_node(graph, node, cuts)
        done += 1
    graph.gm.graph.lint()
    graph.gm.recompile()
    graph.reannotate()
    return done


class _Ops(nn.Module):
    """One of each op kind the pass splits: linear, mm, addmm, bmm, matmul, conv, attention."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 24)
        self.w = nn.Parameter(torch.randn(24, 16))
        self.b = nn.Parameter(torch.randn(16))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv_nb = nn.Conv2d(8, 6, 1, bias=False)

    def forward(self, x, img, mask):
        h = self.lin(x)                                   # [2, 10, 24]
        m = torch.mm(h[0], self.w)                        # mm [10, 16]
        a = torch.addmm(self.b, h[1], self.w)             # addmm [10, 16]
        q = h.reshape(2, 10, 4, 6).transpose(1, 2)        # [2, 4, 10, 6]
        att = F.scaled_dot_product_attention(q, q * 0.5, q, is_causal=True)
        att2 = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
        s = torch.bmm(h, h.transpose(1, 2))               # bmm [2, 10, 10]
        mm3 = torch.matmul(x, self.w.t())                 # matmul [2, 10, 24]
        c = self.conv_nb(torch.relu(self.conv(img)))
        return m + a, att + att2, s, mm3, c


def _ops_inputs():
    return (torch.randn(2, 10, 16), torch.randn(1, 3, 9, 9), torch.randn(2, 4, 10, 10))


@pytest.mark.parametrize("frac", [(0.3,), (0.2, 0.5, 0.9)])
def test_every_op_kind_splits_exactly(frac):
    torch.manual_seed(0)
    model = _Ops().eval()
    graph = graphopt.capture(model, _ops_inputs())
    n = _split_all(graph, frac)
    assert n >= 6
    check_invariants(graph)
    cats = [i for i in graph.nodes() if i.target == "aten.cat.default"]
    assert len(cats) == n
    for node in graph.fx_nodes():     # new nodes carry fake values of the right shape
        assert isinstance(node.meta.get("val"), (torch.Tensor, tuple, list, int, float)) or \
            node.op != "call_function"
    with torch.no_grad():
        for _ in range(2):            # fresh random inputs
            inputs = _ops_inputs()
            assert _rel_err(graph.run(*inputs), model(*inputs)) < 1e-5


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(2, 40), width=st.integers(1, 24),
       cuts=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4))
def test_row_blocks_of_linear_equal_eager(rows, width, cuts):
    torch.manual_seed(rows)
    model = nn.Sequential(nn.Linear(width, 3 * width), nn.Tanh(), nn.Linear(3 * width, 5)).eval()
    graph = graphopt.capture(model, (torch.randn(rows, width),))
    assert _split_all(graph, tuple(cuts)) == 2
    x = torch.randn(rows, width)
    with torch.no_grad():
        assert _rel_err(graph.run(x), (model(x),)) < 1e-5


def _heavy_middle():
    """A chain whose middle Linear holds most of the FLOPs: k=2 needs a boundary inside it."""
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2048), nn.ReLU(),
                         nn.Linear(2048, 8)).eval()


def test_splits_only_what_balance_needs():
    graph = graphopt.capture(_heavy_middle(), (torch.randn(64, 32),))
    heavy = max(graph.compute_nodes(), key=lambda i: i.flops)
    assert split_points(graph, 1, 0.03) == {}
    pts = split_points(graph, 2, 0.03)
    assert list(pts) == [heavy.name] and len(pts[heavy.name]) == 1
    # equal layers: every ideal boundary already falls between nodes, nothing to split
    chain = nn.Sequential(*[nn.Linear(32, 32) for _ in range(4)]).eval()
    assert split_points(graphopt.capture(chain, (torch.randn(64, 32),)), 4, 0.0) == {}
    off = get_pass("split_ops")(graph, PassContext(options={"k": 2}))
    assert not off.modified and off.stats["enabled"] is False   # opt-in
    ctx = PassContext(options={"k": 2, "split_ops": True})
    res = get_pass("split_ops")(graph, ctx)
    assert res.modified and res.stats["split"] == 1
    assert heavy.name not in graph.info and list(ctx.artifacts["split_ops"]) == [heavy.name]
    assert all(graph[n].extra["split_of"] == heavy.name for n in ctx.artifacts["split_ops"][
        heavy.name])
    again = get_pass("split_ops")(graph, PassContext(options={"k": 2, "split_ops": True}))
    assert not again.modified          # idempotent: nothing left to split


def test_needs_k():
    graph = graphopt.capture(_heavy_middle(), (torch.randn(4, 32),))
    with pytest.raises(PlanError, match="options\\['k'\\]"):
        get_pass("split_ops")(graph, PassContext(options={"split_ops": True}))


def test_partition_pipeline_balances_and_runs_on_two_processes():
    model = _heavy_middle()
    x = torch.randn(64, 32)
    graph = graphopt.capture(model, (x,))
    with pytest.raises(PlanError, match="cannot balance"):    # unsplit: one node holds 78%
        run_pipeline(graph.copy(), PARTITION, PassContext(options={"k": 2}))
    ctx = PassContext(options={"k": 2, "split_ops": True})
    graph = run_pipeline(graph, PARTITION, ctx)
    plan = ctx.artifacts["partition"]
    assert plan.summary()["imbalance"] <= 0.03
    assert any("split_ops" in note for note in plan.notes)
    stages = plan.split(graph)
    mbs = [(torch.randn(64, 32),) for _ in range(2)]
    run = run_stages(stages, mbs)
    with torch.no_grad():
        for mb, out in zip(mbs, run.outputs):
            assert _rel_err(out, (model(*mb),)) < 1e-5
            assert torch.equal(out[0], graph.run(*mb)[0])


def test_gpt2_small_meets_three_percent_and_matches_eager():
    pytest.importorskip("transformers")
    loaded = load_spec("hf:GPT2LMHeadModel", overrides={"n_layer": 2, "n_embd": 128,
                                                          "n_head": 4, "vocab_size": 1000})
    graph = graphopt.capture(loaded.model, loaded.inputs)
    ctx = PassContext(options={"k": 4, "split_ops": True})
    graph = run_pipeline(graph, PARTITION, ctx)
    assert ctx.artifacts["split_ops"]          # the LM head alone outweighs 1/4 of the FLOPs
    plan = ctx.artifacts["partition"]
    assert plan.summary()["imbalance"] <= 0.03 and plan.summary()["stage_ordered"]
    ids = torch.randint(0, 1000, loaded.inputs[0].shape)
    with torch.no_grad():
        want = loaded.model(ids).logits
        got = graph.run(ids)[0]
        assert _rel_err((got,), (want,)) < 1e-5
        assert _rel_err(plan.split(graph).run(ids), (got,)) < 1e-6
