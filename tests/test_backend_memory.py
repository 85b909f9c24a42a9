"""torch.compile(backend="graphopt", options={"memory_budget": B}): gradients equal eager's
(relative error < 1e-5, fp32) at several budgets on transformers' GPT-2 and ViT and on a deep
residual MLP; dropout masks are saved, not redrawn; the plan is dumped; a budget below the
feasible minimum (a fraction or bytes) gets the tightest plan and one warning, never an error."""
import json
import warnings

import pytest
import torch
import torch._dynamo

from graphopt import zoo


def _gpt2():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=512, n_positions=64,
                                  use_cache=False, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg)
    return model, torch.randint(0, 512, (2, 32)), lambda out: out.logits


def _vit():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, image_size=32, patch_size=8,
                                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.ViTModel(cfg), torch.randn(2, 3, 32, 32), lambda out: out.last_hidden_state


def _resmlp():
    return zoo.ResidualMLP(dim=64, depth=4, hidden=256), torch.randn(32, 64), lambda out: out


MODELS = {"gpt2": (_gpt2, [1.0, 0.75, 0.5]), "vit": (_vit, [1.0, 0.75, 0.5]),
          "resmlp": (_resmlp, [1.0, 0.5, 0.3, 0.1])}


def _grads(model, fn, x, pick):
    model.zero_grad(set_to_none=True)
    out = pick(fn(x))
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_equal_eager_at_every_budget(name, tmp_path):
    factory, budgets = MODELS[name]
    torch.manual_seed(0)
    model, x, pick = factory()
    model.train()
    ref_out, ref = _grads(model, model, x, pick)
    for budget in budgets:
        torch._dynamo.reset()
        dump = tmp_path / f"b{budget}"
        compiled = torch.compile(model, backend="graphopt",
                                 options={"memory_budget": budget, "dump_dir": str(dump)})
        out, got = _grads(model, compiled, x, pick)
        assert set(ref) <= set(got)
        for n in set(got) - set(ref):  # off the loss path (ViT's pooler): a zero gradient
            assert not got[n].any(), n
        assert not torch.isnan(out).any() and _rel(out, ref_out) < 1e-5
        for n in ref:
            assert not torch.isnan(got[n]).any()
            assert _rel(got[n], ref[n]) < 1e-5, (name, budget, n)
        reports = [json.loads(p.read_text()) for p in dump.glob("*_memory.json")]
        assert reports, "the plan is dumped"
        for r in reports:
            assert r["schema"] == "graphopt.memory/1" and r["train"]
            assert r["plan"]["held_peak_bytes"] <= r["budget_bytes"]
            assert r["plan"]["saved_bytes"] <= r["baseline"]["saved_bytes"]
            asked = int(budget * r["baseline"]["held_bytes"])
            if r["solver"]["status"] == "clamped":  # below the minimum: the tightest plan
                assert r["solver"]["requested_budget_bytes"] == asked < r["budget_bytes"]
            else:
                assert r["budget_bytes"] == asked
            if budget < 1.0:
                assert r["plan"]["recomputed"]
    torch._dynamo.reset()


def test_dropout_masks_are_saved_not_redrawn():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64,
                                  use_cache=False)  # dropout 0.1 everywhere
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).train()
    x = torch.randint(0, 256, (2, 16))
    results = []
    for options in ({}, {"memory_budget": 0.6}):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="graphopt", options=options)
        torch.manual_seed(1234)
        results.append(_grads(model, compiled, x, lambda out: out.logits))
    (out_a, ga), (out_b, gb) = results
    assert _rel(out_b, out_a) < 1e-6
    for n in ga:
        assert _rel(gb[n], ga[n]) < 1e-5, n
    torch._dynamo.reset()


def test_int_budget_is_bytes():
    torch.manual_seed(0)
    model, x, pick = _resmlp()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="graphopt", options={"memory_budget": 150_000})
    _, got = _grads(model, compiled, x, pick)
    _, ref = _grads(model, model, x, pick)
    assert all(_rel(got[n], ref[n]) < 1e-5 for n in ref)
    torch._dynamo.reset()


@pytest.mark.parametrize("budget", [1000, 0.01])
def test_budget_below_the_minimum_warns_once_and_trains(budget, tmp_path):
    from graphopt.memory.remat.solve import BudgetBelowMinimumWarning
    torch.manual_seed(0)
    model, x, pick = _resmlp()
    ref_out, ref = _grads(model, model, x, pick)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="graphopt",
                             options={"memory_budget": budget, "dump_dir": str(tmp_path)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # one compile, three steps: one warning
            out, got = _grads(model, compiled, x, pick)
            assert not torch.isnan(out).any() and _rel(out, ref_out) < 1e-5
            for n in ref:
                assert not torch.isnan(got[n]).any() and _rel(got[n], ref[n]) < 1e-5, n
    mine = [w for w in caught if issubclass(w.category, BudgetBelowMinimumWarning)]
    assert len(mine) == 1 and "feasible minimum" in str(mine[0].message)
    report = json.loads(next(tmp_path.glob("*_memory.json")).read_text())
    plan = report["plan"]
    assert report["solver"]["status"] == "clamped"
    assert plan["held_peak_bytes"] <= report["budget_bytes"] < report["baseline"]["saved_bytes"]
    assert report["solver"]["requested_budget_bytes"] < report["budget_bytes"]
    torch._dynamo.reset()


def test_user_checkpointing_inside_the_compiled_region_is_kept():
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            for block in self.inner.blocks:
                x = x + checkpoint(block, x, use_reentrant=False)
            return self.inner.head(x)

    torch.manual_seed(0)
    model, x, pick = _resmlp()
    torch._dynamo.reset()
    compiled = torch.compile(Checkpointed(model), backend="graphopt",
                             options={"memory_budget": 0.5})
    _, got = _grads(model, compiled, x, pick)
    _, ref = _grads(model, model, x, pick)
    assert all(_rel(got[n], ref[n]) < 1e-5 for n in ref)
    torch._dynamo.reset()
