"""What estimates are priced for (:class:`Target`) and the one object that prices them
(:class:`CostModel`).

A :class:`Target` is a device spec and its links, passed as a value from the CLI down (never
registered in a global table): a preset (``Target.preset("h100")``) or a device file measured by
``graphopt calibrate`` (``Target.from_spec(load_device_spec(path))``). Its ``label`` names it in
every printed estimate: "H100 SXM + NVLink 4, preset" or "this host, calibrated 2026-12-08".

A :class:`CostModel` answers every cost question the partitioner, remat, the planner and the
training estimate ask: node forward and backward seconds (the calibrated roofline of
:mod:`graphopt.costmodel.node_time`), link and collective seconds, the optimizer step's time and
state, and the memory a device has.

Example:
    >>> cm = CostModel(Target.preset("h100"))
    >>> cm.describe(), cm.link_seconds(1 << 20), cm.allreduce_seconds(1 << 20, 4)
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from graphopt.costmodel.collectives import ring_allreduce_seconds
from graphopt.costmodel.device import DeviceSpec, LinkSpec
from graphopt.costmodel.node_time import node_seconds
from graphopt.costmodel.optimizer import optimizer_seconds, state_factor
from graphopt.costmodel.presets import DEVICES, default_link, get_device, get_link

__all__ = ["Target", "CostModel", "as_cost_model", "monotone_rates", "short_name"]


def short_name(name: str) -> str:
    """A spec or link name without its vendor and notes: "NVIDIA H100 SXM" -> "H100 SXM"."""
    name = re.sub(r"\s*\(.*?\)", "", name).strip()
    return name[len("NVIDIA "):] if name.startswith("NVIDIA ") else name


def monotone_rates(spec: DeviceSpec) -> DeviceSpec:
    """``spec`` with each measured matmul curve made non-decreasing in size.

    A larger matmul is not less efficient per FLOP than a smaller one on the same device; a
    measured curve that dips with size (a busy host stole the core during one size) would make
    every larger micro-batch look slower than it runs. Presets (no curve) are returned as is.
    """
    if not spec.matmul_curve:
        return spec
    curves = {}
    for dtype, points in spec.matmul_curve.items():
        best, out = 0.0, []
        for flops, rate in sorted(points):
            best = max(best, rate)
            out.append((flops, best))
        curves[dtype] = tuple(out)
    return dataclasses.replace(spec, matmul_curve=curves)


@dataclass(frozen=True)
class Target:
    """A device and its links: ``intra`` between the ranks of one pipeline or host, ``inter``
    between hosts (None: the same as ``intra``); ``key`` the preset's key or the device file's
    name (what documents record); ``label`` what printed estimates name."""

    device: DeviceSpec
    intra: LinkSpec
    inter: LinkSpec | None = None
    label: str = ""
    key: str = ""
    link_key: str = ""

    @classmethod
    def preset(cls, device: str = "h100", link: str | LinkSpec | None = None) -> Target:
        """A shipped preset, with its default link unless ``link`` (a key or a value) is given."""
        spec = get_device(device)
        lk = link if link is not None else default_link(device)
        ln = get_link(lk)
        return cls(device=spec, intra=ln, label=f"{short_name(spec.name)} + "
                   f"{short_name(ln.name)}, preset", key=str(device).lower(),
                   link_key=lk if isinstance(lk, str) else ln.name)

    @classmethod
    def from_spec(cls, spec: DeviceSpec, *, key: str = "",
                  link: str | LinkSpec | None = None) -> Target:
        """A measured spec (``graphopt calibrate``): its measured p2p link unless ``link``."""
        if link is not None:
            ln, lk = get_link(link), link if isinstance(link, str) else get_link(link).name
        elif spec.p2p_link is not None:
            ln, lk = spec.p2p_link, key or "measured"
        else:
            ln, lk = get_link("loopback"), "loopback"
        when = f"calibrated {spec.calibrated}" if spec.calibrated else "calibrated"
        who = "this host" if spec.device_type == "cpu" else short_name(spec.name)
        return cls(device=spec, intra=ln, label=f"{who}, {when}", key=key or spec.name,
                   link_key=lk)

    def with_link(self, link: str | LinkSpec | None) -> Target:
        """The same device over another link (None: unchanged)."""
        if link is None:
            return self
        if self.is_preset:
            return Target.preset(self.key, link)
        return Target.from_spec(self.device, key=self.key, link=link)

    @property
    def is_preset(self) -> bool:
        return self.key in DEVICES and DEVICES[self.key] is self.device

    @property
    def on_host_cpu(self) -> bool:
        """Whether the ranks are processes of one CPU host (a CPU spec, or the ``cpu`` preset):
        they share its memory and its cores, so no core is left to reduce gradients beside the
        backward."""
        return self.device.device_type == "cpu" or self.key == "cpu"

    @property
    def allreduce_link(self) -> LinkSpec:
        """The ring all-reduce's per-hop link: the measured one, else ``intra``."""
        return self.device.allreduce_link or self.intra


class CostModel:
    """Every cost the tools ask, for one :class:`Target` (module docstring)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.spec = monotone_rates(target.device)

    def __repr__(self) -> str:
        return f"CostModel({self.target.label!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CostModel) and other.target == self.target

    def __hash__(self) -> int:
        return hash(self.target)

    def describe(self) -> str:
        """What the estimates are priced for, e.g. "H100 SXM + NVLink 4, preset"."""
        return self.target.label

    # -- compute -----------------------------------------------------------------------------------
    def node_seconds(self, info) -> float:
        """One node's forward seconds: measured curves where the spec has them, else roofline."""
        return node_seconds(info, self.spec)

    def backward_seconds(self, info, factor: float) -> float:
        """One node's backward seconds: ``factor`` times its forward. The factor comes from
        :func:`graphopt.costmodel.backward.backward_factors`, which reads the op table and knows
        which operands of a matmul need a gradient (only the graph can say)."""
        return float(factor) * self.node_seconds(info)

    # -- communication -----------------------------------------------------------------------------
    @property
    def link(self) -> LinkSpec:
        return self.target.intra

    def link_seconds(self, nbytes: float) -> float:
        return self.target.intra.seconds(nbytes)

    def allreduce_seconds(self, nbytes: float, n: int) -> float:
        return ring_allreduce_seconds(nbytes, n, self.target.allreduce_link)

    # -- optimizer and memory ----------------------------------------------------------------------
    def optimizer_seconds(self, prof, stages: list[int], optimizer: str) -> float:
        return optimizer_seconds(prof, stages, self.spec, optimizer)

    def state_factor(self, optimizer: str, momentum: float = 0.0) -> float:
        return state_factor(optimizer, momentum)

    @property
    def memory(self) -> int:
        """Bytes of memory one device has."""
        return int(self.spec.memory)

    def memory_per_rank(self, ranks: int) -> int:
        """Memory per rank: the device's, or its share where the ranks share one CPU host."""
        return self.memory // max(ranks, 1) if self.target.on_host_cpu else self.memory


def as_cost_model(value, link: str | LinkSpec | None = None) -> CostModel:
    """A :class:`CostModel` from a cost model, a :class:`Target`, a :class:`DeviceSpec` or a
    preset key (``"h100"``); ``link`` overrides the target's link."""
    if isinstance(value, CostModel):
        return value if link is None else CostModel(value.target.with_link(link))
    if isinstance(value, Target):
        return CostModel(value.with_link(link))
    if isinstance(value, DeviceSpec):
        key = next((k for k, v in DEVICES.items() if v is value), "")
        target = Target.preset(key, link) if key else Target.from_spec(value, link=link)
        return CostModel(target)
    return CostModel(Target.preset(str(value if value is not None else "h100").lower(), link))
