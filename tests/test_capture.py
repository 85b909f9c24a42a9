"""Capture: every mode runs like eager, shapes come from fake tensors, breaks are explained."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import graphopt
from graphopt import zoo
from graphopt.cost import OpClass


def rel_err(a, b):
    assert not torch.isnan(a).any(), "NaN in result"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_zoo_capture_runs_like_eager(name):
    model, inputs = zoo.build(name)
    g = graphopt.capture(model, inputs)
    assert g.capture_mode == "export"
    fresh = tuple(torch.randint_like(x, 0, 1000) if not x.is_floating_point() else torch.randn_like(x)
                  for x in inputs)
    with torch.no_grad():
        (out,) = g.run(*fresh)
        assert rel_err(out, model(*fresh)) < 1e-5
    # every compute node has shape and dtype; params are get_attr nodes
    for info in g.nodes():
        assert info.dtype is not None and info.shape is not None, info.name
        if info.op == "get_attr":
            assert info.is_param and info.op_class == OpClass.PARAM
    with FlopCounterMode(display=False) as fc:
        model(*inputs)
    assert g.total_flops == pytest.approx(fc.get_total_flops(), rel=0.10)


@pytest.mark.parametrize("mode", ["export", "dynamo", "symbolic_trace"])
def test_each_mode_captures_a_simple_module(mode):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    g = graphopt.capture(model, (torch.randn(4, 8),), mode=mode)
    x = torch.randn(4, 8)
    with torch.no_grad():
        assert rel_err(g.run(x)[0], model(x)) < 1e-6
    assert g.total_flops >= 2 * 4 * 8 * 16 + 2 * 4 * 16 * 3


def test_capture_uses_fake_tensors_on_large_inputs():
    # 4 GiB of activations would not fit the test machine's patience if it ran for real
    model = torch.nn.Linear(1 << 15, 1 << 15, bias=False, device="meta")
    g = graphopt.capture(model, (torch.empty(1 << 15, 1 << 15, device="meta"),))
    assert g.total_flops == 2 * (1 << 45)


def test_structured_outputs_round_trip():
    class Dicty(torch.nn.Module):
        def forward(self, x):
            return {"double": x * 2, "neg": -x}
    g = graphopt.capture(Dicty(), (torch.randn(3),))
    x = torch.randn(3)
    out = g.unflatten_outputs(g.run(x))
    assert torch.equal(out["double"], x * 2) and torch.equal(out["neg"], -x)


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1


def test_graph_break_is_named_with_location_and_alternative():
    with pytest.raises(graphopt.CaptureError) as info:
        graphopt.capture(DataDependent(), (torch.randn(3),))
    msg = str(info.value)
    assert "\n" not in msg
    assert "test_capture.py" in msg and "if x.sum() > 0" in msg
    assert "data-dependent control flow" in msg
    assert "capture_pieces" in msg


def test_capture_pieces_splits_at_the_break():
    pieces = graphopt.capture_pieces(DataDependent(), (torch.randn(3),))
    assert len(pieces.graphs) == 2
    assert len(pieces.breaks) == 1 and "if x.sum() > 0" in str(pieces.breaks[0])
    assert all(len(g) > 0 for g in pieces.graphs)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(graphopt.CaptureError, match="choose one of"):
        graphopt.capture(torch.nn.Identity(), (torch.randn(2),), mode="magic")


def test_symbolic_trace_is_only_a_fallback():
    model, inputs = zoo.build("gpt")
    with pytest.raises(graphopt.CaptureError, match="symbolic_trace failed"):
        graphopt.capture(model, inputs, mode="symbolic_trace")
    assert graphopt.capture(model, inputs).capture_mode == "export"


class _Tied(torch.nn.Module):
    """An embedding and an LM head sharing one weight (GPT-2's tie)."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.mid = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def test_a_tied_weight_is_one_node_counted_once():
    model = _Tied()
    ids = torch.randint(0, 50, (2, 8))
    graph = graphopt.capture(model, (ids,))
    tied = [i for i in graph.nodes() if i.is_param and i.out_bytes == 50 * 16 * 4]
    assert len(tied) == 1
    unique = sum(p.numel() * p.element_size() for p in model.parameters())   # counts once
    assert sum(i.out_bytes for i in graph.nodes() if i.is_param) == unique
    with torch.no_grad():
        assert torch.equal(graph.run(ids)[0], model(ids))
