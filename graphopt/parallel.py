"""One parallel configuration and one memory budget, each checked once where it is made.

:class:`ParallelConfig` is the mesh and the pipeline of a training step (in the spirit of
torchtitan's ``ParallelDims``): data-, tensor- and pipeline-parallel degrees, the schedule with
its stages per rank, the micro-batching and the activation memory budget (what is recomputed in
the backward pass). Everything derived from them (world size, number of stages, where each stage
runs, a rank's mesh position) is derived here and nowhere else. The planner enumerates, prices
and ranks them, ``parallel.json`` stores them (:meth:`ParallelConfig.to_dict` writes its field
names), the training job wraps one.

Ranks are laid out row-major over ``(dp, pp, tp)``: global rank ``(d * pp + p) * tp + t``.

:class:`MemoryBudget` is a memory budget as every option and file writes it: a fraction in
(0, 1] of a baseline (the no-remat saved activations), or a positive number of bytes; read by
:func:`graphopt.units.parse_budget` (``0.5``, ``256MiB``, ``4096``).

This module does not import torch (the CLI builds its argument parser from it).

Example:
    >>> cfg = ParallelConfig(dp=2, pp=2, schedule="interleaved", microbatches=4)
    >>> cfg.world_size, cfg.n_stages, cfg.placement, cfg.position(3)
    (4, 4, (0, 1, 0, 1), (1, 1, 0))
    >>> MemoryBudget.parse("0.5").bytes_of(1000), MemoryBudget.parse("1KiB").bytes_of(10**6)
    (500, 1024)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from graphopt import schedules
from graphopt.errors import GraphoptError, SizeError
from graphopt.units import format_bytes, parse_budget

__all__ = ["ParallelConfig", "MemoryBudget", "DP_WRAPPERS"]

DP_WRAPPERS = ("ddp", "fsdp")


def _positive(name: str, value, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GraphoptError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ParallelConfig:
    """How one training step is spread over devices.

    Attributes:
        dp, tp, pp: data-, tensor- and pipeline-parallel degrees.
        schedule: a name from :data:`graphopt.schedules.ALL_SCHEDULES`.
        stages_per_rank: ``v``; ``None`` takes the schedule's default (resolved on creation, so
            it is always an int afterwards).
        microbatches: ``M`` per step and data-parallel replica.
        microbatch_size: samples per micro-batch, where known.
        dp_wrapper: ``ddp`` or ``fsdp``.
        memory_budget: a :class:`MemoryBudget` for the activations a stage saves for its
            backward (rematerialization), or None to save them all; anything
            :meth:`MemoryBudget.parse` reads is converted on creation. Derived:
            :attr:`recompute`.

    Raises:
        GraphoptError: one line naming the first bad value.
    """

    dp: int = 1
    tp: int = 1
    pp: int = 1
    schedule: str = "1f1b"
    stages_per_rank: int | None = None
    microbatches: int = 1
    microbatch_size: int | None = None
    dp_wrapper: str = "ddp"
    memory_budget: MemoryBudget | None = None

    def __post_init__(self):
        for name in ("dp", "tp", "pp", "microbatches"):
            _positive(name, getattr(self, name))
        _positive("microbatch_size", self.microbatch_size, optional=True)
        _positive("stages_per_rank", self.stages_per_rank, optional=True)
        v = schedules.stages_per_rank(self.schedule, self.stages_per_rank)
        object.__setattr__(self, "stages_per_rank", v)
        if self.schedule == "1f1b" and self.microbatches < self.pp:
            raise GraphoptError(f"--schedule 1f1b needs at least as many micro-batches as stages: "
                                f"{self.microbatches} < {self.pp}; pass --microbatches {self.pp} "
                                "or more, or use gpipe")
        if self.dp_wrapper not in DP_WRAPPERS:
            raise GraphoptError(f"--dp-wrapper must be one of {', '.join(DP_WRAPPERS)}, got "
                                f"{self.dp_wrapper!r}")
        object.__setattr__(self, "memory_budget",
                           MemoryBudget.optional(self.memory_budget, option="--memory-budget"))

    @property
    def recompute(self) -> str:
        """``parallel.json``'s ``recompute``: ``"none"`` (every activation saved) or the memory
        budget as :meth:`MemoryBudget.parse` reads it back (``0.5``, ``256MiB``)."""
        return "none" if self.memory_budget is None else str(self.memory_budget)

    @property
    def world_size(self) -> int:
        """Processes (devices) the configuration runs on: ``dp * tp * pp``."""
        return self.dp * self.tp * self.pp

    @property
    def n_stages(self) -> int:
        """Pipeline stages: ``pp * stages_per_rank``."""
        return self.pp * self.stages_per_rank

    @property
    def placement(self) -> tuple[int, ...]:
        """The pipeline rank of each stage (:func:`graphopt.schedules.placement`)."""
        return tuple(schedules.placement(self.schedule, self.pp, self.stages_per_rank))

    def stages_of(self, pp_rank: int) -> list[int]:
        """The stages pipeline rank ``pp_rank`` runs, in pipeline order."""
        return [s for s, r in enumerate(self.placement) if r == pp_rank]

    @property
    def global_batch(self) -> int | None:
        """Samples per step over the whole job, where the micro-batch size is known."""
        if self.microbatch_size is None:
            return None
        return self.microbatch_size * self.microbatches * self.dp

    def position(self, rank: int) -> tuple[int, int, int]:
        """``(data, pipeline, tensor)`` mesh coordinates of global ``rank`` (module docstring)."""
        if not 0 <= rank < self.world_size:
            raise GraphoptError(f"rank {rank} is outside a world of {self.world_size}")
        rest, t = divmod(rank, self.tp)
        d, p = divmod(rest, self.pp)
        return d, p, t

    def rank_of(self, dp_rank: int, pp_rank: int, tp_rank: int = 0) -> int:
        """The global rank at mesh coordinates ``(dp_rank, pp_rank, tp_rank)``."""
        return (dp_rank * self.pp + pp_rank) * self.tp + tp_rank

    def split_batch(self, batch: int) -> int:
        """Samples per micro-batch for a global ``batch``; one line when it does not divide.

        Example:
            >>> ParallelConfig(dp=2, pp=2, microbatches=4).split_batch(16)
            2
        """
        parts = self.dp * self.microbatches
        if batch < parts or batch % parts:
            raise GraphoptError(f"a batch of {batch} does not split into dp {self.dp} x "
                                f"{self.microbatches} micro-batches; use a batch that is a "
                                f"multiple of {parts} (e.g. --batch {parts * max(1, batch // parts)})")
        return batch // parts

    def check_runnable(self) -> None:
        """Ask torch's schedule whether it runs this configuration (imports torch); one line
        (:class:`~graphopt.errors.PlanError`) when it does not."""
        schedules.check_schedule(self.schedule, self.pp, self.stages_per_rank, self.microbatches)

    def label(self) -> str:
        """A short description: ``dp 2 x pp 2, 1f1b, 4 micro-batches`` (``, memory budget
        0.5`` where one is set)."""
        dims = [f"dp {self.dp}"] + ([f"tp {self.tp}"] if self.tp > 1 else []) + [f"pp {self.pp}"]
        v = f" (v={self.stages_per_rank})" if self.stages_per_rank > 1 else ""
        budget = "" if self.memory_budget is None else f", memory budget {self.memory_budget}"
        m = f"{self.microbatches} micro-batch{'es' if self.microbatches != 1 else ''}"
        return f"{' x '.join(dims)}, {self.schedule}{v}, {m}{budget}"

    def to_dict(self) -> dict:
        """The fields under ``parallel.json``'s names: the budget as its plain value (a float
        fraction or int bytes, ``null`` for none) and the derived ``recompute``."""
        d = asdict(self)
        d["memory_budget"] = None if self.memory_budget is None else self.memory_budget.value
        d["recompute"] = self.recompute
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ParallelConfig:
        """A configuration from a dict (``parallel.json``'s entries); unknown and derived keys
        (``recompute``) are ignored."""
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})


@dataclass(frozen=True)
class MemoryBudget:
    """A memory budget: a ``fraction`` in (0, 1] of a baseline, or ``nbytes`` bytes (one of them).

    Build one with :meth:`parse` (strings, floats as fractions, ints as bytes) or directly.
    """

    fraction: float | None = None
    nbytes: int | None = None

    def __post_init__(self):
        if (self.fraction is None) == (self.nbytes is None):
            raise SizeError("a memory budget is a fraction or a number of bytes, not both or none")
        if self.fraction is not None:
            f = self.fraction
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 < f <= 1.0:
                raise SizeError(f"a memory budget fraction must lie in (0, 1], got {f!r}")
            object.__setattr__(self, "fraction", float(f))
        else:
            n = self.nbytes
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise SizeError(f"a memory budget in bytes must be a positive integer, got {n!r}")

    @classmethod
    def parse(cls, value, *, option: str = "--budget") -> MemoryBudget:
        """Read ``0.5`` / ``"0.5"`` (a fraction), ``4096`` / ``"256MiB"`` (bytes), or a budget.

        Raises:
            SizeError: one line naming ``option`` and the forms accepted.
        """
        if isinstance(value, MemoryBudget):
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SizeError(f"{option} {value!r}: give a fraction in (0, 1] or a size in bytes")
        v = parse_budget(value, option=option)
        return cls(fraction=v) if isinstance(v, float) else cls(nbytes=v)

    @classmethod
    def optional(cls, value, *, option: str = "--budget") -> MemoryBudget | None:
        """:meth:`parse`, with ``None``, ``""`` and ``"none"`` meaning no budget."""
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        return cls.parse(value, option=option)

    @property
    def is_fraction(self) -> bool:
        return self.fraction is not None

    @property
    def value(self) -> float | int:
        """The plain form (a float fraction or int bytes): the backend option, the JSON value."""
        return self.fraction if self.fraction is not None else self.nbytes

    def bytes_of(self, baseline: int) -> int:
        """The budget in bytes: a fraction of ``baseline``, or the bytes themselves."""
        if self.fraction is None:
            return self.nbytes
        return int(self.fraction * baseline)

    def __str__(self) -> str:
        """What :meth:`parse` reads back as this budget: ``0.5``, ``1.0`` (a fraction keeps its
        decimal point: ``1`` is one byte), ``256MiB``."""
        if self.fraction is None:
            return format_bytes(self.nbytes)
        text = f"{self.fraction:.12f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
