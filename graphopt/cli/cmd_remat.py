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

from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    device_from,
    load_and_capture,
    load_model,
    output_dir,
    print_json,
    progress_from,
)
from graphopt.errors import GraphoptError
from graphopt.parallel import MemoryBudget

PLOTS = ("png", "svg", "none")


def parse_budget(text: str) -> float | int:
    """``0.5`` -> fraction 0.5; ``123456`` -> bytes; ``512MiB``/``2GB`` -> bytes: the plain
    value of :meth:`graphopt.parallel.MemoryBudget.parse` (what memory.json records)."""
    return MemoryBudget.parse(text, option="--budget").value


def register(sub) -> None:
    p = sub.add_parser("remat", description="Plan MODEL's memory. With --train: the training step's "
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


def _plan_train(args, budget, cost_model, progress):
    """The training step's plan (:func:`graphopt.planner.memory.plan_training_memory`)."""
    from graphopt.memory.plot import plot_step_memory
    from graphopt.planner.memory import plan_training_memory
    loaded = load_model(args, progress)
    res = plan_training_memory(loaded.model, loaded.inputs, budget, kwargs=loaded.kwargs,
                               solver=args.solver, time_limit=args.time_limit,
                               cost_model=cost_model,
                               seed=args.seed, capture_mode=args.capture, name=args.model,
                               progress=progress)

    def plot(path: Path) -> Path:
        return plot_step_memory({"no recomputation": res.baseline,
                                 f"plan under budget {args.budget}": res.plan}, path,
                                title=f"{args.model}: training step",
                                budget_bytes=res.budget_bytes,
                                budget_label="budget (bounds what is held for backward)")
    return res.report, plot


def _plan_inference(args, budget, cost_model, progress):
    from graphopt.memory.arena import plan_arena
    from graphopt.memory.liveness import analyze
    from graphopt.memory.plot import plot_live_memory
    from graphopt.memory.remat.problem import resolve_budget
    from graphopt.memory.report import memory_report
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

    def plot(path: Path) -> Path:
        return plot_live_memory({"forward": lv}, path, title=f"{args.model}: forward pass",
                                hlines={"budget": data["budget_bytes"]})
    return data, plot


def run(args) -> int:
    progress = progress_from(args)
    budget = parse_budget(args.budget)
    formats = [f.strip() for f in args.plot.split(",") if f.strip()]
    bad = [f for f in formats if f not in PLOTS]
    if bad:
        raise GraphoptError(f"--plot {args.plot}: unknown format(s) {', '.join(bad)}; "
                            "use png, svg or none")
    if not (math.isfinite(args.time_limit) and args.time_limit > 0):
        raise GraphoptError(f"--time-limit must be a positive number of seconds, got "
                            f"{args.time_limit:g}")
    cost_model = device_from(args)
    from graphopt.export import write_atomic
    from graphopt.memory.report import dumps
    with output_dir(args.out) as out:
        data, plot = (_plan_train if args.train else _plan_inference)(
            args, budget, cost_model, progress)
        written = [write_atomic(out / "memory.json", dumps(data))]
        for fmt in formats:
            if fmt != "none":
                with progress.step(f"plotting memory.{fmt}"):
                    written.append(plot(out / f"memory.{fmt}"))
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
