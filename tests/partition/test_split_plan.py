"""Where cuts are offered: never where a boundary between blocks would send an operand that
dwarfs the node's output (a mixture of experts' per-token gathered expert weights)."""
import torch
from torch import nn

import graphopt
from graphopt.partition.split_plan import plan_splits


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
