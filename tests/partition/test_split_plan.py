"""Where cuts are offered: never where a boundary between blocks would send an operand that
dwarfs the node's output (a mixture of experts' per-token gathered expert weights); through a
whole decoder layer under a causal mask, where that sends less than any node boundary."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import graphopt
from graphopt.partition.split_plan import cuts_from_dicts, plan_splits
from graphopt.passes import PassContext
from graphopt.passes.partition_graph import partition_graph


class _GatheredExperts(nn.Module):
    """Each token's expert weight gathered by its routing id, then one batched matmul: the
    gathered operand is 256x the matmul's output."""

    def __init__(self):
        super().__init__()
        self.experts = nn.Parameter(torch.randn(4, 512, 64) / 8)
        self.pre = nn.Linear(64, 64)
        self.post = nn.Linear(512, 8)

    def forward(self, x, ids):
        h = self.pre(x)
        w = self.experts[ids]                          # [tokens, 512, 64]
        y = torch.bmm(w, h.unsqueeze(-1)).squeeze(-1)  # [tokens, 512]
        return self.post(y)


def test_a_matmul_over_gathered_weights_is_not_cut():
    model = _GatheredExperts().eval()
    x, ids = torch.randn(32, 64), torch.randint(0, 4, (32,))
    graph = graphopt.capture(model, (x, ids))
    bmm = next(i.name for i in graph.nodes() if i.target == "aten.bmm.default")
    assert graph.info[bmm].flops > graph.total_flops / 2      # it is the node to cut, if any
    for strategy in ("nodes", "rows"):
        cuts = plan_splits(graph, 2, 0.03, strategy=strategy, giants=strategy == "nodes")
        assert all(bmm not in c.nodes for c in cuts), strategy


def _bench_models():
    path = Path(__file__).resolve().parents[2] / "bench" / "partition_models.py"
    spec = importlib.util.spec_from_file_location("partition_models", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("partition_models", mod)
    spec.loader.exec_module(mod)
    return mod


def test_a_decoder_boundary_mid_layer_sends_about_one_hidden_state():
    """Llama at k = 2: the balanced boundary lies inside an attention sublayer, where every node
    boundary sends the residual and the attention output (2 hidden states). Cut into token
    blocks through the causal attention, it sends the residual rows plus the earlier rows' keys
    and values, taken before grouped-query attention repeats them (1 + 2 x 2/8 x rows/tokens)."""
    pytest.importorskip("transformers")
    model, inputs, _ = _bench_models().build("llama", tiny=True)
    hidden = 32 * 256 * 4
    graph = graphopt.capture(model, inputs)
    sent = {}
    for split in ("off", "auto"):
        ctx = PassContext(options={"k": 2, "split": split, "model": "llama"})
        partition_graph(graph.copy(), ctx)
        plan = ctx.artifacts["partition"]
        sent[split] = plan.metrics().comm_bytes / hidden
    assert sent["off"] == 2.0
    assert sent["auto"] < 1.5
    # the cut is recorded so a fresh capture replays it
    cuts = cuts_from_dicts(graph, plan.splits)
    assert any(c.region is not None and c.region.prefix for c in cuts)
