"""How long one node takes on a device: the calibrated roofline.

Matmul-class ops run at the rate measured for their size where the spec has a curve (small
matmuls run far below the peak), attention at the fused attention op's measured rate, views pay
the dispatcher only, random draws their measured rate; a preset (no curves) is the plain
roofline plus the per-op launch cost. :class:`graphopt.costmodel.CostModel` answers through here.
"""
from __future__ import annotations

import dataclasses
import math

from graphopt.costmodel.device import DeviceSpec, roofline_seconds
from graphopt.op_table import OpClass

__all__ = ["matmul_rate", "curve_rate", "node_seconds"]


def matmul_rate(spec: DeviceSpec, dtype: str, flops: float) -> float:
    """FLOP/s a matmul of ``flops`` FLOPs reaches: the measured curve, interpolated in log-FLOPs.

    Below the smallest measured size the smallest size's rate applies, above the largest the
    largest's; without a curve (datasheet presets) the dtype's peak.
    """
    curve = spec.matmul_curve.get(dtype)
    if curve is None and dtype not in spec.matmul_flops:   # an unmeasured dtype runs as float32
        curve = spec.matmul_curve.get("float32")
    if not curve or flops <= 0:
        return spec.matmul_peak(dtype)
    return curve_rate(curve, flops)


def curve_rate(curve, flops: float) -> float:
    """A measured ``((flops, rate), ...)`` curve read at ``flops``: interpolated in log-FLOPs,
    the end rates beyond its ends."""
    if flops <= curve[0][0]:
        return curve[0][1]
    for (f0, r0), (f1, r1) in zip(curve, curve[1:]):
        if flops <= f1:
            w = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
            return r0 + w * (r1 - r0)
    return curve[-1][1]


def node_seconds(info, spec: DeviceSpec) -> float:
    """One node's time: the roofline on ``spec`` plus the per-op overhead.

    Matmul-class ops run at the rate measured for their size (``spec.matmul_curve``) instead of
    the peak, attention at the fused attention op's measured rate where the spec has one
    (``spec.attention_curve``), views pay the dispatcher only (``spec.view_seconds``), random
    draws (dropout's, in attention too) cost ``1 / spec.random_rate`` each on top, and
    parameters are free.
    """
    if info.op != "call_function" or info.is_param:
        return 0.0
    if info.op_class == OpClass.VIEW:
        return spec.view_seconds
    dtype = info.dtype or "float32"
    if info.op_class == OpClass.ATTENTION and spec.attention_curve and info.flops > 0:
        spec = dataclasses.replace(spec, matmul_flops={dtype: curve_rate(spec.attention_curve,
                                                                         info.flops)})
    elif info.op_class in (OpClass.MATMUL, OpClass.CONV, OpClass.ATTENTION) and spec.matmul_curve:
        spec = dataclasses.replace(spec, matmul_flops={dtype: matmul_rate(spec, dtype, info.flops)})
    t = roofline_seconds(info.flops, info.bytes_read + info.bytes_written, info.op_class, dtype,
                         spec)
    draws = (getattr(info, "extra", None) or {}).get("draws", 0)
    if draws and spec.random_rate > 0:
        t += draws / spec.random_rate
    return t if t > 0 else spec.launch_seconds
