"""``graphopt remat MODEL --budget B [--train] [-o DIR]``: a memory plan and its picture.

With ``--train`` the plan covers a whole training step (the joint forward+backward graph that
aot_autograd traces): which activations to save and which to recompute so that the activation
memory held for the backward pass fits the budget. Without it, the forward graph alone: its
liveness, peak and buffer-reuse arena (there is nothing to recompute). Writes
``DIR/memory.json`` (schema ``graphopt.memory/1``) and ``DIR/memory.png`` / ``.svg``: live memory
over the step before and after the plan. ``DIR`` defaults to ``out``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch.utils._pytree as pytree

from graphopt import units
from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    capture_loaded,
    device_from,
    load_and_capture,
    output_dir,
    print_json,
    progress_from,
)
from graphopt.errors import GraphoptError
from graphopt.export import write_atomic
from graphopt.memory.arena import plan_arena
from graphopt.memory.liveness import analyze
from graphopt.memory.plot import plot_live_memory
from graphopt.memory.remat.build import forward_region
from graphopt.memory.remat.problem import resolve_budget
from graphopt.memory.report import dumps, memory_report
from graphopt.pass_lists import TRAINING_JOINT, run_pipeline
from graphopt.passes import PassContext

ORDER = 40


def parse_budget(text: str) -> float | int:
    """``0.5`` -> fraction 0.5; ``123456`` -> bytes; ``512MiB``/``2GB`` -> bytes (see units)."""
    return units.parse_budget(text, option="--budget")


def register(sub) -> None:
    p = sub.add_parser("remat", help="memory plan: liveness, arena, remat under a budget",
                       description="Plan MODEL's memory. With --train: the training step's "
                       "activations are saved or recomputed so that what the backward pass "
                       "holds fits --budget; writes DIR/memory.json and a plot of live memory.")
    add_model_args(p)
    p.add_argument("--budget", required=True, metavar="B",
                   help="memory for the activations held for backward: a fraction in (0, 1] of "
                   "those held without paid recomputation (1.0: recompute only free pointwise "
                   "ops), written with a decimal point and no unit (0.5, 1.0); or bytes: an "
                   "integer (268435456) or with a unit, KB/MB/GB powers of 10, KiB/MiB/GiB "
                   "powers of 2 (512MiB, 1.5GB); a bare 1.5 is an error")
    p.add_argument("--train", action="store_true", help="plan the training step (forward and "
                   "backward), not the forward pass alone")
    add_out_arg(p, "memory.json and the memory plots")
    p.add_argument("--solver", choices=["auto", "greedy", "milp"], default="auto",
                   help="auto (default): the exact MILP on small graphs, the fast solver else")
    p.add_argument("--time-limit", type=float, default=10.0, metavar="SECONDS",
                   help="wall-clock seconds for the MILP (default 10); the gap it reached is "
                   "reported")
    add_device_args(p, default="h100", prices="recomputation")
    p.add_argument("--plot", default="png", help="plot formats, comma-separated: png, svg, "
                   "or none (default png)")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="summary on stdout: table (default) or json")
    p.set_defaults(func=run)


def _backward_start(graph) -> int:
    forward = forward_region(graph.gm)
    nodes = list(graph.fx_nodes())
    return next((i for i, n in enumerate(nodes) if n.op == "call_function"
                 and n.name not in forward), len(nodes))


def _plan_train(args, budget, device, progress):
    from graphopt.memory.joint import capture_joint
    notes = []
    loaded, graph = load_and_capture(args, progress, train=True)
    flat = pytree.tree_leaves((loaded.inputs, loaded.kwargs or {}))
    with progress.step("tracing the training step"):
        try:
            joint = capture_joint(graph, flat)
        except GraphoptError as exc:
            # Train-mode state updates (batch-norm running statistics) are in-place writes
            # aot_autograd cannot differentiate through once exported; plan the eval-mode step.
            loaded.model.eval()
            graph = capture_loaded(args, loaded, progress)
            joint = capture_joint(graph, flat)
            notes.append(f"planned the step with the model in eval mode: in train mode "
                         f"{str(exc).split(': ', 1)[-1][:160]}")
    before = analyze(joint.graph)
    start_before = _backward_start(joint.graph)
    ctx = PassContext(options={"memory_budget": budget, "num_fwd_outputs": joint.num_fwd_outputs,
                               "remat_solver": args.solver, "remat_time_limit": args.time_limit,
                               "remat_device": device}, seed=args.seed, device=device)
    with progress.step(f"planning under budget {args.budget}"):
        planned = run_pipeline(joint.graph, TRAINING_JOINT, ctx)
    plan = ctx.artifacts["memory"]
    data = memory_report(model=args.model, train=True, baseline=before, plan=plan.liveness,
                         arena=plan.arena, total_flops=planned.total_flops,
                         remat=ctx.artifacts.get("remat"), budget=budget)
    data["notes"].extend(notes)
    if "remat" not in ctx.artifacts:
        data["notes"].append("no activation is saved for the backward pass: nothing to plan")
    curves = {"no remat": before, f"budget {args.budget}": plan.liveness}
    bounds = {"no remat": start_before, f"budget {args.budget}": _backward_start(planned)}
    return data, curves, bounds


def _plan_inference(args, budget, device, progress):
    _, graph = load_and_capture(args, progress)
    lv = analyze(graph)
    arena = plan_arena(lv.buffers)
    data = memory_report(model=args.model, train=False, baseline=lv, plan=lv, arena=arena,
                         total_flops=graph.total_flops, budget=budget)
    data["budget_bytes"] = resolve_budget(budget, lv.peak)
    data["notes"].append("inference: nothing is saved for a backward pass, so nothing is "
                         "recomputed; the plan is the schedule's liveness and arena "
                         "(use --train to plan a training step)")
    if data["budget_bytes"] < lv.peak:
        data["notes"].append(f"the forward peak ({lv.peak:,} bytes) is above the budget")
    return data, {"forward": lv}, {}


def run(args) -> int:
    progress = progress_from(args)
    budget = parse_budget(args.budget)
    formats = [f.strip() for f in args.plot.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "none")]
    if bad:
        raise GraphoptError(f"--plot {args.plot}: unknown format(s) {', '.join(bad)}; "
                            "use png, svg or none")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise GraphoptError(f"--time-limit must be a positive number of seconds, got "
                            f"{args.time_limit:g}")
    device = device_from(args)
    with output_dir(args.out) as out:
        data, curves, bounds = (_plan_train if args.train else _plan_inference)(
            args, budget, device, progress)
        written = [write_atomic(out / "memory.json", dumps(data))]
        for fmt in formats:
            if fmt == "none":
                continue
            title = f"{args.model}: {'training step' if args.train else 'forward pass'}"
            with progress.step(f"plotting memory.{fmt}"):
                written.append(plot_live_memory(curves, out / f"memory.{fmt}", title=title,
                                                boundaries=bounds))
    if args.format == "json":
        print_json(data)
    else:
        _print_table(data, written)
    return 0


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.2f} MiB"


def _print_table(data: dict, written: list[Path]) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(file=sys.stdout, soft_wrap=True)
    t = Table(title=f"graphopt remat {data['model']}" + (" (training step)" if data["train"]
                                                         else " (forward)"))
    t.add_column("")
    t.add_column("no remat", justify="right")
    t.add_column("plan", justify="right")
    base, plan = data["baseline"], data["plan"]
    t.add_row("peak live activations", _mib(base["peak_bytes"]), _mib(plan["peak_bytes"]))
    t.add_row("saved for backward", _mib(base["saved_bytes"]), _mib(plan["saved_bytes"]))
    t.add_row("held for backward (peak)", _mib(base["saved_bytes"]),
              _mib(plan.get("held_peak_bytes")))
    if base.get("held_bytes") is not None:   # what a fractional budget is a fraction of
        t.add_row("held, free recompute only (budget 1.0)", "", _mib(base["held_bytes"]))
    t.add_row("budget", "", _mib(data["budget_bytes"]))
    t.add_row("recomputed ops", "0", str(len(plan["recomputed"])))
    flops = plan["total_flops"] or 1
    t.add_row("recompute FLOPs", "0", f"{plan['recompute_flops']:,} "
              f"({plan['recompute_flops'] / flops:.1%} of the step)")
    t.add_row("arena (lower bound)", "", f"{_mib(data['arena']['bytes'])} "
              f"({_mib(data['arena']['lower_bound'])})")
    console.print(t)
    if data.get("solver"):
        s = data["solver"]
        gap = "" if s.get("gap") is None else f", gap {s['gap']:.2%}"
        console.print(f"solver: {s['solver']} ({s['status']}{gap}) in {s['seconds']:.3f} s")
    for note in data["notes"]:
        console.print(f"note: {note}", style="dim")
    for path in written:
        console.print(f"wrote {path}")
