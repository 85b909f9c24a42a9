"""``device.json`` (schema ``graphopt.device/1``): what ``graphopt calibrate`` measured on a machine.

The presets in :mod:`graphopt.costmodel.presets` are datasheet guesses; on a small CPU they are
off by an order of magnitude or more (peak FLOP/s of a 16-core part, no dispatch overhead, a
made-up loopback link).
A device file replaces them with numbers measured on the machine the work will run on, so every
estimate (stage times, pipeline bubbles, all-reduce time) starts from rates that were observed.

Layout (every rate in SI units; ``beta`` is seconds per byte, the inverse of a bandwidth)::

    {"schema": "graphopt.device/1", "device_type": "cpu", "name": "...",
     "machine": {"hostname", "cpu_model", "cores", "threads_per_process", "torch_version",
                 "gpu_model", "memory_bytes", "world_size"},
     "compute": {"matmul": {"float32": {"best_flops_per_s": 0.0,
                                         "sizes": [{"n": 256, "flops": 0, "seconds": 0.0,
                                                    "flops_per_s": 0.0}]}},
                 "vector_flops_per_s": 0.0},
     "memory": {"bandwidth_bytes_per_s": 0.0, "copy_bytes_per_s": 0.0, "add_bytes_per_s": 0.0},
     "overhead": {"op_seconds": 0.0, "view_seconds": 0.0},
     "links": {"p2p": {"backend": "gloo", "world_size": 2, "alpha_s": 0.0, "beta_s_per_byte": 0.0,
                       "fit_rel_err_max": 0.0, "fit_rel_err_rms": 0.0,
                       "samples": [{"bytes": 1024, "seconds": 0.0}]},
               "allreduce": {... the same, plus "ring_alpha_s", "ring_beta_s_per_byte"}},
     "calibration": {"seconds": 0.0, "quick": false}}

``links.allreduce`` fits the measured all-reduce time ``T(m) = alpha + beta·m`` directly, and also
gives the per-hop ring parameters that reproduce it through ``T = 2(n−1)(α + (m/n)β)``: that form is
what extrapolates to other world sizes.

Example:
    >>> spec = load_device_spec("device.json")      # a graphopt.costmodel.DeviceSpec
    >>> spec.matmul_peak("float32"), spec.launch_seconds, spec.p2p_link.seconds(1 << 20)
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from graphopt.costmodel.device import DeviceSpec, LinkSpec
from graphopt.errors import GraphoptError

__all__ = ["SCHEMA", "DeviceSpecError", "load_device_spec", "save_device_spec", "spec_from_dict",
           "validate_device_doc", "current_device_type"]

SCHEMA = "graphopt.device/1"
DEVICE_TYPES = ("cpu", "cuda")


class DeviceSpecError(GraphoptError):
    """A device file that cannot be read, is malformed, or was measured on another kind of device."""


def current_device_type() -> str:
    """``cuda`` when this process can use a GPU, else ``cpu``: the kind of device runs use here."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _get(doc: dict, path: str, where: str):
    cur = doc
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise DeviceSpecError(f"{where}: missing field {path!r} (re-run `graphopt calibrate`)")
        cur = cur[key]
    return cur


def _positive(doc: dict, path: str, where: str, *, allow_zero: bool = False) -> float:
    value = _get(doc, path, where)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise DeviceSpecError(f"{where}: field {path!r} must be {want}, got {value!r}")
    return float(value)


def _link_fields(doc: dict, kind: str, where: str) -> None:
    base = f"links.{kind}"
    _positive(doc, f"{base}.alpha_s", where)
    _positive(doc, f"{base}.beta_s_per_byte", where)
    world = _get(doc, f"{base}.world_size", where)
    if not isinstance(world, int) or isinstance(world, bool) or world < 2:
        raise DeviceSpecError(f"{where}: field '{base}.world_size' must be an integer >= 2, "
                              f"got {world!r}")
    if kind == "allreduce":
        _positive(doc, f"{base}.ring_alpha_s", where)
        _positive(doc, f"{base}.ring_beta_s_per_byte", where)


def validate_device_doc(doc, where: str = "device spec") -> dict:
    """Check a parsed device document; raises :class:`DeviceSpecError` naming the first bad field."""
    if not isinstance(doc, dict):
        raise DeviceSpecError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA:
        raise DeviceSpecError(f"{where}: schema is {doc.get('schema')!r}, expected {SCHEMA!r} "
                              "(a file written by `graphopt calibrate`)")
    dtype = _get(doc, "device_type", where)
    if dtype not in DEVICE_TYPES:
        raise DeviceSpecError(f"{where}: device_type must be one of {', '.join(DEVICE_TYPES)}, "
                              f"got {dtype!r}")
    matmul = _get(doc, "compute.matmul", where)
    if not isinstance(matmul, dict) or "float32" not in matmul:
        raise DeviceSpecError(f"{where}: compute.matmul must hold at least 'float32'")
    for name in matmul:
        _positive(doc, f"compute.matmul.{name}.best_flops_per_s", where)
        sizes = _get(doc, f"compute.matmul.{name}.sizes", where)
        if not isinstance(sizes, list):
            raise DeviceSpecError(f"{where}: compute.matmul.{name}.sizes must be a list")
        for i, row in enumerate(sizes):
            for key in ("flops", "flops_per_s"):
                _positive({"row": row}, f"row.{key}", f"{where}: compute.matmul.{name}.sizes[{i}]")
    _positive(doc, "compute.vector_flops_per_s", where)
    # Optional (older files lack them): the attention op's curve and dropout's draw rate.
    attention = doc["compute"].get("attention")
    if attention is not None:
        if not isinstance(attention, dict):
            raise DeviceSpecError(f"{where}: compute.attention must be an object")
        for name in attention:
            sizes = _get(doc, f"compute.attention.{name}.sizes", where)
            if not isinstance(sizes, list):
                raise DeviceSpecError(f"{where}: compute.attention.{name}.sizes must be a list")
            for i, row in enumerate(sizes):
                for key in ("flops", "flops_per_s"):
                    _positive({"row": row}, f"row.{key}",
                              f"{where}: compute.attention.{name}.sizes[{i}]")
    if "random_elements_per_s" in doc["compute"]:
        _positive(doc, "compute.random_elements_per_s", where)
    _positive(doc, "memory.bandwidth_bytes_per_s", where)
    _positive(doc, "overhead.op_seconds", where, allow_zero=True)
    _positive(doc, "overhead.view_seconds", where, allow_zero=True)
    links = _get(doc, "links", where)
    if not isinstance(links, dict):
        raise DeviceSpecError(f"{where}: links must be an object")
    for kind in ("p2p", "allreduce"):
        if links.get(kind) is not None:
            _link_fields(doc, kind, where)
    return doc


def spec_from_dict(doc: dict, where: str = "device spec") -> DeviceSpec:
    """The :class:`~graphopt.costmodel.device.DeviceSpec` a validated document describes."""
    validate_device_doc(doc, where)
    matmul = doc["compute"]["matmul"]
    peaks = {name: float(m["best_flops_per_s"]) for name, m in matmul.items()}
    curve = {name: tuple(sorted((float(r["flops"]), float(r["flops_per_s"])) for r in m["sizes"]))
             for name, m in matmul.items() if m["sizes"]}
    links = doc["links"]
    p2p = ar = None
    if links.get("p2p") is not None:
        lk = links["p2p"]
        p2p = LinkSpec(f"measured p2p ({lk.get('backend', '?')}, {lk['world_size']} processes)",
                       alpha=float(lk["alpha_s"]), beta=1.0 / float(lk["beta_s_per_byte"]))
    if links.get("allreduce") is not None:
        lk = links["allreduce"]
        ar = LinkSpec(f"measured ring all-reduce hop ({lk.get('backend', '?')}, "
                      f"{lk['world_size']} processes)",
                      alpha=float(lk["ring_alpha_s"]), beta=1.0 / float(lk["ring_beta_s_per_byte"]))
    machine = doc.get("machine") or {}
    memory = machine.get("memory_bytes")
    compute = doc["compute"]
    attention = ((compute.get("attention") or {}).get("float32") or {}).get("sizes") or []
    random_rate = compute.get("random_elements_per_s")
    created = str((doc.get("calibration") or {}).get("created") or "")[:10]
    return DeviceSpec(
        name=str(doc.get("name") or f"calibrated {doc['device_type']}"),
        matmul_flops=peaks, vector_flops=float(doc["compute"]["vector_flops_per_s"]),
        bandwidth=float(doc["memory"]["bandwidth_bytes_per_s"]),
        memory=int(memory) if isinstance(memory, (int, float)) and memory > 0 else 16 * 2**30,
        launch_seconds=float(doc["overhead"]["op_seconds"]),
        view_seconds=float(doc["overhead"]["view_seconds"]), matmul_curve=curve,
        p2p_link=p2p, allreduce_link=ar, device_type=doc["device_type"],
        attention_curve=tuple(sorted((float(r["flops"]), float(r["flops_per_s"]))
                                     for r in attention)),
        random_rate=float(random_rate) if isinstance(random_rate, (int, float)) else 0.0,
        calibrated=created or "date unknown")


def load_device_spec(path, *, device_type: str | None = None) -> DeviceSpec:
    """Read a ``device.json`` into a :class:`~graphopt.costmodel.device.DeviceSpec` (links included).

    Args:
        path: the file ``graphopt calibrate`` wrote.
        device_type: the kind of device the run uses (``cpu``/``cuda``); default: this process's.
            A file measured on the other kind is refused: its rates would be wrong by orders of
            magnitude without any sign of it.

    Raises:
        DeviceSpecError: unreadable, not JSON, a missing or invalid field, or the wrong device type.

    Example:
        >>> spec = load_device_spec("device.json")
        >>> spec.p2p_link.alpha, spec.allreduce_link.beta
    """
    where = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DeviceSpecError(f"{where}: cannot read the device spec ({exc.strerror or exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeviceSpecError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    spec = spec_from_dict(doc, where)
    want = device_type or current_device_type()
    if spec.device_type != want:
        raise DeviceSpecError(f"{where}: measured on a {spec.device_type} device but this run uses "
                              f"{want}; run `graphopt calibrate` on the machine you run on")
    return spec


def save_device_spec(doc: dict, path) -> Path:
    """Validate ``doc`` and write it as ``path`` (parent folders made); returns the path."""
    validate_device_doc(doc, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
