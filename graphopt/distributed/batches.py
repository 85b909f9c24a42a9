"""Training data and loss: the batch of every step, the labels a model needs, the loss it reads.

The loss is the model's own where it has one: a HuggingFace class with a head (``*LMHeadModel``,
``*ForCausalLM``, ``*ForMaskedLM``, ``*ForImageClassification``, ``*ForSequenceClassification``)
is given ``labels`` before capture, so the captured graph computes the loss itself (its first
output), and any model whose first output is a scalar counts as returning its loss. Otherwise
the loss is the sum over the model's floating outputs of the mean-squared error to a fixed
random target (seeded), so every output is trained.

Data: step 0 is the example batch itself; step ``s > 0`` is drawn like it from the seed (floats
normal, booleans fair coins, integers in the example's range), with language-model labels again
equal to the input ids. Every rank draws the same global batch and takes its own slice, so no
data is ever sent. The engine splits every input along dimension 0, so each must have a batch
dimension of the global batch size.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree

from graphopt.errors import GraphoptError

__all__ = ["BatchSpec", "Loss", "add_labels", "make_loss", "make_target", "slice_batch"]

_COPY_LABELS = ("LMHeadModel", "ForCausalLM", "ForMaskedLM")
_CLASS_LABELS = ("ForImageClassification", "ForSequenceClassification")


class _DefaultLossNotice(logging.Filter):
    """Drops transformers' "`loss_type=None` was set in the config but it is unrecognized"
    notice: a class whose name maps to no loss type (``GPT2LMHeadModel``) falls back to the
    causal-LM loss, the one graphopt gives it labels for; every process (each ``torchrun`` rank)
    printed it once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("`loss_type=")


_LOSS_NOTICE = _DefaultLossNotice()


def add_labels(spec: str, model: torch.nn.Module, inputs: tuple, kwargs: dict) -> dict:
    """``kwargs`` plus the ``labels`` that make a HuggingFace head compute its loss."""
    kwargs = dict(kwargs or {})
    if not spec.startswith("hf:") or "labels" in kwargs:
        return kwargs
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return kwargs
    if "labels" not in params or not inputs or not isinstance(inputs[0], torch.Tensor):
        return kwargs
    name = type(model).__name__
    if name.endswith(_COPY_LABELS) and not inputs[0].dtype.is_floating_point:
        kwargs["labels"] = inputs[0].clone()
        logging.getLogger("transformers.modeling_utils").addFilter(_LOSS_NOTICE)   # a no-op when there
    elif name.endswith(_CLASS_LABELS):
        classes = int(getattr(model.config, "num_labels", 2))
        gen = torch.Generator().manual_seed(1234)
        kwargs["labels"] = torch.randint(0, classes, (inputs[0].shape[0],), generator=gen)
    return kwargs


def _like(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if t.dtype.is_floating_point:
        return torch.randn(t.shape, generator=gen, dtype=t.dtype)
    if t.dtype == torch.bool:
        return torch.rand(t.shape, generator=gen) < 0.5
    lo = min(int(t.min()), 0) if t.numel() else 0
    hi = int(t.max()) + 1 if t.numel() else 1
    return torch.randint(lo, max(hi, lo + 1), t.shape, generator=gen, dtype=t.dtype)


@dataclass
class BatchSpec:
    """The global batch of each step (see the module docstring).

    Attributes:
        example: the flat example inputs at the global batch size (step 0).
        copies: input position -> position it always equals (language-model labels).
        seed: the seed of steps after the first.
    """

    example: tuple
    copies: dict[int, int] = field(default_factory=dict)
    seed: int = 0

    @classmethod
    def from_inputs(cls, inputs: tuple, kwargs: dict, seed: int) -> BatchSpec:
        flat = tuple(pytree.tree_leaves((tuple(inputs), dict(kwargs or {}))))
        copies = {}
        labels = (kwargs or {}).get("labels")
        if isinstance(labels, torch.Tensor):
            pos = next(i for i, t in enumerate(flat) if t is labels)
            src = next((i for i, t in enumerate(flat) if i != pos and isinstance(t, torch.Tensor)
                        and t.shape == labels.shape and torch.equal(t, labels)), None)
            if src is not None:
                copies[pos] = src
        for i, t in enumerate(flat):
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                raise GraphoptError(f"input {i} is not a batched tensor; the pipeline engine "
                                    "splits every input along dimension 0")
        return cls(example=flat, copies=copies, seed=seed)

    @property
    def batch(self) -> int:
        return int(self.example[0].shape[0])

    def draw(self, step: int) -> tuple:
        if step == 0:
            return self.example
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        out = [_like(t, gen) for t in self.example]
        for dst, src in self.copies.items():
            out[dst] = out[src].clone()
        return tuple(out)


def slice_batch(batch: tuple, start: int, stop: int) -> tuple:
    return tuple(t[start:stop] for t in batch)


@dataclass
class Loss:
    """The loss of one micro-batch from the last stage's flat outputs (picklable).

    ``kind="output"``: the model's own loss, flat output ``index``. ``kind="mse"``: the sum over
    ``parts`` ``(flat index, per-sample size)`` of the MSE to the matching columns of the target.
    """

    kind: str
    index: int = 0
    parts: list[tuple[int, int]] = field(default_factory=list)

    def __call__(self, output, target: torch.Tensor) -> torch.Tensor:
        outs = output if isinstance(output, (tuple, list)) else (output,)
        if self.kind == "output":
            return outs[self.index]
        total, col = None, 0
        for idx, size in self.parts:
            y = outs[idx].reshape(outs[idx].shape[0], -1)
            term = torch.nn.functional.mse_loss(y, target[:, col:col + size].to(y.dtype))
            total = term if total is None else total + term
            col += size
        return total

    @property
    def width(self) -> int:
        return sum(size for _, size in self.parts)

    def describe(self) -> str:
        if self.kind == "output":
            return "the model's own loss"
        return f"mean-squared error to a fixed random target over {len(self.parts)} output(s)"


def make_loss(output_vals: list, result_slots: list[int | None], micro: int) -> Loss:
    """Choose the loss from the graph's output values (fake tensors at micro-batch size)."""
    slots = [(s, v) for s, v in zip(result_slots, output_vals)
             if s is not None and isinstance(v, torch.Tensor)]
    if slots and slots[0][1].dim() == 0 and slots[0][1].dtype.is_floating_point:
        return Loss(kind="output", index=slots[0][0])
    parts = [(s, int(v.numel()) // micro) for s, v in slots
             if v.dtype.is_floating_point and v.dim() >= 1 and int(v.shape[0]) == micro]
    if not parts:
        raise GraphoptError("the model has no floating output with a batch dimension to train "
                            "against, and no loss of its own")
    return Loss(kind="mse", parts=parts)


def make_target(loss: Loss, batch: int, seed: int) -> torch.Tensor:
    """The fixed MSE target of the global batch (a placeholder for a model's own loss)."""
    if loss.kind == "output":
        return torch.zeros(batch, 1)
    gen = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(batch, loss.width, generator=gen)
