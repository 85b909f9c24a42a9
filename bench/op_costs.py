"""The device spec's price of every op beside its measured time, by op class.

Captures a model, runs its ATen graph node by node under a timing ``torch.fx`` interpreter
(forward, one thread, the median of ``--repeats`` runs after a warm-up) and prints, per op
class, the spec's predicted seconds (:func:`graphopt.costmodel.node_time.node_seconds`) next to the
measured ones, with the whole module's time for reference (the interpreter adds a little per
node). The spec: ``--device-spec FILE`` (``graphopt calibrate`` output), else this machine's
cached calibration for 2 processes (measured now if there is none).

    python bench/op_costs.py                 # GPT-2, Llama, Mixtral, BERT, Swin: results/op_costs.md
    python bench/op_costs.py --models llama --device-spec device.json
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from partition_models import CASES, build  # noqa: E402

DEFAULT_MODELS = "gpt2,llama,mixtral,bert,swin"


class TimedInterpreter(torch.fx.Interpreter):
    """Runs a graph node by node, recording each node's seconds."""

    def __init__(self, gm):
        super().__init__(gm)
        self.seconds = collections.defaultdict(list)

    def run_node(self, n):
        start = time.perf_counter()
        out = super().run_node(n)
        self.seconds[n.name].append(time.perf_counter() - start)
        return out


def compare(name: str, spec, repeats: int) -> tuple[list[str], float, float]:
    """The per-class table of ``name``, the spec's sum and the module's measured seconds."""
    import graphopt
    from graphopt.costmodel.node_time import node_seconds
    model, inputs, _ = build(name)      # bench/partition_models.py's small configs
    model.train()                       # as a training step runs it: dropout on
    graph = graphopt.capture(model, inputs)
    timer = TimedInterpreter(graph.gm)
    with torch.no_grad():
        for _ in range(repeats + 2):
            timer.run(*inputs)
    measured = {k: statistics.median(v[2:]) for k, v in timer.seconds.items()}
    by = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for info in graph.nodes():
        if info.op != "call_function":
            continue
        row = by[str(info.op_class)]
        row[0] += 1
        row[1] += node_seconds(info, spec)
        row[2] += measured.get(info.name, 0.0)
    lines = [f"### {name} ({CASES[name].cls}: {CASES[name].about}; train mode)", "",
             "| op class | nodes | predicted ms | measured ms | measured / predicted |",
             "|---|---:|---:|---:|---:|"]
    total = [0, 0.0, 0.0]
    for op_cls, (n, p, m) in sorted(by.items(), key=lambda t: -t[1][2]):
        ratio = f"{m / p:.2f}" if p > 0 else "-"
        lines.append(f"| {op_cls} | {n} | {p * 1e3:.3f} | {m * 1e3:.3f} | {ratio} |")
        total = [total[0] + n, total[1] + p, total[2] + m]
    lines.append(f"| all | {total[0]} | {total[1] * 1e3:.3f} | {total[2] * 1e3:.3f} | "
                 f"{total[2] / total[1]:.2f} |")
    with torch.no_grad():
        whole = []
        for _ in range(repeats):
            start = time.perf_counter()
            graph.gm(*inputs)
            whole.append(time.perf_counter() - start)
    run = statistics.median(whole)
    lines += ["", f"The module run whole (no interpreter): {run * 1e3:.3f} ms."]
    return lines, total[1], run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help=f"among {', '.join(CASES)} (default {DEFAULT_MODELS})")
    ap.add_argument("--device-spec", default=None, metavar="FILE")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "op_costs.md"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    from graphopt.costmodel.calibrate import cache_path, calibrate
    from graphopt.costmodel.device_file import load_device_spec, save_device_spec
    path = args.device_spec
    if path is None:
        path = cache_path(2)
        if not path.exists():
            save_device_spec(calibrate(2, progress=True), path)
    spec = load_device_spec(path)
    md = ["# The device spec's price of each op class vs its measured time", "",
          f"`python bench/op_costs.py` on {platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}; spec: {spec.name} (a `graphopt calibrate --world 2` file). One "
          "thread, forward in no-grad mode, node by node through a timing interpreter, median of "
          f"{args.repeats} runs.", ""]
    summary = ["| model | spec's sum (ms) | module measured (ms) | spec / measured |",
               "|---|---:|---:|---:|"]
    tables = []
    for name in args.models.split(","):
        print(f"{name} ...", file=sys.stderr, flush=True)
        lines, predicted, measured = compare(name, spec, args.repeats)
        tables += lines + [""]
        summary.append(f"| {name} | {predicted * 1e3:.2f} | {measured * 1e3:.2f} | "
                       f"{predicted / measured:.2f} |")
    md += summary + [""] + tables
    print("\n".join(md))
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
