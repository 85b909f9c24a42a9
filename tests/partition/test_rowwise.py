"""Row-wise regions: which ops compute each row on its own, and cutting a region into token blocks.

The rules are exact or refuse: every region the labelling accepts is cut into blocks here and run
against the uncut graph on fresh random inputs (hypothesis draws the op chains), and the ops that
mix rows (softmax or a sum over the rows, causal attention, a reshape that merges the rows with
another dimension) must end a region.
"""
import pytest
import torch
import torch.nn.functional as F
from checks import max_rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.partition.rowwise import label_region, row_args
from graphopt.partition.split_plan import Cut
from graphopt.passes import check_invariants
from graphopt.passes.split_ops import apply_splits


def _fx(graph, name):
    return next(n for n in graph.fx_nodes() if n.name == name)


def _compute(graph):
    return [n for n in graph.fx_nodes() if n.op == "call_function" and
            not graph.info[n.name].is_param]


class _FFN(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x):                       # x: [batch, tokens, d]
        return x + self.down(F.gelu(self.up(self.ln(x))))


def test_ffn_block_is_one_region_with_the_tokens_as_rows():
    graph = graphopt.capture(_FFN().eval(), (torch.randn(2, 12, 16),))
    nodes = _compute(graph)
    anchor = next(n for n in nodes if "linear" in n.name)
    reg = label_region(nodes, anchor, 1)
    assert reg is not None and reg.rows == 12
    assert set(reg.dims) == {n.name for n in nodes}          # every op computed per block
    assert list(reg.external.values()) == [1]                 # x, sliced on its token dim
    assert row_args(anchor, 2) is None                        # a linear's features are not rows


def _region_of(module, x, dim):
    graph = graphopt.capture(module.eval(), (x,))
    nodes = _compute(graph)
    heavy = max(nodes, key=lambda n: graph.info[n.name].flops)
    return label_region(nodes, heavy, dim)


@pytest.mark.parametrize("mixer", [
    lambda h: h.softmax(dim=1),                               # normalises over the rows
    lambda h: h.sum(dim=1, keepdim=True) + h,                 # a reduction over the rows
    lambda h: h.reshape(2 * 12, -1).t().reshape(2, 12, -1),   # reshape through a transpose
    lambda h: h.cumsum(dim=1),                                # no rule: refused, not guessed
])
def test_ops_that_mix_rows_end_a_region(mixer):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 16)

        def forward(self, x):
            return mixer(self.lin(x))

    assert _region_of(M(), torch.randn(2, 12, 16), 1) is None


def test_causal_attention_is_not_row_wise_but_masked_attention_is():
    q = torch.randn(1, 2, 10, 8)

    class Att(nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.causal = causal
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            q = self.lin(x)
            return F.scaled_dot_product_attention(q, x, x, is_causal=self.causal)

    assert _region_of(Att(True), q, 2) is None
    reg = _region_of(Att(False), q, 2)
    assert reg is not None and reg.rows == 10


# -- property: random row-wise chains cut into random token blocks compute the same ------------
_OPS = {
    "linear": lambda d: nn.Linear(d, d),
    "gelu": lambda d: nn.GELU(),
    "tanh_gelu": lambda d: nn.GELU(approximate="tanh"),
    "layernorm": lambda d: nn.LayerNorm(d),
    "softmax_features": lambda d: nn.Softmax(dim=-1),
    "heads": lambda d: _Heads(),
    "residual": lambda d: _Residual(d),
    "bias_scale": lambda d: _BiasScale(d),
}


class _Heads(nn.Module):
    """Split features into heads, transpose, scale, and back: views and permutes."""

    def forward(self, x):
        b, t, d = x.shape
        h = x.view(b, t, 2, d // 2).transpose(1, 2) * 0.5
        return h.transpose(1, 2).reshape(b, t, d)


class _Residual(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, 2 * d)
        self.out = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.out(torch.relu(self.lin(x)))


class _BiasScale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(1, 1, d))

    def forward(self, x):
        return x * self.scale + self.scale.mean()


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.sampled_from(sorted(_OPS)), min_size=1, max_size=6),
       batch=st.integers(1, 3), tokens=st.integers(2, 19),
       fracs=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=3))
def test_random_row_wise_chains_cut_into_blocks_equal_eager(ops, batch, tokens, fracs):
    d = 8
    torch.manual_seed(len(ops) * 31 + tokens)
    model = nn.Sequential(nn.Linear(d, d), *[_OPS[o](d) for o in ops]).eval()
    graph = graphopt.capture(model, (torch.randn(batch, tokens, d),))
    nodes = _compute(graph)
    anchor = nodes[0] if "linear" in nodes[0].name else \
        next(n for n in nodes if n.target == torch.ops.aten.linear.default)
    reg = label_region(nodes, anchor, 1)
    assert reg is not None, f"a chain of row-wise ops was refused: {ops}"
    cuts = sorted({min(max(round(f * tokens), 1), tokens - 1) for f in fracs})
    split = graph.copy()
    apply_splits(split, [Cut([n.name for n in nodes], cuts, reg)])
    check_invariants(split)
    assert sum(1 for i in split.nodes() if i.target == "aten.cat.default") >= 1
    x = torch.randn(batch, tokens, d)
    with torch.no_grad():
        assert max_rel_err(split.run(x), (model(x),)) < 1e-5


def test_random_ops_end_a_region():
    class Drop(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 16)

        def forward(self, x):
            return F.dropout(self.lin(x), 0.5, training=True)

    assert _region_of(Drop(), torch.randn(2, 12, 16), 1) is None
