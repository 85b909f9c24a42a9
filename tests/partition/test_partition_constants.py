"""Values computed from constants alone (a mask built from ``arange``, a transposed weight) are
constants: every stage recomputes them, none is sent, and the stages still equal the model."""
import torch
from torch import nn

import graphopt
from graphopt.pass_lists import PARTITION, run_pipeline
from graphopt.passes import PassContext


class _Masked(nn.Module):
    """Two blocks that each use a causal mask made from ``arange`` and the weight transposed."""

    def __init__(self, d=16, t=12):
        super().__init__()
        self.t = t
        self.w1 = nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.w2 = nn.Parameter(torch.randn(d, d) / d ** 0.5)

    def forward(self, x):
        i = torch.arange(self.t, device=x.device)
        mask = (i[:, None] >= i[None, :]).float()               # a constant [t, t]
        h = torch.relu(mask @ (x @ self.w1.t()))
        return torch.tanh(mask @ (h @ self.w2.t()))


def test_derived_constants_are_held_not_sent():
    model = _Masked().eval()
    graph = graphopt.capture(model, (torch.randn(12, 16),))
    consts = [i for i in graph.nodes() if i.op == "call_function" and i.is_param]
    assert any(i.target.startswith("aten.arange") for i in consts)
    assert any(i.shape == [12, 12] for i in consts)            # the mask itself
    assert all(i.flops == 0 for i in consts)
    ctx = PassContext(options={"k": 2, "split": "off"})
    graph = run_pipeline(graph, PARTITION, ctx)
    plan = ctx.artifacts["partition"]
    data = plan.to_dict()
    held = {n["name"] for n in data["nodes"] if n["is_param"]}
    assert {i.name for i in consts} <= held             # partition.json: never sent
    out = {n["name"]: n["out_bytes"] for n in data["nodes"]}
    dests = {}
    for e in data["edges"]:
        if e["src"] not in held and plan.parts[e["src"]] != plan.parts[e["dst"]]:
            dests.setdefault(e["src"], set()).add(plan.parts[e["dst"]])
    assert data["summary"]["comm_bytes"] == sum(out[u] * len(d) for u, d in dests.items())
    stages = plan.split(graph)
    assert len(stages) == 2
    for _ in range(2):
        x = torch.randn(12, 16)
        with torch.no_grad():
            torch.testing.assert_close(stages.run(x)[0], model(x))
