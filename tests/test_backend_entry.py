"""The torch.compile entry point: found through the installed entry point, options validated,
forward and gradients equal to eager."""
import pytest
import torch
import torch._dynamo

from graphopt import zoo
from graphopt.backend import BackendOptions


def test_backend_is_registered_through_the_entry_point():
    import importlib.metadata as md
    names = {ep.name for ep in md.entry_points(group="torch_dynamo_backends")}
    assert "graphopt" in names
    fn = torch._dynamo.lookup_backend("graphopt")
    assert fn.__name__ == "graphopt_backend"


@pytest.mark.parametrize("options", [{"bogus": 1}, {"memory_budget": 1.5},
                                     {"memory_budget": -3}, {"fuse": "yes"}])
def test_bad_options_are_one_clear_error(options):
    with pytest.raises(Exception) as info:
        BackendOptions.parse(options)
    assert "\n" not in str(info.value)
    if "bogus" in options:
        assert "known options: memory_budget, fuse, triton_interpret, dump_dir" in str(info.value)


@pytest.mark.parametrize("name", ["mlp", "gpt", "cnn"])
def test_forward_and_gradients_match_eager(name, tmp_path):
    torch._dynamo.reset()
    model, inputs = zoo.build(name)
    model.train()
    compiled = torch.compile(model, backend="graphopt", options={"dump_dir": str(tmp_path)})
    fresh = tuple(torch.randint_like(x, 0, 1000) if not x.is_floating_point() else torch.randn_like(x)
                  for x in inputs)
    out = compiled(*fresh)
    out.square().mean().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(*fresh)
    ref.square().mean().backward()
    assert not torch.isnan(out).any()
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5
    for n, p in model.named_parameters():
        err = ((got[n] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12)).item()
        assert err < 1e-5, n
    dumped = {p.name for p in tmp_path.iterdir()}
    assert any(d.endswith("_forward") for d in dumped) and any(d.endswith("_backward")
                                                               for d in dumped)
    torch._dynamo.reset()


class _NormGeluSoftmax(torch.nn.Module):
    """The ops ``decompose_ops`` would split for fusion: LayerNorm, GELU and softmax."""

    def __init__(self):
        super().__init__()
        self.up, self.norm, self.down = (torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                                         torch.nn.Linear(32, 8))

    def forward(self, x):
        return torch.softmax(self.down(torch.nn.functional.gelu(self.norm(self.up(x)))), -1)


def _steps_and_targets(directory):
    """The passes a graph went through (from its dumps) and the ATen targets of its last graph."""
    import json
    dumps = sorted(directory.glob("[0-9][0-9]_*.json"))
    last = json.loads(dumps[-1].read_text())
    return ([p.stem.split("_", 1)[1] for p in dumps],
            [n["target"] for n in last["nodes"] if n["op"] == "call_function"])


def test_cpu_without_fusion_runs_aten_ops_undecomposed(tmp_path):
    """On CPU tensors without ``fuse`` the fusion-only steps (decompose_ops, fuse_ops,
    outline_groups) are skipped: LayerNorm, GELU and softmax stay single ATen ops,
    which on the CPU run faster than their pointwise decompositions; values equal eager's."""
    torch._dynamo.reset()
    model = _NormGeluSoftmax()
    compiled = torch.compile(model, backend="graphopt", options={"dump_dir": str(tmp_path)})
    x = torch.randn(6, 16)
    weight = torch.randn(6, 8)
    out = compiled(x)
    (out * weight).sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(x)
    (ref * weight).sum().backward()
    assert not torch.isnan(out).any()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-6
    for n, p in model.named_parameters():
        assert ((got[n] - p.grad).norm() / p.grad.norm()).item() < 1e-6, n
    (forward,) = tmp_path.glob("*_forward")
    (backward,) = tmp_path.glob("*_backward")
    steps, targets = _steps_and_targets(forward)
    assert steps == ["input", "annotate_costs"]
    assert {"aten.native_layer_norm.default", "aten.gelu.default",
            "aten._softmax.default"} <= set(targets)
    steps, targets = _steps_and_targets(backward)
    assert steps == ["input", "eliminate_dead_code", "annotate_costs"]
    assert {"aten.native_layer_norm_backward.default", "aten.gelu_backward.default",
            "aten._softmax_backward_data.default"} <= set(targets)

    torch._dynamo.reset()   # with fuse=True the same graph is decomposed for the fusion planner
    fused_dir = tmp_path / "fused"
    torch.compile(_NormGeluSoftmax(), backend="graphopt",
                  options={"fuse": True, "dump_dir": str(fused_dir)})(x)
    (forward,) = fused_dir.glob("*_forward")
    steps, targets = _steps_and_targets(forward)
    assert steps[:2] == ["input", "decompose_ops"] and "annotate_costs" in steps
    assert "aten.native_layer_norm.default" not in targets
    torch._dynamo.reset()


def test_cpu_inference_graph_is_the_one_aot_eager_runs(monkeypatch):
    """Without fusion graphopt hands back the ATen graph aot_autograd gave it, op for op, so a
    step costs what it costs under aot_eager; outputs on fresh inputs equal eager's."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop

    from graphopt.graph import target_str

    def ops(gm):
        return [target_str(n) for n in gm.graph.nodes if n.op == "call_function"]

    seen = {}

    def recording(key):
        def compiler(gm, example_inputs):
            seen[key] = ops(gm)
            return boxed_nop(gm, example_inputs)
        return compiler

    import graphopt.backend as backend
    real_boxed = backend._boxed

    def spy(gm):   # the fx module graphopt hands back, as it will run
        seen["graphopt"] = ops(gm)
        return real_boxed(gm)

    model, inputs = zoo.build("gpt")
    model.eval()
    fresh = tuple(torch.randint_like(x, 0, 1000) for x in inputs)
    with torch.no_grad():
        torch._dynamo.reset()
        torch.compile(model, backend=aot_autograd(fw_compiler=recording("aot"),
                                                  inference_compiler=recording("aot")))(*inputs)
        torch._dynamo.reset()
        monkeypatch.setattr(backend, "_boxed", spy)
        out = torch.compile(model, backend="graphopt")(*fresh)
        ref = model(*fresh)
    assert seen["graphopt"] == seen["aot"] and len(seen["aot"]) > 50
    assert not torch.isnan(out).any()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-6
    torch._dynamo.reset()
