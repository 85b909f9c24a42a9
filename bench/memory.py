"""Memory benchmark: measured peak and step time of a training step, planner quality, planner speed.

1. **Measured peak**, side by side, on a deep residual MLP training step (activations of tens of
   MiB each). Every configuration runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536``
   (freed tensors go back to the OS); after two warm-up steps (compilation included) the
   high-water mark is reset by writing ``5`` to ``/proc/self/clear_refs``, one step runs, and the
   peak is ``VmHWM`` minus the ``VmRSS`` before the step (``/proc/self/status``). Configurations:
   eager; ``aot_eager`` (in this torch, the min-cut partitioner at its default budget 1.0);
   aot_eager with the default (no-remat) partitioner; graphopt with ``memory_budget`` 1.0 / 0.5 /
   0.25; the min-cut partitioner with ``torch._functorch.config.activation_memory_budget`` 0.5 /
   0.25; ``torch.utils.checkpoint`` around every block (eager). Step time: all configurations
   compiled in one process and stepped round-robin, so the machine's load falls on all alike;
   the ratio to aot_eager is the median of the per-round ratios. graphopt's predicted peak comes
   from the plan it dumps.
2. **Planner quality**: the fast solver's recompute cost against the exact MILP's on joint graphs
   of small models and on random problems, at budgets 0.75 and 0.5.
3. **Planner speed**: the fast solver on a ~10k-node joint graph.

    python bench/memory.py                          # all three, writes bench/results/memory.md
    python bench/memory.py --sections measured --depth 8 --batch 2048
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

MiB = 2**20
CONFIGS = ["eager", "aot_eager", "aot_eager_default_partitioner", "graphopt@1.0",
           "graphopt@0.5", "graphopt@0.25", "mincut@0.5", "mincut@0.25", "checkpoint"]


# -- 1. measured peak (one configuration per process) -------------------------------------------

def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _build(args):
    from torch import nn
    from torch.utils.checkpoint import checkpoint
    from graphopt.zoo import ResidualMLP

    torch.manual_seed(0)
    model = ResidualMLP(dim=args.dim, depth=args.depth, hidden=args.hidden).train()
    x = torch.randn(args.batch, args.dim)

    class Checkpointed(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            for block in self.inner.blocks:
                x = x + checkpoint(block, x, use_reentrant=False)
            return self.inner.head(x)

    return model, x, Checkpointed(model)


def _compiled(config: str, model, wrapped, dump: str, reset: bool = True):
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    if reset:
        torch._dynamo.reset()
    if config == "eager":
        return model
    if config == "checkpoint":
        return wrapped
    if config in ("aot_eager", "aot_eager_default_partitioner"):
        return torch.compile(model, backend=config, fullgraph=True)
    kind, budget = config.split("@")
    if kind == "graphopt":
        return torch.compile(model, backend="graphopt", fullgraph=True,
                             options={"memory_budget": float(budget), "dump_dir": dump})
    torch._functorch.config.activation_memory_budget = float(budget)
    backend = aot_autograd(fw_compiler=boxed_nop, bw_compiler=boxed_nop,
                           partition_fn=min_cut_rematerialization_partition,
                           keep_inference_input_mutations=True)
    return torch.compile(model, backend=backend, fullgraph=True)


def worker(args) -> None:
    warnings.filterwarnings("ignore")
    libc = ctypes.CDLL("libc.so.6")
    model, x, wrapped = _build(args)
    dump = tempfile.mkdtemp(prefix="graphopt-bench-")
    fn = _compiled(args.worker, model, wrapped, dump)

    def step():
        model.zero_grad(set_to_none=True)
        fn(x).square().mean().backward()

    for _ in range(2):
        step()
    model.zero_grad(set_to_none=True)
    gc.collect()
    libc.malloc_trim(0)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    fn(x).square().mean().backward()
    peak = _status("VmHWM") - before
    grads = [float(p.grad.double().norm()) for p in model.parameters()]
    out = {"config": args.worker, "peak": peak, "rss_before": before, "grads": grads}
    plans = sorted(Path(dump).glob("*_memory.json"))
    if plans:
        plan = json.loads(plans[-1].read_text())
        out.update(predicted=plan["plan"]["peak_bytes"], held=plan["plan"]["held_peak_bytes"],
                   saved=plan["plan"]["saved_bytes"], baseline_saved=plan["baseline"]["saved_bytes"],
                   budget_bytes=plan["budget_bytes"], recomputed=len(plan["plan"]["recomputed"]),
                   recompute_flops=plan["plan"]["recompute_flops"],
                   total_flops=plan["plan"]["total_flops"])
    print(json.dumps(out))


def measured(args) -> tuple[list[dict], list[str]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    rows = []
    for config in args.configs.split(","):
        cmd = [sys.executable, __file__, "--worker", config, "--dim", str(args.dim), "--hidden",
               str(args.hidden), "--depth", str(args.depth), "--batch", str(args.batch)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{config} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {config:32s} peak {rows[-1]['peak'] / MiB:8.1f} MiB", file=sys.stderr,
              flush=True)
    steps = timing(args)
    for r in rows:
        r["step_s"], r["step_ratio"] = steps[r["config"]]
    base = next(r for r in rows if r["config"] == "aot_eager")
    ref = next((r for r in rows if r["config"] == "eager"), base)
    lines = ["| configuration | measured peak (MiB) | vs aot_eager | predicted (MiB) | "
             "predicted / measured | step (s), median | vs aot_eager | grads vs eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gerr = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(r["grads"], ref["grads"]))
        pred = f"{r['predicted'] / MiB:.1f}" if "predicted" in r else "-"
        ratio = f"{r['predicted'] / r['peak']:.3f}" if "predicted" in r else "-"
        lines.append(f"| {r['config']} | {r['peak'] / MiB:.1f} | {r['peak'] / base['peak']:.3f} "
                     f"| {pred} | {ratio} | {r['step_s']:.3f} | {r['step_ratio']:.3f} | "
                     f"{gerr:.1e} |")
    return rows, lines


def timing(args) -> dict[str, tuple[float, float]]:
    """Step time of every configuration, round-robin in one process (plain allocator), so the
    load the machine carries falls on all of them alike: (best, median) over the rounds."""
    cmd = [sys.executable, __file__, "--timing", "--dim", str(args.dim), "--hidden",
           str(args.hidden), "--depth", str(args.depth), "--batch", str(args.batch), "--steps",
           str(args.steps), "--configs", args.configs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit("timing failed")
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def timing_worker(args) -> None:
    import copy
    import torch._dynamo
    warnings.filterwarnings("ignore")
    torch._dynamo.config.cache_size_limit = 64
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64
    model, x, _ = _build(args)
    runs = {}
    for config in args.configs.split(","):
        clone = copy.deepcopy(model)
        _, _, wrapped = _build(args)
        wrapped.inner = clone
        fn = _compiled(config, clone, wrapped, tempfile.mkdtemp(prefix="graphopt-bench-"),
                       reset=False)
        fn(x).square().mean().backward()  # compile now, under this configuration's settings
        torch._functorch.config.activation_memory_budget = 1.0
        runs[config] = (clone, fn)
    times = {c: [] for c in runs}
    for _ in range(max(args.steps, 1)):
        for config, (m, fn) in runs.items():
            m.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn(x).square().mean().backward()
            times[config].append(time.perf_counter() - start)
    ref = times.get("aot_eager", next(iter(times.values())))
    # The load on a shared machine comes and goes: compare within each round, then take the
    # median of those ratios.
    print(json.dumps({c: [statistics.median(t), statistics.median(
        a / b for a, b in zip(t, ref))] for c, t in times.items()}))


def goals(rows: list[dict]) -> list[str]:
    by = {r["config"]: r for r in rows}
    out = []
    g = [by.get(f"graphopt@{b}") for b in ("1.0", "0.5", "0.25")]
    if all(g):
        mono = g[0]["peak"] >= g[1]["peak"] >= g[2]["peak"]
        out.append(f"- peak falls with the budget (1.0 >= 0.5 >= 0.25): "
                   f"{g[0]['peak'] / MiB:.1f} >= {g[1]['peak'] / MiB:.1f} >= "
                   f"{g[2]['peak'] / MiB:.1f} MiB: {'yes' if mono else 'NO'}")
    if "graphopt@0.5" in by and "aot_eager" in by:
        r = by["graphopt@0.5"]["peak"] / by["aot_eager"]["peak"]
        out.append(f"- graphopt@0.5 peak / aot_eager peak = {r:.3f} (goal <= 0.75): "
                   f"{'yes' if r <= 0.75 else 'NO'}")
    for b in ("0.5", "0.25"):
        if f"graphopt@{b}" in by and f"mincut@{b}" in by:
            a, m = by[f"graphopt@{b}"]["peak"], by[f"mincut@{b}"]["peak"]
            out.append(f"- at {b}: graphopt {a / MiB:.1f} MiB vs min-cut {m / MiB:.1f} MiB "
                       f"(ratio {a / m:.3f}): {'below' if a < m else 'NOT below'}")
    if "aot_eager" in by:
        worst = max((r["step_ratio"], r["config"]) for r in rows
                    if r["config"].startswith("graphopt"))
        out.append(f"- slowest graphopt step / aot_eager = {worst[0]:.3f} ({worst[1]}; goal "
                   f"<= 1.3): {'yes' if worst[0] <= 1.3 else 'NO'}")
    errs = [abs(r["predicted"] / r["peak"] - 1) for r in rows if "predicted" in r]
    if errs:
        out.append(f"- predicted peak within {max(errs):.1%} of measured (goal 10%): "
                   f"{'yes' if max(errs) <= 0.10 else 'NO'}")
    return out


# -- 2. planner quality --------------------------------------------------------------------------

def _joint_problem(model, x):
    import graphopt
    from graphopt.memory.joint import capture_joint
    from graphopt.memory.remat.build import build_problem
    joint = capture_joint(graphopt.capture(model, (x,)), (x,))
    return len(joint.graph), build_problem(joint.graph, num_fwd_outputs=joint.num_fwd_outputs)


def random_problem(rng: np.random.Generator, n: int, stages: int):
    """A random candidate DAG with tensors, views and multi-output ops, like a joint graph's:
    each value feeds one or two of the eight before it and is read by backward stages near its
    mirror position."""
    from graphopt.memory.remat.problem import RematProblem
    kind, inputs = [], []
    for v in range(n):
        k = "item" if v and kind[-1] == "tuple" else rng.choice(
            ["tensor"] * 6 + ["view", "tuple"])
        if k == "tuple" and v == n - 1:
            k = "tensor"
        pool = [u for u in range(max(0, v - 8), v) if kind[u] != "tuple"]
        ins = [v - 1] if k == "item" else sorted(set(rng.choice(pool, size=min(
            len(pool), 1 if k == "view" else int(rng.integers(1, 3))), replace=False).tolist())) \
            if pool else []
        if k == "view" and not ins:
            k = "tensor"
        kind.append(k)
        inputs.append(ins)
    nbytes = rng.integers(1, 64, size=n) * 4096
    hold = np.where(np.isin(kind, ["tensor", "item"]), nbytes, 0)
    work = np.where(np.isin(kind, ["tensor", "tuple"]), nbytes, 0)
    cost = np.where(np.isin(kind, ["tensor", "tuple"]), rng.uniform(0.1, 10, size=n), 0.0)
    # As in a joint graph, the backward pass reads forward values roughly in reverse order.
    uses = [[] if k == "tuple" or rng.random() < 0.4 else sorted(set(np.clip(
        round((1 - v / n) * (stages - 1)) + rng.integers(-1, 2, size=int(rng.integers(1, 3))),
        0, stages - 1).tolist())) for v, k in enumerate(kind)]
    return RematProblem(names=[f"n{i}" for i in range(n)], kind=kind, hold=hold, work=work,
                        cost=cost, flops=(cost * 1e6).astype(np.int64),
                        recomputable=(rng.random(n) > 0.05) | np.isin(kind, ["view", "item"]),
                        inputs=inputs, uses=uses,
                        stage_names=[f"s{t}" for t in range(stages)])


def quality(args) -> list[str]:
    from torch import nn
    from graphopt import zoo
    from graphopt.memory.remat.greedy import solve_greedy
    from graphopt.memory.remat.milp import milp_size, solve_milp

    torch.manual_seed(0)
    graphs = {
        "Linear-GELU-Linear": (nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64)),
                               torch.randn(64, 64)),
        "MLP 4 layers": (zoo.MLP(sizes=(64, 128, 128, 128, 10)), torch.randn(64, 64)),
        "ResidualMLP depth 1": (zoo.ResidualMLP(64, 1, 256), torch.randn(64, 64)),
        "ResidualMLP depth 2": (zoo.ResidualMLP(64, 2, 256), torch.randn(64, 64)),
        "ResidualMLP depth 4": (zoo.ResidualMLP(64, 4, 256), torch.randn(64, 64)),
        "SmallCNN (eval-mode batch norm)": (zoo.SmallCNN(channels=8).eval(),
                                            torch.randn(2, 3, 16, 16)),
    }
    lines = ["| graph | joint nodes | candidates / stages | MILP binaries | budget | exact cost (us) "
             "| fast cost (us) | fast / exact | MILP status, gap, s | fast s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    ratios = []
    for name, (model, x) in graphs.items():
        nodes, p = _joint_problem(model, x)
        base = p.saved_bytes(p.default_saved())
        for frac in (0.75, 0.5):
            budget = int(frac * base)
            exact = solve_milp(p, budget, time_limit=args.time_limit)
            fast = solve_greedy(p, budget)
            if not (exact.ok and fast.ok):
                lines.append(f"| {name} | {nodes} | {len(p)} / {p.num_stages} | {milp_size(p)} | "
                             f"{frac} | {exact.status} | {fast.status} | - | - | - |")
                continue
            e, f = exact.evaluation.cost, fast.evaluation.cost
            ratio = f / e if e else 1.0
            ratios.append(ratio)
            lines.append(f"| {name} | {nodes} | {len(p)} / {p.num_stages} | {milp_size(p)} | "
                         f"{frac} | {e * 1e6:.3f} | {f * 1e6:.3f} | {ratio:.3f} | {exact.status}, "
                         f"{(exact.gap or 0):.1e}, {exact.seconds:.2f} | {fast.seconds:.3f} |")
    worst_graph = max(ratios)
    rng = np.random.default_rng(0)
    rand = {0.75: [], 0.5: []}
    missed = {0.75: 0, 0.5: 0}
    for _ in range(args.random):
        p = random_problem(rng, int(rng.integers(15, 40)), int(rng.integers(5, 15)))
        base = p.saved_bytes(p.default_saved())
        for frac in rand:
            exact = solve_milp(p, int(frac * base), time_limit=args.time_limit)
            fast = solve_greedy(p, int(frac * base))
            if exact.status == "optimal" and not fast.ok:
                missed[frac] += 1
            if exact.status == "optimal" and fast.ok and exact.evaluation.cost > 0:
                rand[frac].append(fast.evaluation.cost / exact.evaluation.cost)
    for frac, rs in rand.items():
        if rs:
            within = sum(r <= 1.10 for r in rs)
            lines.append(f"| {args.random} random problems (15-40 candidates) | - | - | - | {frac} "
                         f"| - | - | median {statistics.median(rs):.3f}, max {max(rs):.3f}; "
                         f"{within}/{len(rs)} within 10% | {missed[frac]} feasible for the MILP "
                         "only | - |")
    lines.append("")
    lines.append(f"Worst fast / exact on the model graphs: {worst_graph:.3f} (goal <= 1.10): "
                 f"{'yes' if worst_graph <= 1.10 else 'NO'}.")
    return lines


# -- 3. planner speed ----------------------------------------------------------------------------

def speed(args) -> list[str]:
    from graphopt.memory.remat.greedy import solve_greedy
    from graphopt.memory.remat.build import build_problem
    from graphopt.zoo import ResidualMLP
    import graphopt
    from graphopt.memory.joint import capture_joint

    torch.manual_seed(0)
    model, x = ResidualMLP(dim=16, depth=args.scale_depth, hidden=64), torch.randn(8, 16)
    start = time.perf_counter()
    joint = capture_joint(graphopt.capture(model, (x,)), (x,))
    capture_s = time.perf_counter() - start
    builds, rows = [], []
    for _ in range(5):
        start = time.perf_counter()
        p = build_problem(joint.graph, num_fwd_outputs=joint.num_fwd_outputs)
        builds.append(time.perf_counter() - start)
    base = p.saved_bytes(p.default_saved())
    lines = [f"Joint graph of ResidualMLP(depth={args.scale_depth}): {len(joint.graph):,} nodes, "
             f"{len(p):,} candidates, {p.num_stages:,} stages (tracing it took {capture_s:.1f} s, "
             "not counted). Median of 5 runs:", "",
             "| budget | build problem (s) | fast solver (s) | total (s) | held peak / budget |",
             "|---:|---:|---:|---:|---:|"]
    for frac in (0.5, 0.25):
        times, sol = [], None
        for _ in range(5):
            start = time.perf_counter()
            sol = solve_greedy(p, int(frac * base))
            times.append(time.perf_counter() - start)
        b, s = statistics.median(builds), statistics.median(times)
        lines.append(f"| {frac} | {b:.3f} | {s:.3f} | {b + s:.3f} | "
                     f"{sol.evaluation.peak / int(frac * base):.3f} |")
        rows.append(b + s)
    lines.append("")
    lines.append(f"Slowest: {max(rows):.3f} s (goal < 1 s): {'yes' if max(rows) < 1 else 'NO'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="measured,quality,speed")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=7, help="round-robin timing rounds")
    ap.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per solve")
    ap.add_argument("--random", type=int, default=20, help="random problems for quality")
    ap.add_argument("--scale-depth", type=int, default=290, help="~38 joint nodes per block")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.timing:
        timing_worker(args)
        return
    warnings.filterwarnings("ignore")
    sections = args.sections.split(",")
    md = ["# Memory planning and rematerialization", "",
          f"`python bench/memory.py` on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, Python {platform.python_version()}.",
          ""]
    if "measured" in sections:
        act = args.batch * args.hidden * 4 / MiB
        print(f"measured peak: ResidualMLP(dim={args.dim}, depth={args.depth}, "
              f"hidden={args.hidden}), batch {args.batch}", file=sys.stderr)
        rows, lines = measured(args)
        md += ["## Measured peak of one training step", "",
               f"ResidualMLP(dim={args.dim}, depth={args.depth}, hidden={args.hidden}), batch "
               f"{args.batch}, fp32, loss = mean(out^2): the hidden activations are {act:.0f} MiB "
               "each. Peak = VmHWM - VmRSS before the step, fresh process per row, "
               "MALLOC_MMAP_THRESHOLD_=65536. Predicted = graphopt's liveness of the planned "
               "step (activations, gradients and temporaries).", "", *lines, "", *goals(rows), ""]
        print("\n".join(lines + [""] + goals(rows)))
    if "quality" in sections:
        lines = quality(args)
        md += ["## Planner quality: fast solver vs exact MILP", "",
               "Recompute cost in the shared accounting (roofline microseconds on the h100 "
               f"preset); MILP by HiGHS with a {args.time_limit:.0f} s limit.", "", *lines, ""]
        print("\n".join(lines))
    if "speed" in sections:
        lines = speed(args)
        md += ["## Planner speed on a 10k-node graph", "", *lines, ""]
        print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
