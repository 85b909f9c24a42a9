"""Shipped device and link presets (datasheet peaks), and the link each device defaults to.

Torch-free, so argparse choices are built from :data:`DEVICES` and :data:`LINKS` without importing
torch. A measured device (``graphopt calibrate``) is never added here: it travels as a
:class:`~graphopt.costmodel.target.Target` value.
"""
from __future__ import annotations

from graphopt.costmodel.device import DeviceSpec, LinkSpec

__all__ = ["DEVICES", "LINKS", "get_device", "get_link", "default_link", "DEFAULT_LINK"]

# Dense (no sparsity) datasheet peaks.
DEVICES = {
    "h100": DeviceSpec("NVIDIA H100 SXM", {"float32": 494.7e12 / 2, "tf32": 494.7e12,
                                           "bfloat16": 989.4e12, "float16": 989.4e12},
                       vector_flops=66.9e12, bandwidth=3.35e12, memory=80 * 2**30,
                       launch_seconds=3e-6),
    "a100": DeviceSpec("NVIDIA A100 SXM 80GB", {"float32": 156e12 / 2, "tf32": 156e12,
                                                "bfloat16": 312e12, "float16": 312e12},
                       vector_flops=19.5e12, bandwidth=2.039e12, memory=80 * 2**30,
                       launch_seconds=3e-6),
    "cpu": DeviceSpec("generic 16-core AVX-512 CPU", {"float32": 1.5e12, "bfloat16": 3e12},
                      vector_flops=1.5e12, bandwidth=100e9, memory=64 * 2**30),
}
LINKS = {
    "nvlink4": LinkSpec("NVLink 4 (H100, per direction)", alpha=2e-6, beta=450e9),
    "nvlink3": LinkSpec("NVLink 3 (A100, per direction)", alpha=2e-6, beta=300e9),
    "pcie4": LinkSpec("PCIe 4.0 x16", alpha=5e-6, beta=25e9),
    "ethernet100": LinkSpec("100 Gb/s Ethernet", alpha=20e-6, beta=12.5e9),
    "loopback": LinkSpec("gloo over loopback (one host)", alpha=30e-6, beta=5e9),
}
#: The link between two devices of a preset, when none is named.
DEFAULT_LINK = {"h100": "nvlink4", "a100": "nvlink3", "cpu": "loopback"}


def default_link(device) -> str:
    """The preset link key a device's ranks talk over by default (``pcie4`` for others)."""
    return DEFAULT_LINK.get(str(device).lower(), "pcie4")


def get_device(name_or_spec) -> DeviceSpec:
    if isinstance(name_or_spec, DeviceSpec):
        return name_or_spec
    try:
        return DEVICES[str(name_or_spec).lower()]
    except KeyError:
        raise ValueError(f"unknown device {name_or_spec!r}; known: {', '.join(DEVICES)}") from None


def get_link(name_or_spec) -> LinkSpec:
    if isinstance(name_or_spec, LinkSpec):
        return name_or_spec
    try:
        return LINKS[str(name_or_spec).lower()]
    except KeyError:
        raise ValueError(f"unknown link {name_or_spec!r}; known: {', '.join(LINKS)}") from None
