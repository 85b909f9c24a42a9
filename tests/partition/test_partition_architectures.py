"""Every architecture of the broad benchmark, at test size: the plan ``graphopt partition`` makes
holds the contract and its stages compute what the eager model does on fresh random inputs.

The architectures (decoder LMs with RMSNorm, rotary embeddings, grouped-query attention and
gated MLPs, parallel-residual decoders, encoders, an encoder-decoder, windowed and distilled
vision transformers, depthwise and grouped conv nets, mixtures of experts) come from
``bench/partition_models.py`` with ``tiny=True``: two layers, 32 tokens, 64x64 images.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from checks import max_rel_err
from plan_checks import check_document

import graphopt
from graphopt.passes import PassContext, check_invariants
from graphopt.passes.partition_graph import partition_graph

pytest.importorskip("transformers")

_BENCH = Path(__file__).resolve().parents[2] / "bench"


def _models():
    spec = importlib.util.spec_from_file_location("partition_models", _BENCH / "partition_models.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("partition_models", mod)
    spec.loader.exec_module(mod)
    return mod


MODELS = _models()


def _fresh(inputs, seed: int):
    """New random inputs of the same kind and shape (token ids stay within the vocabulary)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        if x.dtype.is_floating_point:
            out.append(torch.randn(x.shape, generator=gen))
        else:
            out.append(torch.randint(0, int(x.max()) + 1, x.shape, generator=gen))
    return tuple(out)


@pytest.mark.parametrize("name", sorted(MODELS.CASES))
def test_plan_holds_the_contract_and_its_stages_equal_eager(name):
    model, inputs, _ = MODELS.build(name, tiny=True)
    graph = graphopt.capture(model, inputs)
    k = 3
    ctx = PassContext(options={"k": k, "split": "auto", "model": name})
    result = partition_graph(graph, ctx)
    check_invariants(result.graph)
    plan = ctx.artifacts["partition"]
    check_document(plan.to_dict())
    # stages balance predicted time: the tolerance bounds the time imbalance
    assert plan.summary()["time_imbalance"] <= plan.options["imbalance_used"] + 1e-9 or \
        any("alone holds" in n or "its slowest stage is faster" in n for n in plan.notes)
    stages = plan.split(result.graph)
    fresh = _fresh(inputs, seed=1)
    with torch.no_grad():
        want = [t for t in pytree.tree_leaves(model(*fresh)) if isinstance(t, torch.Tensor)]
        out = [t for t in stages.run(*fresh) if isinstance(t, torch.Tensor)]
    assert len(out) == len(want)
    assert max_rel_err(out, want) < 1e-4
