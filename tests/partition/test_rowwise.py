"""Row-wise regions: which ops compute each row on its own, and cutting a region into token blocks.

The rules are exact or refuse: every region the labelling accepts is cut into blocks here and run
against the uncut graph on fresh random inputs (hypothesis draws the op chains), and the ops that
mix rows (softmax or a sum over the rows, a reshape that merges the rows with another dimension)
must end a region. Causal attention (``is_causal=True`` or a constant causal mask) is cut too:
each block reads the keys and values of the rows up to its last.
"""
import pytest
import torch
import torch.nn.functional as F
from checks import max_rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.partition.cut_plan import Cut
from graphopt.partition.cut_rewrite import apply_cuts
from graphopt.partition.rowwise import causal_mask, label_region, prefix_args, row_args
from graphopt.passes import check_invariants


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


def test_attention_is_row_wise_with_or_without_is_causal():
    q = torch.randn(1, 2, 10, 8)

    class Att(nn.Module):
        def __init__(self, causal):
            super().__init__()
            self.causal = causal
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            q = self.lin(x)
            return F.scaled_dot_product_attention(q, x, x, is_causal=self.causal)

    causal = _region_of(Att(True), q, 2)      # keys and values read from row 0 (a prefix)
    assert causal is not None and causal.rows == 10 and causal.prefix
    reg = _region_of(Att(False), q, 2)         # keys and values whole
    assert reg is not None and reg.rows == 10 and not reg.prefix


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
    apply_cuts(split, [Cut([n.name for n in nodes], cuts, reg)])
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


# -- causal attention: blocks of query rows read the earlier blocks' keys and values ------------
class _CausalLayer(nn.Module):
    """A pre-norm decoder layer with grouped-query attention under a constant causal mask (as
    transformers builds it: from ``arange``), RoPE's ``rotate_half`` (a ``cat`` of halves), a
    fused q/k/v projection ``split`` into pieces, and an MLP."""

    def __init__(self, d=16, heads=4, kv_heads=2, window=None):
        super().__init__()
        self.h, self.kv, self.hd, self.window = heads, kv_heads, d // heads, window
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd)
        self.out = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(),
                                 nn.Linear(2 * d, d))

    def forward(self, x):
        b, t, d = x.shape
        pos = torch.arange(t)
        mask = pos[None, :] <= pos[:, None]
        if self.window == "flag":
            mask = None                     # is_causal=True instead of a mask
        elif self.window is not None:
            mask = mask & (pos[:, None] - pos[None, :] < self.window)
        q, k, v = self.qkv(self.norm(x)).split([self.h * self.hd, self.kv * self.hd,
                                                self.kv * self.hd], dim=-1)
        q = q.view(b, t, self.h, self.hd).transpose(1, 2)
        k = k.view(b, t, self.kv, self.hd).transpose(1, 2)
        v = v.view(b, t, self.kv, self.hd).transpose(1, 2)
        half = self.hd // 2
        k = torch.cat([-k[..., half:], k[..., :half]], dim=-1) * 0.5 + k
        rep = self.h // self.kv
        k = k[:, :, None].expand(b, self.kv, rep, t, self.hd).reshape(b, self.h, t, self.hd)
        v = v[:, :, None].expand(b, self.kv, rep, t, self.hd).reshape(b, self.h, t, self.hd)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None, None]) if mask is not \
            None else F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(x)


def _causal_region(model, x):
    graph = graphopt.capture(model.eval(), (x,))
    nodes = _compute(graph)
    anchor = next(n for n in nodes if n.target == torch.ops.aten.linear.default)
    return graph, nodes, label_region(nodes, anchor, 1)


@settings(max_examples=10, deadline=None)
@given(tokens=st.integers(3, 17), batch=st.integers(1, 2),
       window=st.sampled_from([None, 3, "flag"]),
       fracs=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=3))
def test_causal_layers_cut_into_token_blocks_equal_eager(tokens, batch, window, fracs):
    torch.manual_seed(tokens)
    model = nn.Sequential(_CausalLayer(window=window), _CausalLayer(window=window)).eval()
    graph, nodes, reg = _causal_region(model, torch.randn(batch, tokens, 16))
    assert reg is not None, "a causal decoder layer was refused"
    assert set(reg.dims) == {n.name for n in nodes}          # every op computed per block
    mask_args = {1, 2} if window == "flag" else {1, 2, 3}   # is_causal has no mask argument
    assert len(reg.prefix) == 2 and all(set(p) == mask_args for p in reg.prefix.values())
    cuts = sorted({min(max(round(f * tokens), 1), tokens - 1) for f in fracs})
    split = graph.copy()
    apply_cuts(split, [Cut([n.name for n in nodes], cuts, reg)])
    check_invariants(split)
    x = torch.randn(batch, tokens, 16)
    with torch.no_grad():
        assert max_rel_err(split.run(x), (model(x),)) < 1e-5


def test_a_block_joins_grouped_keys_before_they_are_repeated():
    """The prefix ``cat`` is taken on the 2 key heads, not on the 4 repeated ones: a stage
    boundary between blocks sends the smaller tensor."""
    graph, nodes, reg = _causal_region(_CausalLayer(), torch.randn(1, 8, 16))
    split = graph.copy()
    apply_cuts(split, [Cut([n.name for n in nodes], [3], reg)])
    tokens_cats = [n for n in split.fx_nodes() if n.target == torch.ops.aten.cat.default and
                   n.meta["val"].dim() >= 4 and n.args[1] % n.meta["val"].dim() !=
                   n.meta["val"].dim() - 1]      # not rotate_half's cat of feature halves
    assert len(tokens_cats) == 2             # keys and values, joined once each
    for n in tokens_cats:                    # 8 tokens x 2 kv heads x 4, not x 4 heads
        assert n.meta["val"].numel() == 8 * 2 * 4


def test_a_mask_that_lets_a_query_see_later_keys_is_not_causal():
    class Full(_CausalLayer):
        def forward(self, x):
            b, t, d = x.shape
            q = self.qkv(self.norm(x))[..., :d].view(b, t, self.h, self.hd).transpose(1, 2)
            mask = torch.ones(t, t, dtype=torch.bool)           # every key: not causal
            a = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            return x + self.out(a.transpose(1, 2).reshape(b, t, d))

    _, _, reg = _causal_region(Full(), torch.randn(1, 8, 16))
    assert reg is None       # keys needed whole, but they come from the rows: no region
    sdpa = next(n for n in graphopt.capture(Full().eval(), (torch.randn(1, 8, 16),)).fx_nodes()
                if n.target == torch.ops.aten.scaled_dot_product_attention.default)
    assert not causal_mask(sdpa.args[3]) and prefix_args(sdpa, 2) == {}


def test_is_causal_blocks_get_explicit_constant_masks():
    """``is_causal=True`` (nanoGPT's attention) is anchored at query 0: each block of query rows
    gets an explicit mask built from ``arange``, a constant every stage makes (never sent)."""
    torch.manual_seed(0)
    model = nn.Sequential(_CausalLayer(window="flag"), _CausalLayer(window="flag")).eval()
    graph, nodes, reg = _causal_region(model, torch.randn(2, 11, 16))
    assert reg is not None and len(reg.prefix) == 2
    split = graph.copy()
    apply_cuts(split, [Cut([n.name for n in nodes], [3, 7], reg)])
    check_invariants(split)
    sdpa = [n for n in split.fx_nodes()
            if n.target == torch.ops.aten.scaled_dot_product_attention.default]
    assert len(sdpa) == 6
    for n in sdpa:
        assert not n.kwargs.get("is_causal") and not (len(n.args) > 5 and n.args[5])
        assert split.info[n.args[3].name].is_param          # a constant: recomputed, not sent
    x = torch.randn(2, 11, 16)
    with torch.no_grad():
        assert max_rel_err(split.run(x), (model(x),)) < 1e-5
