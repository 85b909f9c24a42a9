"""Tiny models and utilities shared by the training tests (a model spec points at this file)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from graphopt.distributed.job import TrainConfig
from graphopt.distributed.reference import compare_runs, reference_training
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.plan import Partition
from graphopt.planner.training import make_job, prepare_model
from graphopt.specs import load_spec
from graphopt.zoo import ResidualMLP

HERE = Path(__file__).resolve()

HF = {
    "gpt2": ("hf:GPT2LMHeadModel", {"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 64,
                                    "n_positions": 32}, {"batch": 4, "seq": 8}),
    "bert": ("hf:BertModel", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                              "intermediate_size": 64, "vocab_size": 64,
                              "max_position_embeddings": 32}, {"batch": 4, "seq": 8}),
    "vit": ("hf:ViTModel", {"num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                            "intermediate_size": 64, "image_size": 16, "patch_size": 8},
            {"batch": 4}),
    "resnet": ("hf:ResNetModel", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]},
               {"batch": 4, "image_size": 32}),
}


def imbalance_for(name: str, k: int) -> float:
    """The tiny ResNet's stem convolution holds most of its FLOPs: allow the most imbalance."""
    return float(k - 1) if name == "resnet" else 0.03


def resmlp():
    """zoo:resmlp's shape, small: 4 residual blocks of width 16, batch 8."""
    torch.manual_seed(0)
    return ResidualMLP(dim=16, depth=4, hidden=32).eval(), (torch.randn(8, 16),)


class Mixed(nn.Module):
    """A boolean mask and an integer tensor, both computed from the data, cross a stage."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, ids):
        mask = ids > 7
        pos = ids % 4
        h = torch.tanh(self.first(self.emb(ids)))
        h = self.second(h).masked_fill(mask[..., None], 0.0)
        return h + pos[..., None].to(h.dtype)


def mixed():
    torch.manual_seed(0)
    return Mixed().eval(), (torch.randint(0, 16, (8, 5)),)


def load(name: str):
    if name in HF:
        spec, overrides, kw = HF[name]
        return load_spec(spec, overrides=overrides, **kw)
    return load_spec(f"{HERE}:{name}")


def plan_from_cuts(graph, k: int, cuts: list[str], model: str) -> Partition:
    """A pipeline plan cutting the graph's order after each node named in ``cuts``."""
    cg = CostGraph.from_graph(graph, "cpu")
    part = np.zeros(cg.n, dtype=np.int64)
    stage = 0
    for i, name in enumerate(cg.names):
        part[i] = stage
        if name in cuts:
            stage += 1
    part = cg.param_parts(part, k)
    return Partition(model=model, k=k, mode="pipeline", cost_graph=cg, part=part, method="cuts")


_REFERENCES: dict = {}


def job_for(prep, **cfg):
    """A job and its single-process reference, for a prepared model.

    The reference depends on the data, the optimizer and how many micro-batches a step
    averages, not on the pipeline: configurations that differ only there share one."""
    config = TrainConfig.of(**{"steps": 2, "timeout_s": 240.0, **cfg.pop("config", {})})
    plan = cfg.pop("plan", None)
    job, info = make_job(prep, config, plan=plan, **cfg)
    key = (id(prep), config.optimizer, config.lr, config.momentum, config.weight_decay,
           config.steps, config.dp * config.microbatches)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference_training(job, model=prep.model, in_spec=prep.in_spec,
                                              graph=prep.graph)
    return job, info, _REFERENCES[key]


_PREPARED: dict = {}


def prepared(name: str):
    """``name`` captured at its micro-batch size (batch / 4), once per test run: every
    configuration here uses microbatches x dp = 4, so they share the graph."""
    if name not in _PREPARED:
        _PREPARED[name] = prepare_model(load(name), TrainConfig.of(pp=1, microbatches=4))
    return _PREPARED[name]


def check(run, ref) -> dict:
    return compare_runs(run.losses, run.params, ref, rtol=1e-5)
