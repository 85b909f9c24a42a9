"""``graphopt fuse MODEL [-o DIR]``: plan kernel fusion and write the generated Triton sources.

Writes ``DIR/fusion.json`` (schema ``graphopt.fusion/1``) and one standalone Triton module per
kernel under ``DIR/kernels/`` (``DIR`` defaults to ``out``); prints a summary table (or JSON with
``--format json``). The device's bandwidth and launch overhead decide which fusions pay.
"""
from __future__ import annotations

import json
import sys

from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    device_from,
    load_and_capture,
    output_dir,
    print_json,
    progress_from,
)
from graphopt.errors import GraphoptError, first_line


def register(sub) -> None:
    p = sub.add_parser("fuse", description="Capture MODEL, lower norms/softmax/GELU to "
                       "pointwise and reduction ops, group them into kernels, and write "
                       "DIR/fusion.json and DIR/kernels/<kernel>.py (standalone Triton modules).")
    add_model_args(p)
    add_out_arg(p, "fusion.json and kernels/<kernel>.py")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="summary on stdout: table for people (default), json for scripts")
    p.add_argument("--max-ops", type=int, default=64, help="most ops in one kernel (default 64)")
    p.add_argument("--check-compile", action="store_true",
                   help="also compile every kernel ahead of time for Hopper (sm_90); needs no "
                   "GPU (default: off)")
    add_device_args(p, default="h100", prices="memory traffic and kernel launches when "
                    "deciding whether a fusion pays")
    p.set_defaults(func=run)


def _print_table(data: dict, directory: str) -> None:
    from rich.console import Console
    from rich.table import Table
    s = data["summary"]
    console = Console(file=sys.stdout, soft_wrap=True)
    t = Table(title=f"graphopt fuse {data['model']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    rows = [("graph ops", f"{s['graph_ops']:,}"), ("kernels", f"{s['kernels']:,}"),
            ("ops in kernels", f"{s['fused_ops']:,}"), ("ops left to ATen", f"{s['aten_ops']:,}"),
            ("bytes unfused", f"{s['bytes_unfused']:,}"), ("bytes fused", f"{s['bytes_fused']:,}"),
            ("bytes fused / unfused", f"{s['bytes_ratio']:.3f}"),
            ("written to", f"{directory}/fusion.json")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    k = Table(title="kernels")
    for col in ("kernel", "kind", "ops", "shape", "bytes"):
        k.add_column(col, justify="right" if col in ("ops", "bytes") else "left")
    for kern in data["kernels"][:30]:
        k.add_row(kern["name"], kern["kind"], str(len(kern["nodes"])),
                  "x".join(map(str, kern["shape"])),
                  f"{kern['bytes_read'] + kern['bytes_written']:,}")
    if len(data["kernels"]) > 30:
        k.add_row(f"... {len(data['kernels']) - 30} more", "", "", "", "")
    console.print(k)
    if s["rejected"]:
        console.print("refused fusions by reason: " + ", ".join(
            f"{r} {n}" for r, n in sorted(s["rejected"].items(), key=lambda kv: -kv[1])),
            style="dim")


def run(args) -> int:
    if args.max_ops < 1:
        raise GraphoptError(f"--max-ops must be at least 1, got {args.max_ops}")
    from graphopt.pass_lists import FUSION, run_pipeline
    from graphopt.passes import PassContext
    device = device_from(args)
    try:
        from graphopt.kernels import kernel_sources
        from graphopt.kernels.report import write_fusion_dir
    except ImportError as exc:
        raise GraphoptError(f"graphopt fuse needs Triton ({exc}): pip install triton") from exc
    progress = progress_from(args)
    with output_dir(args.out) as out:
        _, graph = load_and_capture(args, progress)
        ctx = PassContext(options={"fuse_max_ops": args.max_ops}, seed=args.seed, device=device)
        with progress.step("fusing"):
            graph = run_pipeline(graph, FUSION, ctx)
            plan = ctx.artifacts["fusion"]
        with progress.step(f"generating {len(plan.groups)} kernels"):
            sources = kernel_sources(graph, plan)
        if args.check_compile:
            _compile_all(sources, progress)
        path = write_fusion_dir(out, args.model, plan, sources)
    data = json.loads(path.read_text())
    if args.format == "json":
        print_json(data)
    else:
        _print_table(data, args.out)
    return 0


def _compile_all(sources: dict[str, str], progress) -> None:
    from graphopt.kernels.aot import compile_for_target
    with progress.step("compiling for sm_90"):
        for name, text in sources.items():
            try:
                compile_for_target(text)
            except Exception as exc:  # noqa: BLE001 - report which kernel, then fail
                raise GraphoptError(f"kernel {name} does not compile for sm_90: "
                                    f"{type(exc).__name__}: {first_line(exc, 200)}") from exc
