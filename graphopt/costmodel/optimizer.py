"""The optimizer step: the state it keeps per weight byte and the time one step takes.

Memory: each trainable weight byte holds the weight, its gradient and the optimizer's state
(SGD 0, SGD with momentum 1, AdamW 2 bytes per weight byte). Time: ``torch.optim`` with
``foreach=False``, as the runtime builds it: per trainable tensor a few ops at the per-op
overhead, plus its bytes at the memory bandwidth.
"""
from __future__ import annotations

from graphopt.costmodel.device import DeviceSpec
from graphopt.errors import PlanError

__all__ = ["OPTIMIZER_COST", "OPTIMIZER_STATE", "optimizer_key", "state_factor", "optimizer_seconds"]

# (tensor ops per trainable tensor, bytes moved per parameter byte) of one optimizer step:
# SGD ``p.add_(g, alpha=-lr)`` reads p and g and writes p; AdamW's single-tensor update makes
# about seven passes over p, g and its two moments.
OPTIMIZER_COST = {"sgd": (1, 3.0), "sgd-momentum": (3, 7.0), "adamw": (7, 16.0)}
#: Optimizer state bytes per weight byte.
OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adamw": 2, "adam": 2}


def optimizer_key(optimizer: str, momentum: float = 0.0) -> str:
    """The cost key of ``optimizer`` (``sgd`` with a momentum is ``sgd-momentum``)."""
    if optimizer == "adamw":
        return "adamw"
    return "sgd-momentum" if momentum else "sgd"


def state_factor(optimizer: str, momentum: float = 0.0) -> float:
    """Bytes held per byte of trainable weight: the weight, its gradient, the optimizer state."""
    return 2.0 + OPTIMIZER_STATE[optimizer_key(optimizer, momentum)]


def optimizer_seconds(prof, stages: list[int], spec: DeviceSpec, optimizer: str) -> float:
    """One optimizer step over the trainable weights of ``stages`` (those of one rank) of a
    :class:`~graphopt.costmodel.stage_profile.StageProfile`."""
    if optimizer not in OPTIMIZER_COST:
        raise PlanError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_COST)}")
    ops, per_byte = OPTIMIZER_COST[optimizer]
    nbytes = sum(prof.grad_bytes[s] for s in stages)
    count = sum(prof.param_tensors[s] for s in stages)
    return count * ops * spec.launch_seconds + per_byte * nbytes / spec.bandwidth
