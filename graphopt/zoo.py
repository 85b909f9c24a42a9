"""Small models shipped with graphopt, so every command runs with no download and no extra.

Each factory returns ``(model, example_inputs)`` with the model in eval mode and a fixed seed, so
a spec like ``zoo:gpt`` means the same graph on every machine.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ZOO", "MLP", "SmallCNN", "TinyGPT", "ResidualMLP", "build"]


class MLP(nn.Module):
    """A plain multi-layer perceptron."""

    def __init__(self, sizes=(256, 512, 512, 256, 10)):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


class SmallCNN(nn.Module):
    """A ResNet-flavoured CNN: conv-bn-relu stem, two residual blocks, pooled classifier."""

    def __init__(self, channels=32, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels),
                                  nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels),
                          nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                          nn.BatchNorm2d(channels)) for _ in range(2))
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.head(x.mean(dim=(2, 3)))


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (t.view(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        mask = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """A small GPT-style decoder: token and position embeddings, blocks, tied LM head."""

    def __init__(self, vocab=1024, dim=128, heads=4, layers=4, max_seq=256):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_seq, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)

    def forward(self, idx):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.tok.weight.t()


class ResidualMLP(nn.Module):
    """A deep residual MLP: the shape where activation memory dominates a training step."""

    def __init__(self, dim=256, depth=8, hidden=1024):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                          nn.Linear(hidden, dim)) for _ in range(depth))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _mlp(batch=32):
    return MLP(), (torch.randn(batch, 256),)


def _cnn(batch=8, image_size=32):
    return SmallCNN(), (torch.randn(batch, 3, image_size, image_size),)


def _gpt(batch=4, seq=128):
    return TinyGPT(), (torch.randint(0, 1024, (batch, seq)),)


def _resmlp(batch=1024):
    # Large batch: each block's hidden activations (4 MiB) outweigh its weight gradients (2 MiB).
    return ResidualMLP(), (torch.randn(batch, 256),)


ZOO = {
    "mlp": (_mlp, "4-layer MLP with GELU, batch 32"),
    "cnn": (_cnn, "small residual CNN, 8 images of 32x32"),
    "gpt": (_gpt, "4-layer GPT-style decoder, dim 128, 4 sequences of 128 tokens"),
    "resmlp": (_resmlp, "8-block residual MLP, dim 256, hidden 1024, batch 1024"),
}


def build(name: str, seed: int = 0, **kwargs):
    """Build zoo model ``name`` deterministically; returns ``(model, example_inputs)``."""
    factory, _ = ZOO[name]
    torch.manual_seed(seed)
    model, inputs = factory(**kwargs)
    return model.eval(), inputs
