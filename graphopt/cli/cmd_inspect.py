"""``graphopt inspect MODEL``: what the captured graph holds and what it costs."""
from __future__ import annotations

import sys

from graphopt.cli.common import (
    add_device_args,
    add_model_args,
    device_from,
    load_and_capture,
    non_negative_int,
    print_json,
    progress_from,
)

ORDER = 10


def register(sub) -> None:
    p = sub.add_parser("inspect", help="nodes, FLOPs, parameter and activation bytes, op mix",
                       description="Capture MODEL and report its graph: node counts, FLOPs, "
                       "parameter/activation bytes, the op histogram and a roofline time "
                       "estimate on a device.")
    add_model_args(p)
    p.add_argument("--format", choices=["table", "json"], default="table",
                   help="table for people (default), json for scripts")
    add_device_args(p, default="h100", prices="the roofline time estimate")
    p.add_argument("--nodes", action="store_true", help="include every node in the JSON output "
                   "(default: the summary only)")
    p.add_argument("--top", type=non_negative_int, default=15, help="op histogram rows in the "
                   "table (default 15)")
    p.set_defaults(func=run)


def report(graph, cost_model, with_nodes: bool = False) -> dict:
    """The graph's summary, its time estimated by ``cost_model`` (a
    :class:`~graphopt.costmodel.CostModel`, or a preset key)."""
    from graphopt.costmodel.target import as_cost_model
    cm = as_cost_model(cost_model)
    est = sum(cm.node_seconds(i) for i in graph.compute_nodes())
    data = graph.summary()
    data["device"] = cm.spec.name
    data["priced_for"] = cm.describe()
    data["estimated_seconds"] = est
    if with_nodes:
        data["nodes_detail"] = [i.to_dict() for i in graph.nodes()]
    return data


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def _print_table(data: dict, top: int) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(file=sys.stdout, soft_wrap=True)
    t = Table(title=f"graphopt inspect {data['model']}", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value", justify="right")
    rows = [("capture mode", data["capture_mode"]),
            ("capture time", f"{data['capture_seconds']:.2f} s"),
            ("nodes", f"{data['nodes']:,}"), ("compute nodes", f"{data['compute_nodes']:,}"),
            ("edges", f"{data['edges']:,}"), ("FLOPs", f"{data['flops']:,} "
                                                        f"({data['flops'] / 1e9:.3f} GFLOP)"),
            ("parameter bytes", _mib(data["param_bytes"])),
            ("input bytes", _mib(data["input_bytes"])),
            ("activation bytes", _mib(data["activation_bytes"])),
            (f"estimated time ({data['priced_for']})", f"{data['estimated_seconds'] * 1e3:.3f} ms")]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    h = Table(title="op histogram")
    h.add_column("op")
    h.add_column("count", justify="right")
    items = list(data["op_histogram"].items())
    for op, count in items[:top]:
        h.add_row(op, str(count))
    if len(items) > top:
        h.add_row(f"... {len(items) - top} more ops", str(sum(c for _, c in items[top:])))
    console.print(h)
    for note in data["notes"]:
        console.print(f"note: {note}", style="dim")


def run(args) -> int:
    device = device_from(args)  # a bad --device-spec fails before the capture
    progress = progress_from(args)
    _, graph = load_and_capture(args, progress)
    data = report(graph, device, with_nodes=args.nodes)
    if args.format == "json":
        print_json(data)
    else:
        _print_table(data, args.top)
    return 0
