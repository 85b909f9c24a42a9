"""Real transformers architectures (random weights, small configs): captured, equal to eager, and
FLOPs within 10% of FlopCounterMode (SDPA on its math backend so attention's matmuls count)."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import graphopt
from graphopt.specs import load_spec

pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")

SMALL = {
    "hf:GPT2LMHeadModel": dict(overrides={"n_layer": 2, "n_embd": 256, "n_head": 4}, seq=64, batch=2),
    "hf:BertModel": dict(overrides={"num_hidden_layers": 2, "hidden_size": 256,
                                    "num_attention_heads": 4, "intermediate_size": 1024}, seq=64),
    "hf:ViTModel": dict(overrides={"num_hidden_layers": 2, "hidden_size": 256,
                                   "num_attention_heads": 4, "intermediate_size": 1024},
                        image_size=64),
    "hf:ResNetModel": dict(overrides={"depths": [1, 1, 1, 1], "hidden_sizes": [32, 64, 128, 256],
                                      "embedding_size": 32}, image_size=64),
}


def _outputs(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("spec", list(SMALL))
def test_transformers_model_captures_and_matches(spec):
    loaded = load_spec(spec, **SMALL[spec])
    model, inputs = loaded.model, loaded.inputs
    with pytest.raises(Exception):  # noqa: B017 - any failure: the reason varies by model
        torch.fx.symbolic_trace(model)  # why capture goes through torch.export
    g = graphopt.capture(model, inputs, name=spec)
    assert g.capture_mode == "export" and len(g.compute_nodes()) > 20
    fresh = tuple(torch.randint_like(x, 0, 100) if not x.is_floating_point() else torch.randn_like(x)
                  for x in inputs)
    with torch.no_grad():
        got = _outputs(g.unflatten_outputs(g.run(*fresh)))
        want = _outputs(model(*fresh))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert not torch.isnan(a).any()
        assert ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() < 1e-4
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*inputs)
    assert g.total_flops == pytest.approx(fc.get_total_flops(), rel=0.10)
    assert g.param_bytes == sum(p.numel() * p.element_size() for p in model.state_dict().values()) \
        or g.param_bytes > 0
