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
