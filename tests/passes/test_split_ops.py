"""The ``split_ops`` pass: heavy matmuls, attention and convolutions cut into blocks, and row-wise
regions into token blocks, computing the same function, where a stage boundary needs them."""
import pytest
import torch
import torch.nn.functional as F
from checks import max_rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import graphopt
from graphopt.distributed.stage_runtime import run_pipeline as run_stages
from graphopt.errors import PlanError
from graphopt.partition.cut_plan import node_cut_kind, plan_cuts, prune_cuts
from graphopt.partition.cut_rewrite import _cut_node, apply_cuts
from graphopt.pass_lists import PARTITION, run_pipeline
from graphopt.passes import OptionError, PassContext, check_invariants, get_pass
from graphopt.specs import load_spec


def _split_all(graph, frac=(0.3,)):
    """Cut every node the pass can split at the given fractions of its rows/channels."""
    done = 0
    for node in list(graph.fx_nodes()):
        how = node_cut_kind(node)
        if how is None or how[0] < 2:
            continue
        cuts = sorted({min(max(round(f * how[0]), 1), how[0] - 1) for f in frac})
        _cut_node(graph, node, cuts)
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
            assert max_rel_err(graph.run(*inputs), model(*inputs)) < 1e-5


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
        assert max_rel_err(graph.run(x), (model(x),)) < 1e-5


def _heavy_middle():
    """A chain whose middle Linear holds most of the FLOPs: k=2 needs a boundary inside it."""
    return nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2048), nn.ReLU(),
                         nn.Linear(2048, 8)).eval()


def test_cuts_only_where_a_boundary_needs_them():
    graph = graphopt.capture(_heavy_middle(), (torch.randn(64, 32),))
    heavy = max(graph.compute_nodes(), key=lambda i: i.flops)
    assert plan_cuts(graph, 1, 0.03, strategy="nodes") == []
    # the heavy node holds 78% of the FLOPs: kept whole unless asked to cut giants
    assert plan_cuts(graph, 2, 0.03, strategy="nodes") == []
    cuts = plan_cuts(graph, 2, 0.03, strategy="nodes", giants=True)
    assert [c.nodes for c in cuts] == [[heavy.name]]
    rows = graph.info[heavy.name].shape[0]
    # at the ideal boundary and at fractions of the tolerance either side of it
    assert 1 < len(cuts[0].cuts) <= 5 and all(0 < c < rows for c in cuts[0].cuts)
    # equal layers: every ideal boundary already falls between nodes, nothing to cut
    chain = nn.Sequential(*[nn.Linear(32, 32) for _ in range(4)]).eval()
    assert plan_cuts(graphopt.capture(chain, (torch.randn(64, 32),)), 4, 0.0,
                       strategy="nodes") == []
    off = get_pass("split_ops")(graph, PassContext(options={"k": 2, "split": "off"}))
    assert not off.modified
    with pytest.raises(PlanError, match="unknown split strategy"):
        plan_cuts(graph, 2, 0.03, strategy="columns")


def test_apply_then_prune_keeps_only_used_cuts():
    graph = graphopt.capture(_heavy_middle(), (torch.randn(64, 32),))
    heavy = max(graph.compute_nodes(), key=lambda i: i.flops).name
    cuts = plan_cuts(graph, 2, 0.03, strategy="nodes", giants=True)
    g = graph.copy()
    done = apply_cuts(g, cuts)
    assert heavy not in g.info and all(g[n].extra["split_of"] == heavy for n in done[heavy])
    assert len(cuts[0].blocks) == len(cuts[0].cuts) + 1
    # a plan that changes part between blocks 1 and 2 only: the other cuts go
    part = {n: (0 if j <= 1 else 1) for j, block in enumerate(cuts[0].blocks) for n in block}
    kept = prune_cuts(cuts, part)
    assert [c.cuts for c in kept] == [[cuts[0].cuts[1]]]
    assert prune_cuts(cuts, {n: 0 for b in cuts[0].blocks for n in b}) == []
    x = torch.randn(64, 32)
    with torch.no_grad():
        assert max_rel_err(g.run(x), graph.run(x)) < 1e-6
    again = get_pass("split_ops")(g, PassContext(options={"k": 2, "split": "nodes"}))
    assert not again.modified          # a split graph is left alone


def test_needs_k():
    graph = graphopt.capture(_heavy_middle(), (torch.randn(4, 32),))
    with pytest.raises(PlanError, match="options\\['k'\\]"):
        get_pass("split_ops")(graph, PassContext(options={"split": "rows"}))


def test_partition_pipeline_balances_and_runs_on_two_processes():
    model = _heavy_middle()
    x = torch.randn(64, 32)
    graph = graphopt.capture(model, (x,))
    # FLOPs balance: unsplit, one node holds 78% of the FLOPs
    with pytest.raises(PlanError, match="cannot balance"):
        run_pipeline(graph.copy(), PARTITION, PassContext(options={"k": 2, "split": "off",
                                                                   "balance": "flops"}))
    ctx = PassContext(options={"k": 2, "split": "auto", "balance": "flops"})
    graph = run_pipeline(graph, PARTITION, ctx)
    plan = ctx.artifacts["partition"]
    # within the tolerance, or a plan sending fewer bytes with a faster slowest stage (noted)
    assert plan.summary()["imbalance"] <= 0.03 or \
        any("slowest stage is faster" in n for n in plan.notes)
    assert any("cut so stage boundaries" in note for note in plan.notes)
    assert any("admits no plan" in note for note in plan.notes)
    stages = plan.split(graph)
    mbs = [(torch.randn(64, 32),) for _ in range(2)]
    run = run_stages(stages, mbs)
    with torch.no_grad():
        for mb, out in zip(mbs, run.outputs):
            assert max_rel_err(out, (model(*mb),)) < 1e-5
            assert torch.equal(out[0], graph.run(*mb)[0])


@pytest.mark.parametrize("spec,overrides", [
    ("hf:GPT2LMHeadModel", {"n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 500}),
    ("hf:BertModel", {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                      "intermediate_size": 256, "vocab_size": 500}),
    ("hf:ViTModel", {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                     "intermediate_size": 256, "image_size": 32, "patch_size": 8}),
])
def test_row_regions_of_transformers_equal_eager(spec, overrides):
    """FFN blocks cut into token blocks: same outputs on fresh inputs, and as pipeline stages."""
    pytest.importorskip("transformers")
    loaded = load_spec(spec, overrides=overrides, seq=32)
    graph = graphopt.capture(loaded.model, loaded.inputs)
    # no tolerance: every boundary inside a node is cut, in a row region where one exists
    cuts = plan_cuts(graph, 3, 0.0, strategy="rows")
    regions = [c for c in cuts if c.region is not None]
    assert regions, "expected the FFN blocks to be row-wise regions"
    assert all(len(c.nodes) >= 3 for c in regions)
    split = graph.copy()
    apply_cuts(split, cuts)
    check_invariants(split)
    assert any(i.target == "aten.cat.default" and "rows of" in i.extra.get("split_of", "")
               for i in split.nodes())
    for seed in (1, 2):
        torch.manual_seed(seed)
        x = loaded.inputs[0]
        fresh = torch.randint(0, 500, x.shape) if not x.is_floating_point() else torch.randn_like(x)
        with torch.no_grad():
            want = graph.run(fresh)
            got = split.run(fresh)
        assert max_rel_err(got, want) < 1e-5
    ctx = PassContext(options={"k": 3})
    split = run_pipeline(split, PARTITION, ctx)
    with torch.no_grad():
        assert max_rel_err(ctx.artifacts["partition"].split(split).run(fresh), want) < 1e-5


def test_plan_made_on_a_cut_graph_applies_to_a_fresh_capture(tmp_path):
    """partition.json records its cuts; the model captured again is cut the same way."""
    from graphopt.partition.cut_rewrite import cut_like
    from graphopt.partition.plan import Partition
    pytest.importorskip("transformers")
    overrides = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                 "intermediate_size": 256, "vocab_size": 500}
    loaded = load_spec("hf:BertModel", overrides=overrides, seq=32)
    graph = graphopt.capture(loaded.model, loaded.inputs)
    cuts = plan_cuts(graph, 3, 0.0, strategy="rows")
    assert any(c.region is not None for c in cuts)
    split = graph.copy()
    apply_cuts(split, cuts)
    ctx = PassContext(options={"k": 3})
    split = run_pipeline(split, PARTITION, ctx)
    plan = ctx.artifacts["partition"]
    plan.splits = [c.to_dict() for c in cuts]
    path = tmp_path / "partition.json"
    path.write_text(plan.to_json())
    back = Partition.from_json(path)
    fresh = graphopt.capture(loaded.model, loaded.inputs)
    with pytest.raises(PlanError, match="does not match"):
        back.apply(fresh)                       # the uncut graph lacks the blocks
    again = cut_like(fresh, back.splits, back.source)
    back.apply(again)
    ids = torch.randint(0, 500, loaded.inputs[0].shape)
    with torch.no_grad():
        assert max_rel_err(back.split(again).run(ids), graph.run(ids)) < 1e-5
    # a record that no longer fits says which and why, in one line
    bad = [dict(back.splits[0], nodes=["no_such_node"])]
    with pytest.raises(PlanError, match=r"splits\[0\] names 'no_such_node'"):
        cut_like(fresh, bad, "partition.json")
    with pytest.raises(PlanError, match="increasing integers"):
        cut_like(fresh, [dict(back.splits[0], cuts=[0])], "partition.json")


def test_objective_trades_bytes_for_time():
    """``volume`` never sends more than ``time``; ``time`` is never slower than ``volume`` by
    more than ``time_slack`` (plans that close count as equally fast)."""
    loaded = load_spec("zoo:gpt")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    plans = {}
    for objective in ("volume", "time"):
        ctx = PassContext(options={"k": 4, "split": "auto", "objective": objective})
        run_pipeline(graph.copy(), PARTITION, ctx)
        plans[objective] = ctx.artifacts["partition"].metrics()
    assert plans["volume"].comm_bytes <= plans["time"].comm_bytes
    assert plans["time"].bottleneck_seconds <= plans["volume"].bottleneck_seconds * 1.05
    with pytest.raises(OptionError, match="option 'objective' must be 'volume' | 'time'"):
        run_pipeline(graph.copy(), PARTITION, PassContext(options={"k": 2, "objective": "x"}))
