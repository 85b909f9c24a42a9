"""What every command shares: the model options and their loading, ``-o/--out``, the device.

One place for each so that the commands agree: a model spec is loaded and captured by
:func:`load_and_capture` alone, every command that writes files takes ``-o/--out DIR``
(default ``out``) through :func:`add_out_arg` and creates it through :func:`output_dir`, and
every command that prices work on a device takes ``--device`` / ``--device-spec`` through
:func:`add_device_args`. Sizes are read by :mod:`graphopt.units`.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from graphopt.errors import GraphoptError, OutputError, SpecError, first_line
from graphopt.progress import Progress

if TYPE_CHECKING:  # the CLI's top imports nothing heavy; these are imported where they run
    from graphopt.costmodel.device import DeviceSpec
    from graphopt.graph import Graph
    from graphopt.specs import LoadedModel

__all__ = ["add_model_args", "add_out_arg", "add_device_args", "device_from", "calibrated_link",
           "load_model", "load_and_capture", "capture_loaded", "output_dir", "progress_from", "print_json",
           "positive_int", "non_negative_int", "non_negative_float", "preset_names",
           "CAPTURE_MODES", "DEFAULT_OUT"]

DEFAULT_OUT = "out"
# graphopt.capture.MODES, written out so that --capture's choices need no torch (a test keeps
# the two equal)
CAPTURE_MODES = ("auto", "export", "dynamo", "symbolic_trace")


@functools.cache
def preset_names() -> tuple[frozenset, frozenset]:
    """The shipped device and link preset names (torch-free: argparse choices are built from
    them), read before any calibrated spec is registered beside them."""
    from graphopt.costmodel.presets import DEVICES, LINKS
    return frozenset(DEVICES), frozenset(LINKS)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch, a length, a count)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed, a row count)."""
    return _int_at_least(text, 0, "an integer >= 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a tolerance, a fraction)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="model spec: file.py:factory, module:factory, "
                   "zoo:NAME or hf:ClassName")
    g = p.add_argument_group("model building")
    g.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a transformers config field of an hf: spec (repeatable), "
                   "e.g. --set n_layer=2; VALUE is a Python literal (2, 0.1, [1,2], True), "
                   "else text")
    g.add_argument("--batch", type=positive_int, default=1, help="batch size of synthesized "
                   "hf inputs (default 1)")
    g.add_argument("--seq", type=positive_int, default=128, help="sequence length in tokens of "
                   "synthesized hf token inputs (default 128)")
    g.add_argument("--image-size", type=positive_int, default=None, metavar="PIXELS",
                   help="image side in pixels of synthesized hf pixel inputs (default: the "
                   "config's, else 224)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed for weights, inputs "
                   "and any randomized algorithm (default 0)")
    g.add_argument("--capture", choices=CAPTURE_MODES, default="auto", help="capture mode (default auto: "
                   "torch.export, then TorchDynamo, then symbolic_trace)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr (default: "
                   "progress when stderr is a terminal)")
    g.add_argument("--progress", action="store_true", help="progress lines on stderr even when "
                   "it is not a terminal")


def add_out_arg(p: argparse.ArgumentParser, writes: str) -> None:
    """``-o/--out DIR``, the same on every command that writes files; ``writes`` says what."""
    p.add_argument("-o", "--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output directory for {writes}; created if missing (default "
                   f"{DEFAULT_OUT})")
    # the spelling `graphopt fuse` once used, still read so that old scripts keep working
    p.add_argument("--output", dest="out", help=argparse.SUPPRESS)


def add_device_args(p: argparse.ArgumentParser, *, default: str, prices: str) -> None:
    """``--device NAME`` (a shipped preset) and ``--device-spec FILE`` (a calibrated one)."""
    devices, _ = preset_names()
    g = p.add_argument_group("device cost model")
    g.add_argument("--device", choices=sorted(devices), default=default,
                   help=f"device preset whose roofline prices {prices} (default {default})")
    g.add_argument("--device-spec", default=None, metavar="FILE",
                   help="a device.json measured by `graphopt calibrate` (schema "
                   "graphopt.device/1), used instead of --device (and, for transfers, its "
                   "measured p2p link unless --link is given)")


def device_from(args):
    """The cost model every estimate of the command uses, as a value: the ``--device`` preset,
    or the ``--device-spec`` file (with its measured links), over ``--link`` when the command
    has one. Read once per command. Nothing is registered in the preset tables.

    Returns:
        a :class:`graphopt.costmodel.CostModel`; ``.describe()`` names what it prices for.
    """
    cached = getattr(args, "_cost_model", None)
    if cached is not None:
        return cached
    from graphopt.costmodel.target import CostModel, Target
    link = getattr(args, "link", None)
    path = getattr(args, "device_spec", None)
    if path is None:
        target = Target.preset(args.device, link)
    else:
        spec = _load_device_spec(path)
        key = (spec.name or Path(path).stem).strip().lower()   # what documents record
        target = Target.from_spec(spec, key=key, link=link)
    args._cost_model = CostModel(target)
    return args._cost_model


def calibrated_link(args) -> None:
    """Kept for callers that pass a link key beside the device: the cost model from
    :func:`device_from` already carries ``--device-spec``'s measured link, so none is added."""
    return None


def preset_note(args) -> str | None:
    """One line where a run on this host (CPU ranks) is priced with a preset: the estimate is
    then a datasheet's, and ``graphopt calibrate`` measures this machine. None otherwise."""
    if getattr(args, "device_spec", None) is not None:
        return None
    cm = device_from(args)
    return (f"note: the estimate prices {cm.describe()} for a run on this host; `graphopt "
            "calibrate` measures this machine, and --device-spec FILE uses it")


def _load_device_spec(path: str) -> DeviceSpec:
    from graphopt.costmodel.device import DeviceSpec
    if not Path(path).is_file():
        raise SpecError(f"--device-spec {path}: no such file (make one with graphopt calibrate)")
    from graphopt.costmodel.device_file import load_device_spec
    try:
        spec = load_device_spec(path)
    except GraphoptError as exc:
        raise SpecError(f"--device-spec: {exc}") from exc
    except (OSError, ValueError) as exc:  # unreadable or malformed JSON: the file, not a bug
        raise SpecError(f"--device-spec {path}: cannot read it: {type(exc).__name__}: "
                        f"{first_line(exc)}") from exc
    if not isinstance(spec, DeviceSpec):
        raise SpecError(f"--device-spec {path}: read a {type(spec).__name__}, not a device spec")
    return spec


def progress_from(args) -> Progress:
    return Progress(False if args.quiet else (True if args.progress else None))


def capture_loaded(args, loaded: LoadedModel, progress: Progress) -> Graph:
    """Capture an already loaded model the way ``--capture`` asks."""
    from graphopt.capture import capture
    with progress.step(f"capturing {args.model}"):
        return capture(loaded.model, loaded.inputs, loaded.kwargs or None, mode=args.capture,
                       name=args.model)


def load_model(args, progress: Progress | None = None) -> LoadedModel:
    """Load ``args.model`` with the model-building options (``--set``, ``--batch``, ...)."""
    from graphopt.specs import load_spec, parse_overrides
    progress = progress or progress_from(args)
    with progress.step(f"loading {args.model}"):
        return load_spec(args.model, overrides=parse_overrides(args.overrides), batch=args.batch,
                         seq=args.seq, image_size=args.image_size, seed=args.seed)


def load_and_capture(args, progress: Progress | None = None, *,
                     train: bool = False) -> tuple[LoadedModel, Graph]:
    """Load ``args.model`` with the model-building options and capture it.

    Every command goes through here, so a spec means the same model everywhere. ``train``
    captures the model in training mode (dropout, batch-norm statistics as in a real step).

    Returns:
        ``(loaded, graph)``: ``loaded.model``, ``loaded.inputs``, ``loaded.kwargs`` and the
        captured :class:`~graphopt.graph.Graph`.
    """
    progress = progress or progress_from(args)
    loaded = load_model(args, progress)
    if train:
        loaded.model.train()
    return loaded, capture_loaded(args, loaded, progress)


@contextlib.contextmanager
def output_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Create the output directory up front and keep a failed run from leaving it half-written.

    An ``-o`` that cannot be created or written fails at once, before a minute of capture. If
    the command then fails, a directory this run created is removed with what was written into
    it; in a directory that existed, every file is written atomically (whole or not at all). An
    ``OSError`` on a path inside the directory becomes an :class:`OutputError` (one line, exit 2).
    """
    out = Path(path)
    created = _create(out)
    try:
        _check_writable(out)
        yield out
    except OSError as exc:
        _remove(created)
        if exc.filename is not None and _inside(Path(str(exc.filename)), out):
            raise OutputError(f"-o {path}: cannot write {exc.filename}: "
                              f"{exc.strerror or first_line(exc)}") from exc
        raise
    except BaseException:
        _remove(created)
        raise


def _create(out: Path) -> Path | None:
    """mkdir -p ``out``; returns the top-most directory it created (None when it existed)."""
    if out.is_dir():
        return None
    if out.exists():
        raise OutputError(f"-o {out}: exists and is not a directory")
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"-o {out}: cannot create the output directory: "
                          f"{exc.strerror or first_line(exc)}") from None
    return top


def _check_writable(out: Path) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".graphopt-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"-o {out}: cannot write into the output directory: "
                          f"{exc.strerror or first_line(exc)}") from None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def _remove(created: Path | None) -> None:
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


def print_json(data) -> None:
    """``--format json``: the report on stdout, one JSON document, for scripts."""
    import json
    import sys
    json.dump(data, sys.stdout, indent=1)
    sys.stdout.write("\n")


def json_safe(x):
    """JSON has no infinity or NaN: a number that is not finite is written as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
