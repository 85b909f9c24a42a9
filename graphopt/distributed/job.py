"""What a training run is: the configuration a user chose and the job every rank receives.

:class:`TrainConfig` holds the choices (mesh, schedule, optimizer, steps); :class:`TrainJob` adds
what was derived from the model and the plan (the lowered stages, where each runs, the data, the
loss, the tied weights). A job pickles whole: the launcher hands the same bytes to every rank,
and a ``torchrun`` rank builds the identical job itself (capture and planning are deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from graphopt.distributed.batches import BatchSpec, Loss
from graphopt.distributed.lowering import Lowered
from graphopt.errors import GraphoptError

__all__ = ["TrainConfig", "TrainJob", "OPTIMIZERS", "DP_WRAPPERS", "LOWERINGS", "make_optimizer"]

OPTIMIZERS = ("sgd", "adamw")
DP_WRAPPERS = ("ddp", "fsdp")
LOWERINGS = ("relay", "direct")


@dataclass
class TrainConfig:
    """The user's choices (see ``graphopt train --help``).

    ``dp_wrapper`` defaults to DDP: on the small stage modules pipelines make, replicating each
    stage's weights costs little memory, and DDP's one bucketed all-reduce per step beats FSDP2's
    all-gather before every micro-batch's forward and backward plus a reduce-scatter.
    """

    pp: int
    dp: int = 1
    schedule: str = "1f1b"
    microbatches: int = 4
    steps: int = 2
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.01
    dp_wrapper: str = "ddp"
    virtual: int = 1            # stages per rank
    seed: int = 0
    timeout_s: float = 600.0
    lowering: str = "relay"     # or "direct": skips sent straight to their consumer (GPipe)

    def validate(self) -> None:
        for name in ("pp", "dp", "steps", "microbatches", "virtual"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise GraphoptError(f"--{name.replace('_', '-')} must be a positive integer, "
                                    f"got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise GraphoptError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                                f"{self.optimizer!r}")
        if self.dp_wrapper not in DP_WRAPPERS:
            raise GraphoptError(f"--dp-wrapper must be one of {', '.join(DP_WRAPPERS)}, got "
                                f"{self.dp_wrapper!r}")
        if self.lowering not in LOWERINGS:
            raise GraphoptError(f"--lowering must be one of {', '.join(LOWERINGS)}, got "
                                f"{self.lowering!r}")
        if self.lowering == "direct" and self.schedule != "gpipe":
            raise GraphoptError(f"--lowering direct runs with --schedule gpipe only (1F1B "
                                f"deadlocks on long skips, {self.schedule} sends to adjacent "
                                "stages only); use --lowering relay")
        if not self.lr > 0:
            raise GraphoptError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise GraphoptError(f"--momentum must be in [0, 1), got {self.momentum}")

    @property
    def world_size(self) -> int:
        return self.pp * self.dp

    @property
    def stages(self) -> int:
        return self.pp * self.virtual


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer every rank and the single-process reference build the same way.

    ``foreach=False``: the per-tensor loop does the same arithmetic on a shard (FSDP2) as on the
    whole tensor, so the two runs agree to rounding.
    """
    params = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, foreach=False)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)


@dataclass
class TrainJob:
    """Everything a rank needs (picklable).

    Attributes:
        placement: the pp rank of each stage.
        tied: groups of ``(stage, parameter name)`` holding one model weight.
        micro: samples per micro-batch (the size the graph was captured at).
        fault: ``(rank, step, "raise" | "kill")`` to inject a failure (tests), or None.
    """

    config: TrainConfig
    lowered: Lowered
    placement: list[int]
    batches: BatchSpec
    loss: Loss
    target: torch.Tensor
    tied: list[list[tuple[int, str]]] = field(default_factory=list)
    micro: int = 1
    fault: tuple | None = None
    model: str = ""

    @property
    def shard(self) -> int:
        """Samples per dp rank per step."""
        return self.micro * self.config.microbatches
