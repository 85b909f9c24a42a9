"""What a device and a link are to the cost model: peak rates and the alpha-beta link model.

Torch-free (pure dataclasses), so the CLI builds its choices from :mod:`graphopt.costmodel.presets`
without importing torch.

Time (roofline): ``t = max(flops / peak, (bytes_read + bytes_written) / bandwidth)`` where ``peak`` is
the device's matrix peak for matmul-class ops at the op's dtype and its vector peak otherwise.
Communication (alpha-beta): ``t = alpha + bytes / beta`` per message.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DeviceSpec", "LinkSpec", "roofline_seconds", "MATRIX_CLASSES"]

#: Op classes (:class:`graphopt.op_table.OpClass` values) that run on the matrix units.
MATRIX_CLASSES = ("matmul", "conv", "attention")


@dataclass(frozen=True)
class LinkSpec:
    """Alpha-beta model of a point-to-point link: ``alpha + bytes / beta`` seconds a message."""

    name: str
    alpha: float  # seconds of latency per message
    beta: float   # bytes per second

    def seconds(self, nbytes: int) -> float:
        return 0.0 if nbytes <= 0 else self.alpha + nbytes / self.beta


@dataclass(frozen=True)
class DeviceSpec:
    """Peak rates of one device, for roofline estimates.

    ``matmul_flops`` maps a dtype name to the dense matrix-unit peak (FLOP/s); ``vector_flops`` is
    the non-matrix peak; ``bandwidth`` is main-memory bandwidth in bytes/s; ``memory`` in bytes;
    ``launch_seconds`` the fixed cost every op pays (kernel launch, or eager dispatch on a CPU).

    A spec measured by ``graphopt calibrate`` (see :mod:`graphopt.costmodel.device_file`) also
    carries what the presets cannot know: ``view_seconds`` (the dispatch cost of an aliasing op,
    which moves no bytes), ``matmul_curve`` (dtype -> ``((flops, flop_per_s), ...)`` measured at
    several sizes, since small matmuls run far below the peak), the measured links ``p2p_link``
    and ``allreduce_link`` (the ring all-reduce's per-hop model), ``device_type`` (``cpu`` or
    ``cuda``), ``attention_curve`` (``((flops, flop_per_s), ...)`` of the fused attention op,
    which runs well below the matmul rate on a CPU), ``random_rate`` (random numbers drawn per
    second) and ``calibrated`` (the date of the measurement, empty for a preset).
    """

    name: str
    matmul_flops: dict = field(default_factory=dict)
    vector_flops: float = 1e12
    bandwidth: float = 1e11
    memory: int = 16 * 2**30
    launch_seconds: float = 0.0
    view_seconds: float = 0.0
    matmul_curve: dict = field(default_factory=dict)
    p2p_link: LinkSpec | None = None
    allreduce_link: LinkSpec | None = None
    device_type: str = ""
    attention_curve: tuple = ()
    random_rate: float = 0.0
    calibrated: str = ""

    def matmul_peak(self, dtype: str) -> float:
        return self.matmul_flops.get(dtype, self.matmul_flops.get("float32", self.vector_flops))


def roofline_seconds(flops: int, bytes_moved: int, op_cls: str, dtype: str,
                     device: DeviceSpec) -> float:
    """Lower-bound time of one op: the slower of its compute and its memory traffic."""
    if flops == 0 and bytes_moved == 0:
        return 0.0
    peak = device.matmul_peak(dtype) if op_cls in MATRIX_CLASSES else device.vector_flops
    return max(flops / peak, bytes_moved / device.bandwidth) + device.launch_seconds
