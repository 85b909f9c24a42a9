"""What a training run is: the configuration a user chose and the job every rank receives.

:class:`TrainConfig` holds the choices: a :class:`~graphopt.parallel.ParallelConfig` (mesh,
schedule, micro-batching) and the optimizer and steps; :class:`TrainJob` adds
what was derived from the model and the plan (the lowered stages, where each runs, the data, the
loss, the tied weights). A job pickles whole: the launcher hands the same bytes to every rank,
and a ``torchrun`` rank builds the identical job itself (capture and planning are deterministic).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from graphopt.distributed.batches import BatchSpec, Loss
from graphopt.distributed.lowering import Lowered, unused_parameters
from graphopt.errors import GraphoptError
from graphopt.parallel import DP_WRAPPERS, ParallelConfig
from graphopt.schedules import SCHEDULES

__all__ = ["TrainConfig", "TrainJob", "OPTIMIZERS", "DP_WRAPPERS", "LOWERINGS", "make_optimizer"]

OPTIMIZERS = ("sgd", "adamw")
LOWERINGS = ("relay", "direct")


@dataclass(frozen=True)
class TrainConfig:
    """The user's choices (see ``graphopt train --help``): a :class:`ParallelConfig` (mesh,
    schedule, micro-batching) and how to train on it. Checked on creation (one-line
    :class:`GraphoptError`).

    ``dp_wrapper`` defaults to DDP: on the small stage modules pipelines make, replicating each
    stage's weights costs little memory, and DDP's one bucketed all-reduce per step beats FSDP2's
    all-gather before every micro-batch's forward and backward plus a reduce-scatter.

    Example:
        >>> cfg = TrainConfig(ParallelConfig(pp=2, dp=2, microbatches=4), steps=3)
        >>> cfg.world_size, cfg.stages, TrainConfig.of(pp=2, microbatches=4).pp
        (4, 2, 2)
    """

    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig(microbatches=4))
    steps: int = 2
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.01
    seed: int = 0
    timeout_s: float = 600.0
    lowering: str = "relay"     # or "direct": skips sent straight to their consumer (GPipe)

    def __post_init__(self):
        self.validate()

    @classmethod
    def of(cls, **kw) -> TrainConfig:
        """A configuration from flat keywords: :class:`ParallelConfig`'s fields (``virtual``
        for ``stages_per_rank``; ``microbatches`` defaults to 4) and this class's own."""
        if "virtual" in kw:
            kw["stages_per_rank"] = kw.pop("virtual")
        mesh = {k: kw.pop(k) for k in list(kw) if k in ParallelConfig.__dataclass_fields__}
        return cls(ParallelConfig(**{"microbatches": 4, **mesh}), **kw)

    def validate(self) -> None:
        if not isinstance(self.parallel, ParallelConfig):
            raise GraphoptError(f"TrainConfig.parallel must be a ParallelConfig, got "
                                f"{type(self.parallel).__name__}")
        if self.parallel.tp != 1:
            raise GraphoptError(f"graphopt train runs without tensor parallelism (tp 1), got tp "
                                f"{self.parallel.tp}")
        if self.schedule not in SCHEDULES:
            raise GraphoptError(f"--schedule {self.schedule} is priced but not run by the "
                                f"runtime; choose one of {', '.join(SCHEDULES)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise GraphoptError(f"--steps must be a positive integer, got {self.steps!r}")
        if self.optimizer not in OPTIMIZERS:
            raise GraphoptError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                                f"{self.optimizer!r}")
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

    # The parallel configuration's fields, read through (derived there, once).
    pp = property(lambda self: self.parallel.pp)
    dp = property(lambda self: self.parallel.dp)
    schedule = property(lambda self: self.parallel.schedule)
    microbatches = property(lambda self: self.parallel.microbatches)
    dp_wrapper = property(lambda self: self.parallel.dp_wrapper)
    memory_budget = property(lambda self: self.parallel.memory_budget,
                             doc="Recorded with the run; the runtime does not rematerialize.")
    virtual = property(lambda self: self.parallel.stages_per_rank, doc="Stages per rank.")
    stages = property(lambda self: self.parallel.n_stages, doc="Pipeline stages in all.")
    world_size = property(lambda self: self.parallel.world_size)
    placement = property(lambda self: list(self.parallel.placement),
                         doc="The pipeline rank of each stage.")


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
        unused: stage -> its trainable weights no gradient of the loss reaches (``None``:
            unknown), worked out on creation, where the stages' graphs still hold their values'
            metadata (a pickled copy does not): what DDP's ``find_unused_parameters`` needs.
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
    unused: dict[int, set[str] | None] = field(init=False)

    def __post_init__(self):
        loss = self.loss
        self.unused = unused_parameters(self.lowered, [loss.index] if loss.kind == "output"
                                        else [i for i, _ in loss.parts])

    @property
    def shard(self) -> int:
        """Samples per dp rank per step."""
        return self.micro * self.config.microbatches
