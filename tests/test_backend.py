"""The graphopt torch.compile backend with fusion: GPT-2, BERT, ViT and ResNet (small
transformers configs) compiled with ``triton_interpret`` match eager PyTorch forward and
backward (relative error < 1e-4 in float32), with their fused groups running as generated
Triton kernels in both the forward and the backward graph."""
import copy
import json
import logging

import pytest
import torch
import torch._dynamo

from graphopt.kernels import runtime

pytestmark = pytest.mark.hf


def _models():
    transformers = pytest.importorskip("transformers")
    t = transformers
    gen = torch.Generator().manual_seed(1)
    yield "gpt2", t.GPT2LMHeadModel(t.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64, use_cache=False,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval(), \
        lambda: (torch.randint(0, 256, (2, 13), generator=gen),)
    yield "bert", t.BertModel(t.BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        vocab_size=256, max_position_embeddings=64)).eval(), \
        lambda: (torch.randint(0, 256, (2, 11), generator=gen),)
    yield "vit", t.ViTModel(t.ViTConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=8)).eval(), \
        lambda: (torch.randn(2, 3, 32, 32, generator=gen),)
    yield "resnet", t.ResNetModel(t.ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])).train(), \
        lambda: (torch.randn(2, 3, 32, 32, generator=gen),)


MODELS = ["gpt2", "bert", "vit", "resnet"]


def _build(name):
    for n, model, make in _models():
        if n == name:
            return model, make
    raise KeyError(name)


def _first(out):
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _rel(a, b):
    a, b = a.double(), b.double()
    assert not torch.isnan(a).any()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture
def count_launches(monkeypatch):
    calls = []
    real = runtime.CompiledKernel.__call__

    def spy(self, *inputs):
        calls.append(self.module.__name__)
        return real(self, *inputs)

    monkeypatch.setattr(runtime.CompiledKernel, "__call__", spy)
    return calls


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_backward_match_eager_through_the_interpreter(name, tmp_path,
                                                                  count_launches):
    torch._dynamo.reset()
    model, make_inputs = _build(name)
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="graphopt",
                             options={"triton_interpret": True, "dump_dir": str(tmp_path)})
    warm = make_inputs()
    compiled(*warm)           # compile on one input (the reference sees it too: BN stats) ...
    reference(*warm)
    count_launches.clear()
    inputs = make_inputs()    # ... and check on fresh ones
    out = _first(compiled(*inputs))
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weight).sum().backward()
    ref = _first(reference(*inputs))
    (ref * weight).sum().backward()

    assert _rel(out, ref) < 1e-4
    pairs = list(zip(model.parameters(), reference.parameters()))
    # An output the loss ignores (BERT's pooler) gets zero gradients under aot_autograd where
    # eager leaves None.
    assert all(p.grad is None or not p.grad.any() for p, q in pairs if q.grad is None)
    got = torch.cat([p.grad.flatten() for p, q in pairs if q.grad is not None])
    want = torch.cat([q.grad.flatten() for p, q in pairs if q.grad is not None])
    assert _rel(got, want) < 1e-4
    scale = max(p.grad.norm() for p in reference.parameters() if p.grad is not None)
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        if q.grad is not None and q.grad.norm() > 1e-4 * scale:  # skip ~0 (noise) gradients
            assert _rel(p.grad, q.grad) < 1e-4, n
    if name == "resnet":  # batch-norm statistics are updated as in eager
        for (n, b), rb in zip(model.named_buffers(), reference.named_buffers()):
            if b.is_floating_point():
                assert torch.allclose(b, rb[1], rtol=1e-4, atol=1e-5), n

    plans = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("*/fusion.json")}
    assert any(k.endswith("_forward") for k in plans) and any(k.endswith("_backward")
                                                              for k in plans)
    for role, plan in plans.items():
        assert plan["schema"] == "graphopt.fusion/1" and plan["summary"]["kernels"] >= 1
        for kernel in plan["kernels"]:
            assert (tmp_path / role / kernel["source"]).is_file()
    assert len(count_launches) >= sum(p["summary"]["kernels"] for p in plans.values())
    torch._dynamo.reset()


def _small_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32),
                               torch.nn.GELU(), torch.nn.Linear(32, 4))


def test_cpu_default_does_not_fuse(tmp_path):
    torch._dynamo.reset()
    model = _small_mlp()
    out = torch.compile(model, backend="graphopt", options={"dump_dir": str(tmp_path)})(
        torch.randn(3, 16))
    assert out.shape == (3, 4)
    assert not list(tmp_path.glob("*/fusion.json"))
    torch._dynamo.reset()


def test_fuse_on_cpu_without_the_interpreter_falls_back_to_aten(tmp_path, caplog,
                                                                monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(runtime, "_said_fallback", False)
    model = _small_mlp()
    x = torch.randn(5, 16)
    with caplog.at_level(logging.DEBUG, logger="graphopt.kernels"):
        out = torch.compile(model, backend="graphopt",
                            options={"fuse": True, "dump_dir": str(tmp_path)})(x)
    assert torch.allclose(out, model(x), atol=1e-6)
    assert list(tmp_path.glob("*/fusion.json")) and list(tmp_path.glob("*/kernels/*.py"))
    assert sum("ATen subgraphs" in r.getMessage() for r in caplog.records) == 1
    torch._dynamo.reset()


def test_fuse_false_wins_over_the_interpreter(tmp_path, count_launches):
    torch._dynamo.reset()
    model = _small_mlp()
    x = torch.randn(5, 16)
    out = torch.compile(model, backend="graphopt",
                        options={"fuse": False, "triton_interpret": True})(x)
    assert torch.allclose(out, model(x), atol=1e-6) and count_launches == []
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["gpt2", "resnet"])
def test_gpu_forward_and_backward_match_eager(name, count_launches):
    torch._dynamo.reset()
    model, make_inputs = _build(name)
    model = model.cuda()
    reference = copy.deepcopy(model)
    inputs = tuple(x.cuda() for x in make_inputs())
    out = _first(torch.compile(model, backend="graphopt")(*inputs))
    weight = torch.randn_like(out)
    (out * weight).sum().backward()
    ref = _first(reference(*inputs))
    (ref * weight).sum().backward()
    assert _rel(out, ref) < 1e-4 and count_launches
    pairs = [(p, q) for p, q in zip(model.parameters(), reference.parameters())
             if q.grad is not None]
    got = torch.cat([p.grad.flatten() for p, _ in pairs])
    want = torch.cat([q.grad.flatten() for _, q in pairs])
    assert _rel(got, want) < 1e-4
    torch._dynamo.reset()
