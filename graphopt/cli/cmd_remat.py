"""``graphopt remat MODEL --budget B [--train] [-o DIR]``: a memory plan and its picture.

With ``--train`` the plan covers a whole training step (the joint forward+backward graph that
aot_autograd traces): which activations to save and which to recompute so that the activation
memory held for the backward pass fits the budget. Without it, the forward graph alone: its
liveness, peak and buffer-reuse arena (there is nothing to recompute). Writes
``DIR/memory.json`` (schema ``graphopt.memory/1``) and ``DIR/memory.png`` / ``.svg``: live memory
over the step before and after the plan.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch.utils._pytree as pytree

from graphopt.capture import capture
from graphopt.cli.common import add_model_args, print_json, progress_from
from graphopt.cost import DEVICES
from graphopt.errors import GraphoptError
from graphopt.export import write_atomic
from graphopt.memory.arena import plan_arena
from graphopt.memory.liveness import analyze
from graphopt.memory.remat.build import forward_region
from graphopt.memory.remat.problem import resolve_budget
from graphopt.memory.plot import plot_live_memory
from graphopt.memory.report import dumps, memory_report
from graphopt.passes import PassContext
from graphopt.pass_lists import TRAINING_JOINT, run_pipeline
from graphopt.specs import load_spec, parse_overrides

ORDER = 40
_UNITS = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "b": 1}


def parse_budget(text: str) -> float | int:
    """``0.5`` -> fraction 0.5; ``123456`` -> bytes; ``512MiB``/``2GB`` -> bytes."""
    t = text.strip().lower().replace("_", "")
    m = re.fullmatch(r"([0-9.]+)\s*(kib|mib|gib|kb|mb|gb|b)", t)
    nbytes = None
    if m:
        try:
            nbytes = int(float(m.group(1)) * _UNITS[m.group(2)])
        except ValueError:
            pass
    elif re.fullmatch(r"[0-9]+", t):
        nbytes = int(t)
    if nbytes is not None:
        if nbytes <= 0:
            raise GraphoptError(f"--budget {text}: a budget in bytes must be positive")
        return nbytes
    if not m:
        try:
            value = float(t)
        except ValueError:
            value = None
        if value is not None and 0.0 < value <= 1.0:
            return value
        if value is not None:
            raise GraphoptError(f"--budget {text}: a fraction must lie in (0, 1]; give bytes as "
                                "an integer or with a unit (e.g. 512MiB)")
    raise GraphoptError(f"--budget {text!r} is neither a fraction in (0, 1] nor bytes "
                        "(e.g. 0.5, 268435456 or 256MiB)")


def register(sub) -> None:
    p = sub.add_parser("remat", help="memory plan: liveness, arena, remat under a budget",
                       description="Plan MODEL's memory. With --train: the training step's "
                       "activations are saved or recomputed so that what the backward pass "
                       "holds fits --budget; writes DIR/memory.json and a plot of live memory.")
    add_model_args(p)
    p.add_argument("--budget", required=True, metavar="B",
                   help="a fraction in (0, 1] of the activation bytes saved without remat, "
                   "or bytes (an integer, or with a unit: 512MiB, 2GB)")
    p.add_argument("--train", action="store_true", help="plan the training step (forward and "
                   "backward), not the forward pass alone")
    p.add_argument("-o", "--out", default=".", metavar="DIR", help="output directory "
                   "(default: the current one)")
    p.add_argument("--solver", choices=["auto", "greedy", "milp"], default="auto",
                   help="auto (default): the exact MILP on small graphs, the fast solver else")
    p.add_argument("--time-limit", type=float, default=10.0, help="seconds for the MILP "
                   "(default 10); the gap it reached is reported")
    p.add_argument("--device", choices=sorted(DEVICES), default="h100",
                   help="device whose roofline prices recomputation (default h100)")
    p.add_argument("--plot", default="png", help="plot formats, comma-separated: png, svg, "
                   "or none (default png)")
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="summary on stdout: table (default) or json")
    p.set_defaults(func=run)


def _capture(args, progress, train: bool):
    with progress.step(f"loading {args.model}"):
        loaded = load_spec(args.model, overrides=parse_overrides(args.overrides),
                           batch=args.batch, seq=args.seq, image_size=args.image_size,
                           seed=args.seed)
    if train:
        loaded.model.train()  # dropout and batch-norm statistics as in a real step
    with progress.step(f"capturing {args.model}"):
        graph = capture(loaded.model, loaded.inputs, loaded.kwargs or None, mode=args.capture,
                        name=args.model)
    return loaded, graph


def _backward_start(graph) -> int:
    forward = forward_region(graph.gm)
    nodes = list(graph.fx_nodes())
    return next((i for i, n in enumerate(nodes) if n.op == "call_function"
                 and n.name not in forward), len(nodes))


def _plan_train(args, budget, progress):
    from graphopt.memory.joint import capture_joint
    notes = []
    loaded, graph = _capture(args, progress, train=True)
    flat = pytree.tree_leaves((loaded.inputs, loaded.kwargs or {}))
    with progress.step("tracing the training step"):
        try:
            joint = capture_joint(graph, flat)
        except GraphoptError as exc:
            # Train-mode state updates (batch-norm running statistics) are in-place writes
            # aot_autograd cannot differentiate through once exported; plan the eval-mode step.
            loaded.model.eval()
            graph = capture(loaded.model, loaded.inputs, loaded.kwargs or None,
                            mode=args.capture, name=args.model)
            joint = capture_joint(graph, flat)
            notes.append(f"planned the step with the model in eval mode: in train mode "
                         f"{str(exc).split(': ', 1)[-1][:160]}")
    before = analyze(joint.graph)
    start_before = _backward_start(joint.graph)
    ctx = PassContext(options={"memory_budget": budget, "num_fwd_outputs": joint.num_fwd_outputs,
                               "remat_solver": args.solver, "remat_time_limit": args.time_limit,
                               "remat_device": args.device}, seed=args.seed, device=args.device)
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


def _plan_inference(args, budget, progress):
    _, graph = _capture(args, progress, train=False)
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
    data, curves, bounds = (_plan_train if args.train else _plan_inference)(args, budget,
                                                                            progress)
    out = Path(args.out)
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
