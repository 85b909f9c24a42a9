"""The fusion plan: which nodes run as one kernel, what was refused and why, and the bytes moved.

:func:`graphopt.passes.fuse_ops` makes it and leaves it in ``ctx.artifacts["fusion"]``; the
outlining pass, the kernel generator, the CLI's ``fusion.json`` and the benchmark read it.

Bytes are counted the same way on both sides of the ratio. A value's bytes are the bytes of
the memory it spans: a broadcast (stride-0) dimension counts once, so reading a bias expanded
over a batch costs the bias, not the batch.

* ``bytes_unfused``: every op of the groups as its own kernel: each reads its tensor operands
  and writes its output (views read and write nothing).
* ``bytes_fused``: every group as one kernel: each reads its inputs once and writes the values
  used outside it.

Example:
    >>> plan = ctx.artifacts["fusion"]
    >>> plan.summary()["kernels"], [g.name for g in plan.groups][:3]
    >>> json.dumps(plan.to_json("zoo:gpt"))
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

__all__ = ["FusionGroup", "Rejection", "FusionPlan", "SCHEMA", "value_bytes"]

SCHEMA = "graphopt.fusion/1"


def value_bytes(val) -> int:
    """Bytes of the memory a tensor value spans (broadcast dims count once)."""
    if not isinstance(val, torch.Tensor):
        return 0
    try:
        n = 1
        for size, stride in zip(val.shape, val.stride()):
            if stride != 0:
                n *= int(size)
        return n * val.element_size()
    except (RuntimeError, TypeError):
        return 0


@dataclass
class FusionGroup:
    """One fused kernel.

    Attributes:
        name: kernel name (``fused_0`` ...), also the submodule name after outlining.
        kind: ``pointwise`` or ``reduction``.
        nodes: member node names in topological order.
        inputs: the values the kernel reads (node names, in argument order).
        outputs: members whose values are used outside the kernel, in output order.
        shape: iteration shape; ``reduce_dims``: the reduced dims of it (reductions).
        bytes_read / bytes_written: the kernel's memory traffic (see the module docstring).
        bytes_unfused: the traffic of its ops run one by one.
        part: the partition all members belong to (None without a partition plan).
    """

    name: str
    kind: str
    nodes: list[str]
    inputs: list[str]
    outputs: list[str]
    shape: list[int]
    reduce_dims: list[int] = field(default_factory=list)
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_unfused: int = 0
    ops: int = 0
    part: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Rejection:
    """A fusion candidate that was refused: the producer/consumer pair and a reason code.

    Reason codes: ``producer_opaque`` / ``consumer_opaque`` (an op that stays in ATen, with its
    own ``why``), ``cross_partition``, ``cycle``, ``domain_mismatch``, ``reduction_mismatch``,
    ``broadcast_internal``, ``constant_output``, ``too_large``, ``no_benefit``.
    """

    producer: str
    consumer: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FusionPlan:
    """The groups, the ops left to ATen, and every refused candidate."""

    groups: list[FusionGroup] = field(default_factory=list)
    unfused: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    graph_ops: int = 0
    extern_ops: int = 0  # of the unfused: matmuls, convolutions, attention (library kernels)

    def group_of(self) -> dict[str, str]:
        """node name -> group name."""
        return {n: g.name for g in self.groups for n in g.nodes}

    def summary(self) -> dict:
        reasons: dict[str, int] = {}
        for r in self.rejected:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
        fused = sum(g.bytes_read + g.bytes_written for g in self.groups)
        unfused = sum(g.bytes_unfused for g in self.groups)
        return {"graph_ops": self.graph_ops, "kernels": len(self.groups),
                "fused_ops": sum(g.ops for g in self.groups), "aten_ops": len(self.unfused),
                "extern_ops": self.extern_ops,
                "bytes_unfused": unfused, "bytes_fused": fused,
                "bytes_ratio": round(fused / unfused, 4) if unfused else 1.0,
                "rejected": reasons}

    def to_json(self, model: str, sources: dict[str, str] | None = None) -> dict:
        """The ``graphopt.fusion/1`` document; ``sources`` maps group name -> source path."""
        sources = sources or {}
        kernels = [{"name": g.name, "kind": g.kind, "nodes": list(g.nodes),
                    "source": sources.get(g.name, f"kernels/{g.name}.py"),
                    "bytes_read": g.bytes_read, "bytes_written": g.bytes_written,
                    "inputs": list(g.inputs), "outputs": list(g.outputs),
                    "shape": list(g.shape), "reduce_dims": list(g.reduce_dims),
                    "part": g.part} for g in self.groups]
        return {"schema": SCHEMA, "model": model, "kernels": kernels,
                "unfused": list(self.unfused),
                "rejected": [r.to_dict() for r in self.rejected],
                "summary": self.summary()}
