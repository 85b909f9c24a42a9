"""``graphopt calibrate [--world N] [-o device.json]``: measure this machine into a device spec.

Matmul FLOP/s per dtype at several sizes, memory bandwidth, per-op overhead, and the p2p and
all-reduce alpha/beta of the link between N processes on this host (gloo on CPU, NCCL with a GPU
per process). The measurement is cached per machine (hostname, CPU, torch version, device type,
world size), so a second run only copies the cached file; ``--force`` measures again. Every
command that estimates time takes the file through ``--device-spec FILE``.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from graphopt.errors import GraphoptError
from graphopt.progress import Progress

ORDER = 60


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="measure this machine (compute, bandwidth, overhead, "
                       "links) into device.json",
                       description="Measure matmul FLOP/s, memory bandwidth, per-op overhead and "
                       "the p2p / all-reduce alpha-beta of N processes on this host, and write a "
                       "device spec (schema graphopt.device/1) for --device-spec.")
    p.add_argument("--world", type=int, default=2, help="processes measured at once, sharing "
                   "the host as a training run would (default 2; 1 measures compute only)")
    p.add_argument("-o", "--out", "--output", dest="output", default="device.json", metavar="FILE",
                   help="where to write the spec (default device.json)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="device to measure (default auto: cuda when available)")
    p.add_argument("--force", action="store_true", help="measure again even if this machine's "
                   "result is cached")
    p.add_argument("--quick", action="store_true", help="3 link sizes and few repeats: a smoke "
                   "test of the measurement, not a calibration to plan with")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="limit for the whole measurement (default 300)")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="summary on stdout: table for people (default), json for scripts")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--progress", action="store_true", help="progress lines on stderr even when "
                   "it is not a terminal")
    p.set_defaults(func=run)


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.1f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def summary_lines(doc: dict) -> list[str]:
    """The spec for people: one line per measured quantity."""
    m = doc["machine"]
    lines = [f"device: {doc['name']} [{doc['device_type']}], torch {m['torch_version']}, "
             f"{m['cores']} cores"]
    for name, mm in doc["compute"]["matmul"].items():
        sizes = ", ".join(f"{r['n']}: {r['flops_per_s'] / 1e9:.1f}" for r in mm["sizes"])
        lines.append(f"matmul {name}: best {_si(mm['best_flops_per_s'], 'FLOP/s')} "
                     f"(GFLOP/s by size {sizes})")
    mem, ov = doc["memory"], doc["overhead"]
    lines.append(f"memory bandwidth: {_si(mem['bandwidth_bytes_per_s'], 'B/s')} (add), "
                 f"{_si(mem['copy_bytes_per_s'], 'B/s')} (copy); pointwise "
                 f"{_si(doc['compute']['vector_flops_per_s'], 'FLOP/s')}")
    lines.append(f"per-op overhead: {ov['op_seconds'] * 1e6:.2f} us an op, "
                 f"{ov['view_seconds'] * 1e6:.2f} us a view")
    attention = ((doc["compute"].get("attention") or {}).get("float32") or {}).get("sizes")
    if attention:
        lines.append("attention (fused op, causal): GFLOP/s by (batch x heads, tokens, head dim) "
                     + ", ".join(f"{tuple(r['shape'])}: {r['flops_per_s'] / 1e9:.1f}"
                                 for r in attention))
    if doc["compute"].get("random_elements_per_s"):
        lines.append(f"random draws (dropout): "
                     f"{_si(doc['compute']['random_elements_per_s'], 'elements/s')}")
    load = m.get("load_average")
    if isinstance(load, (int, float)) and load > m["cores"]:
        lines.append(f"note: load average {load:g} on {m['cores']} cores while measuring; these are "
                     "the rates of a busy machine (--force to measure again when it is quiet)")
    for kind in ("p2p", "allreduce"):
        lk = doc["links"].get(kind)
        if lk is None:
            lines.append(f"{kind}: not measured (--world 1)")
            continue
        extra = (f"; ring hop alpha {lk['ring_alpha_s'] * 1e6:.1f} us, beta "
                 f"{lk['ring_beta_s_per_byte'] * 1e9:.3f} ns/B") if kind == "allreduce" else ""
        lines.append(f"{kind} ({lk['backend']}, {lk['world_size']} processes): alpha "
                     f"{lk['alpha_s'] * 1e6:.1f} us, beta {lk['beta_s_per_byte'] * 1e9:.3f} ns/B "
                     f"({_si(1 / lk['beta_s_per_byte'], 'B/s')}); fit error max "
                     f"{lk['fit_rel_err_max']:.0%}, rms {lk['fit_rel_err_rms']:.0%}{extra}")
        if lk["fit_rel_err_max"] > 0.5:
            lines.append(f"note: {kind} times scatter far from a line (max fit error "
                         f"{lk['fit_rel_err_max']:.0%}): a busy host; its alpha/beta are rough")
    return lines


def run(args) -> int:
    from graphopt.costmodel.calibrate import cache_path, calibrate
    from graphopt.costmodel.device_file import load_device_spec, save_device_spec
    if args.world < 1:
        raise GraphoptError(f"--world must be at least 1, got {args.world}")
    if args.timeout <= 0:
        raise GraphoptError(f"--timeout must be positive, got {args.timeout:g}")
    device = None if args.device == "auto" else args.device
    if device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise GraphoptError("--device cuda: torch sees no CUDA device on this machine")
    progress = Progress(False if args.quiet else (True if args.progress else None))
    cached = cache_path(args.world, quick=args.quick, device=device)
    out = Path(args.output)
    doc = None
    if cached.exists() and not args.force:
        try:
            load_device_spec(cached, device_type=device)
            doc = json.loads(cached.read_text())
            progress.info(f"using this machine's cached calibration {cached} (--force to measure "
                          "again)")
        except GraphoptError as exc:
            progress.info(f"ignoring a bad cached calibration ({exc}); measuring again")
    if doc is None:
        with progress.step(f"calibrating with {args.world} process{'es' * (args.world > 1)}"):
            doc = calibrate(args.world, quick=args.quick, progress=progress.enabled,
                            device=device, timeout_s=args.timeout)
        save_device_spec(doc, cached)
    if out.resolve() != cached.resolve():
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, out)
    if args.format == "json":
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print("\n".join(summary_lines(doc)))
        print(f"wrote {out}")
    return 0
