"""``graphopt partition MODEL -k K``: split the graph across K devices and show the plan.

Writes ``DIR/partition.json`` (schema ``graphopt.partition/1``) and the pictures asked for with
``--format``: ``partition.dot`` / ``.svg`` (one colour per part, parts boxed, cut edges red and
labelled with their bytes; SVG needs Graphviz) and ``partition.html`` (self-contained, no
Graphviz: one column per stage, modules as boxes that open on click, cut edges with their bytes,
hover a node for its cost). Prints the plan next to the two baselines (equal-FLOPs and
optimal contiguous splits).
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    add_out_arg,
    calibrated_link,
    device_from,
    load_and_capture,
    non_negative_float,
    output_dir,
    positive_int,
    preset_names,
    progress_from,
)
from graphopt.errors import GraphoptError
from graphopt.units import parse_bytes

FORMATS = ("json", "dot", "svg", "html")
# The library's choices (graphopt.partition.search.MODES, partition.choose.OBJECTIVES,
# passes.partition_graph.SPLITS), written out so that the arguments are checked before torch
# is imported; tests/test_cli_partition.py keeps them equal.
MODES = ("pipeline", "cut")
OBJECTIVES = ("volume", "time")
SPLITS = ("auto", "off", "rows", "nodes")

# One line per family of plan names the table prints (the search's candidates and baselines):
# (what the line names, the names it explains: a prefix, or "+x"/"_x" for a part of a name)
LEGEND = (
    ("equal_flops", "equal_flops", "stages of equal FLOPs along the graph's order (the "
     "hand-made split)"),
    ("contiguous_dp", "contiguous_dp", "the split of the graph's order with the fastest "
     "slowest stage, bytes ignored"),
    ("dp:ORDER", "dp:", "a dynamic program that cuts a node order into stages: the fewest "
     "bytes among splits near the fastest (graph-order: the graph's own order; "
     "metis-order[i]: the order of METIS cut i; +bytes: the fewest bytes within the balance)"),
    ("metis[i]", "metis", "METIS k-way cut number i, rebalanced (+repair: then made acyclic, "
     "stages in order)"),
    ("milp", "milp", "exact placement by a MILP (HiGHS): of every node, or (near(P)) of the "
     "nodes near plan P's stage boundaries"),
    ("+refine", "+refine", "then improved by moving single nodes across stage boundaries"),
    ("_as_written", "_as_written", "on the model as written, before nodes are cut into "
     "blocks"),
    ("single", "single", "one part holds everything (k = 1)"),
)


def parse_floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GraphoptError(f"--speeds takes comma-separated numbers, got {text!r}") from None


def add_plan_args(p, *, mode: bool = True) -> None:
    """Options shared by ``partition`` and ``pipeline``."""
    _, links = preset_names()
    g = p.add_argument_group("partitioning")
    if mode:
        g.add_argument("--mode", choices=MODES, default="pipeline",
                       help="pipeline: acyclic, stages in order (default); cut: any k-way "
                       "placement with the least communication")
    g.add_argument("--imbalance", type=non_negative_float, default=0.03,
                   help="allowed max stage time / (total / k) - 1, the stages' time as the cost "
                   "model predicts it for --device (default 0.03); FLOPs imbalance is reported too")
    g.add_argument("--link", choices=sorted(links), default=None,
                   help="link model for transfer times (default: the --device-spec's measured "
                   "link, else by device)")
    g.add_argument("--ncuts", type=positive_int, default=None,
                   help="METIS best-of-N cuts per run (default 4, 1 above 50k nodes)")
    g.add_argument("--memory-cap", default=None, metavar="BYTES",
                   help="memory per device in bytes: an integer, or with a unit, KB/MB/GB "
                   "powers of 10, KiB/MiB/GiB powers of 2 (e.g. 16GiB, 1.5GB); default: the "
                   "device's")
    g.add_argument("--speeds", default=None, metavar="S0,S1,...",
                   help="relative device speeds, one per part (default: equal)")
    g.add_argument("--objective", choices=OBJECTIVES, default="volume",
                   help="volume (default): fewest bytes sent among plans whose work is within "
                   "10%% of the fastest's (kernel launches aside, except that a plan over 2x "
                   "slower by the full estimate gives way to one sending at most 10%% more); "
                   "time: the fastest plan by the full estimate")
    g.add_argument("--split", choices=SPLITS, default="auto",
                   help="cut nodes so a stage boundary can land inside them: rows = token "
                   "blocks of row-wise regions (a transformer FFN block, a decoder layer under "
                   "a causal mask), nodes = single "
                   "matmuls/convs/attention in row/head/channel blocks, auto (default) = "
                   "partition the graph as written and with each, keep the best plan (the "
                   "plan's notes list them), off = never")
    g.add_argument("--schedule", choices=["1f1b", "gpipe"], default="1f1b",
                   help="schedule for the in-flight activation memory (default 1f1b)")


def plan_options(args, k: int, mode: str) -> dict:
    cap = parse_bytes(args.memory_cap, option="--memory-cap") \
        if args.memory_cap is not None else None
    speeds = parse_floats(args.speeds) if args.speeds is not None else None
    link = args.link if args.link is not None else calibrated_link(args)
    return {"k": k, "mode": mode, "imbalance": args.imbalance, "link": link,
            "ncuts": args.ncuts, "memory_cap": cap, "speeds": speeds,
            "microbatches": args.microbatches, "schedule": args.schedule, "model": args.model,
            "split": args.split, "objective": args.objective}


def make_plan(args, graph, *, k: int, mode: str, device: str):
    """Run the PARTITION pipeline on ``graph``; returns (graph, plan)."""
    from graphopt.pass_lists import PARTITION, run_pipeline
    from graphopt.passes import PassContext
    ctx = PassContext(options=plan_options(args, k, mode), seed=args.seed, device=device)
    graph = run_pipeline(graph, PARTITION, ctx)
    return graph, ctx.artifacts["partition"]


def register(sub) -> None:
    p = sub.add_parser("partition", description="Partition MODEL's graph into K parts that balance the FLOPs "
                       "and send as little as possible between devices; in pipeline mode the "
                       "parts are stages that only send forward. Writes DIR/partition.json.")
    add_model_args(p)
    p.add_argument("-k", "--k", dest="k", type=positive_int, required=True,
                   help="number of parts")
    add_plan_args(p)
    p.add_argument("--microbatches", type=positive_int, default=8,
                   help="micro-batches per step for the pipeline estimate (default 8)")
    add_device_args(p, default="h100", prices="stage times and the default memory cap")
    p.add_argument("--format", default="json,html",
                   help="comma-separated outputs among json, dot, svg, html (default json,html)")
    add_out_arg(p, "partition.json and the pictures")
    p.add_argument("--show-params", action="store_true", help="draw parameter nodes too "
                   "(default: compute nodes only)")
    p.set_defaults(func=run)


def _formats(text: str) -> list[str]:
    fmts = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise GraphoptError(f"--format {text!r}: choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(fmts))


_NO_DOT = "Graphviz's `dot` is not on PATH (apt-get install graphviz)"


def drawable(fmts: list[str]) -> list[str]:
    """The formats that can be written here, checked before the capture: SVG needs Graphviz.

    Without ``dot``, an SVG asked for beside other formats is skipped with one line on stderr
    (the JSON, DOT and HTML are written); asked for alone it is bad input (exit 2)."""
    if "svg" not in fmts or shutil.which("dot") is not None:
        return fmts
    rest = [f for f in fmts if f != "svg"]
    if not rest:
        raise GraphoptError(f"--format svg: {_NO_DOT}; --format dot,html work without it")
    print(f"graphopt: skipping svg: {_NO_DOT}; writing {', '.join(rest)}", file=sys.stderr)
    return rest


def write_outputs(graph, plan, out: Path, fmts: list[str], show_params: bool) -> list[Path]:
    """partition.json and the pictures, each written atomically; the SVG last, so that a
    Graphviz failure (too large a graph) costs only the SVG when other formats were asked."""
    from graphopt.export import to_dot, to_html, to_svg, write_atomic
    written = [write_atomic(out / "partition.json", plan.to_json())] if "json" in fmts else []
    if not {"dot", "svg", "html"} & set(fmts):
        return written
    s = plan.summary()
    labels = {p: f"part {p}: {s['part_flops'][p] / 1e9:.2f} GFLOP, "
                 f"{s['part_param_bytes'][p] / 2**20:.1f} MiB params, "
                 f"{s['stage_seconds'][p] * 1e6:.1f} us" for p in range(plan.k)}
    title = (f"{plan.model}: k={plan.k} {plan.mode}, {s['comm_bytes']:,} B sent, time imbalance "
             f"{s['time_imbalance']:.1%} (FLOPs {s['imbalance']:.1%})")
    dot = to_dot(graph, show_params=show_params, title=title, part_labels=labels)
    if "dot" in fmts:
        written.append(write_atomic(out / "partition.dot", dot))
    if "html" in fmts:  # draws itself in the browser: no Graphviz needed
        page = to_html(graph, title=f"graphopt partition {plan.model}", subtitle=title,
                       rows=plan.rows(), show_params=show_params, part_labels=labels)
        written.append(write_atomic(out / "partition.html", page))
    if "svg" in fmts:
        try:
            svg = to_svg(graph, dot)
        except GraphoptError as exc:
            if fmts == ["svg"]:
                raise
            print(f"graphopt: skipping svg: {exc}", file=sys.stderr)
        else:
            written.append(write_atomic(out / "partition.svg", svg))
    return written


def legend(names) -> list[str]:
    """One line for each family of plan names among ``names`` (the rows of the table)."""
    def used(key: str) -> bool:
        if key[0] in "+_":
            return any(key in n for n in names)
        return any(n.startswith(key) for n in names)
    width = max(len(label) for label, _, _ in LEGEND)
    return [f"  {label:<{width}}  {text}" for label, key, text in LEGEND if used(key)]


def print_table(plan, file=None) -> None:
    from rich.console import Console
    from rich.table import Table
    stream = file or sys.stdout
    console = Console(file=stream, soft_wrap=True,
                      width=None if stream.isatty() else 120)
    m = plan.metrics()
    s = plan.summary(m)
    est = plan.estimate(m)
    t = Table(title=f"graphopt partition {plan.model}: k={plan.k}, {plan.mode} mode")
    for col in ("plan", "comm bytes", "time imb.", "FLOPs imb.", "acyclic", "slowest stage",
                f"step, {est['microbatches']} micro-batches"):
        t.add_column(col, justify="right" if col != "plan" else "left")
    slots = est["microbatches"] + plan.k - 1
    t.add_row(f"graphopt ({plan.method})", f"{s['comm_bytes']:,}", f"{s['time_imbalance']:.2%}",
              f"{s['imbalance']:.2%}", str(s["acyclic"]), f"{s['bottleneck_seconds'] * 1e6:,.1f} us",
              f"{est['forward_step_seconds'] * 1e6:,.1f} us")
    for name, b in plan.baselines.items():
        t.add_row(name, f"{b['comm_bytes']:,}", f"{b.get('time_imbalance', float('nan')):.2%}",
                  f"{b['imbalance']:.2%}", str(b["acyclic"]),
                  f"{b['bottleneck_seconds'] * 1e6:,.1f} us",
                  f"{b['bottleneck_seconds'] * slots * 1e6:,.1f} us")
    console.print(t)
    lines = legend([plan.method, *plan.baselines])
    if lines:
        console.print("plan names:\n" + "\n".join(lines), style="dim", highlight=False,
                      markup=False)
    console.print(f"parts: FLOPs {[f'{x / 1e9:.3g}G' for x in s['part_flops']]}, parameters "
                  f"{[f'{x / 2**20:.1f}MiB' for x in s['part_param_bytes']]}; bubble "
                  f"{est['bubble_fraction']:.0%}; partitioned in {plan.seconds:.3f} s")
    for note in plan.notes:
        console.print(f"note: {note}", style="dim")


def run(args) -> int:
    # what needs no model first, before torch is imported: formats, Graphviz, option values
    fmts = drawable(_formats(args.format))
    plan_options(args, args.k, args.mode)
    from graphopt.partition.search import check_early
    check_early(args.k, args.imbalance)
    device = device_from(args)
    progress = progress_from(args)
    with output_dir(args.out) as out:
        _, graph = load_and_capture(args, progress)
        with progress.step(f"partitioning into {args.k} parts"):
            graph, plan = make_plan(args, graph, k=args.k, mode=args.mode, device=device)
        with progress.step("writing " + ", ".join(fmts)):
            written = write_outputs(graph, plan, out, fmts, args.show_params)
    print_table(plan)
    for path in written:
        print(f"wrote {path}")
    return 0
