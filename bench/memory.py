"""Memory benchmark: measured peak and step time of training steps under a memory budget, planner
quality, planner speed.

1. **Measured peak** of a residual MLP with LayerNorm and GELU (12 blocks, 16 MiB hidden
   activations) and of a small Llama from transformers (random weights, language-model loss).
   Each configuration runs in a fresh process with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed
   tensors go back to the OS): an eager step gives the reference gradients, two compiled warm-up
   steps follow, then ``5`` written to ``/proc/self/clear_refs`` resets the high-water mark, one
   step runs, and the peak is ``VmHWM`` minus the ``VmRSS`` before it; its gradients are compared
   with the eager ones. Configurations: ``aot_eager`` (in this torch, the min-cut partitioner at
   its default budget 1.0); graphopt with ``memory_budget`` B; the min-cut partitioner with
   ``torch._functorch.config.activation_memory_budget`` B; ``torch.utils.checkpoint`` around
   every block (eager); B in 1.0, 0.75, 0.5, 0.25, 0.1. Step time: configurations compiled in one
   process and stepped round-robin (the machine's load falls on all alike); the ratio to
   aot_eager is the median of the per-round ratios. The goals print as PASS/FAIL lines.
2. **Planner quality**: the fast solver's recompute cost against the exact MILP's on joint graphs
   of small models and on random problems, at budgets 0.75 and 0.5.
3. **Planner speed**: the fast solver on a ~10k-node joint graph.

    python bench/memory.py                        # all three; writes results/memory.md
    python bench/memory.py --sections measured --models mlp
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import inspect
import json
import os
import platform
import resource
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
BUDGETS = (1.0, 0.75, 0.5, 0.25, 0.1)
MODELS = ("mlp", "llama")
# Step time: what the goals need, and the rows a reader compares with.
TIMED = ("aot_eager", "checkpoint", "graphopt@0.5", f"graphopt@{BUDGETS[-1]}", "mincut@0.5")


def configs() -> list[str]:
    """Every measured configuration. ``mincut@1.0`` is ``aot_eager`` where that backend is the
    min-cut partitioner at its default budget (this torch), so it is not run twice."""
    from torch._dynamo.backends import debugging
    same = "min_cut_rematerialization_partition" in inspect.getsource(debugging.aot_eager)
    return ["aot_eager", "checkpoint", *(f"graphopt@{b}" for b in BUDGETS),
            *(f"mincut@{b}" for b in BUDGETS if not (same and b == 1.0))]


# -- 1. measured peak (one configuration per process) -------------------------------------------

def _status(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) * 1024  # kB


def build(model: str, args):
    """``(module, loss(fn), checkpointed module)`` of a benchmark model, random weights. The
    Llama module returns its loss only: compiled whole, a step that also returned the logits
    would get a zero cotangent for them (8 MiB here) that no eager step allocates."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    if model == "mlp":
        from graphopt.zoo import ResidualMLP
        net = ResidualMLP(dim=args.dim, depth=args.depth, hidden=args.hidden).train()
        x = torch.randn(args.batch, args.dim)

        class Checkpointed(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                for block in self.inner.blocks:
                    x = x + checkpoint(block, x, use_reentrant=False)
                return self.inner.head(x)

        return net, lambda fn: fn(x).square().mean(), Checkpointed(net)
    import transformers
    cfg = transformers.LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=512,
                                   num_hidden_layers=6, num_attention_heads=4,
                                   num_key_value_heads=4, max_position_embeddings=args.seq,
                                   use_cache=False, attn_implementation="sdpa")
    class LossOnly(nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(input_ids=ids, labels=ids).loss

    lm = transformers.LlamaForCausalLM(cfg).train()
    ids = torch.randint(0, cfg.vocab_size, (args.seqs, args.seq))
    ckpt = copy.deepcopy(lm)
    ckpt.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return LossOnly(lm), lambda fn: fn(ids), LossOnly(ckpt)


def describe(model: str, args) -> str:
    if model == "mlp":
        act = args.batch * args.hidden * 4 / MiB
        return (f"ResidualMLP(dim={args.dim}, depth={args.depth}, hidden={args.hidden}) (LayerNorm, "
                f"Linear, GELU, Linear per block), batch {args.batch}, loss mean(out^2): hidden "
                f"activations of {act:.0f} MiB")
    return (f"LlamaForCausalLM (hidden 128, 6 layers, 4 heads, MLP 512, vocab 2048), "
            f"{args.seqs} sequences of {args.seq} tokens, language-model loss")


def compiled(config: str, net, wrapped, dump: str, reset: bool = True):
    import torch._dynamo
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.backends.debugging import boxed_nop
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    if reset:
        torch._dynamo.reset()
    if config == "checkpoint":
        return wrapped
    if config == "aot_eager":
        return torch.compile(net, backend="aot_eager", fullgraph=True)
    kind, budget = config.split("@")
    if kind == "graphopt":
        return torch.compile(net, backend="graphopt", fullgraph=True,
                             options={"memory_budget": float(budget), "dump_dir": dump})
    torch._functorch.config.activation_memory_budget = float(budget)
    backend = aot_autograd(fw_compiler=boxed_nop, bw_compiler=boxed_nop,
                           partition_fn=min_cut_rematerialization_partition,
                           keep_inference_input_mutations=True)
    return torch.compile(net, backend=backend, fullgraph=True)


def reference(model: str, args, path: str) -> None:  # eager gradients, in parameter order
    net, loss, _ = build(model, args)
    loss(net).backward()
    torch.save([None if p.grad is None else p.grad.detach() for p in net.parameters()], path)


def worker(args) -> None:
    """One configuration: a warm-up step (compilation), then three measured steps; the peak is
    the least of the three (a transient allocation only ever adds to a high-water mark)."""
    warnings.filterwarnings("ignore")
    libc = ctypes.CDLL("libc.so.6")
    net, loss, wrapped = build(args.model, args)
    train = wrapped if args.worker == "checkpoint" else net
    ref = torch.load(args.ref)
    dump = tempfile.mkdtemp(prefix="graphopt-bench-")
    fn = compiled(args.worker, net, wrapped, dump)
    loss(fn).backward()
    peaks = []
    for _ in range(3):
        train.zero_grad(set_to_none=True)
        gc.collect()
        libc.malloc_trim(0)
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        loss(fn).backward()
        peaks.append(_status("VmHWM") - before)
    got = [p.grad for p in train.parameters()]
    errs = [float((g - r).norm() / r.norm().clamp_min(1e-30)) if g is not None else float("inf")
            for g, r in zip(got, ref) if r is not None]
    nan = any(torch.isnan(g).any() for g in got if g is not None)
    out = {"config": args.worker, "peak": min(peaks), "grad_err": float("nan") if nan else
           max(errs, default=0.0)}
    plans = sorted(Path(dump).glob("*_memory.json"))
    if plans:
        plan = json.loads(plans[-1].read_text())
        out.update(predicted=plan["plan"]["peak_bytes"], held=plan["plan"]["held_peak_bytes"],
                   baseline_saved=plan["baseline"]["saved_bytes"],
                   budget_bytes=plan["budget_bytes"], recomputed=len(plan["plan"]["recomputed"]),
                   recomputations=(plan.get("solver") or {}).get("recomputations"))
    print(json.dumps(out))


def _model_args(args) -> list[str]:
    return ["--model", args.model, "--dim", str(args.dim), "--hidden", str(args.hidden),
            "--depth", str(args.depth), "--batch", str(args.batch), "--seq", str(args.seq),
            "--seqs", str(args.seqs)]


def _run(cmd: list[str], env=None) -> dict:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{' '.join(cmd[2:])} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measured(args) -> tuple[list[dict], list[str], list[str]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    ref = os.path.join(tempfile.mkdtemp(prefix="graphopt-bench-"), "grads.pt")
    reference(args.model, args, ref)
    rows = []
    for config in configs():
        rows.append(_run([sys.executable, __file__, "--worker", config, "--ref", ref,
                          *_model_args(args)], env))
        print(f"  {args.model} {config:16s} peak {rows[-1]['peak'] / MiB:8.1f} MiB", file=sys.stderr,
              flush=True)
    steps = timing(args)
    for r in rows:
        r["step_s"], r["step_ratio"] = steps.get(r["config"], (None, None))
    base = next(r for r in rows if r["config"] == "aot_eager")
    lines = ["| configuration | measured peak (MiB) | vs aot_eager | predicted (MiB) | "
             "held / budget (MiB) | recomputations | step (s) | vs aot_eager | grads vs eager |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pred = f"{r['predicted'] / MiB:.1f}" if "predicted" in r else "-"
        held = f"{r['held'] / MiB:.1f} / {r['budget_bytes'] / MiB:.1f}" if "held" in r else "-"
        step = f"{r['step_s']:.3f} | {r['step_ratio']:.3f}" if r["step_s"] else "- | -"
        lines.append(f"| {r['config']} | {r['peak'] / MiB:.1f} | {r['peak'] / base['peak']:.3f} "
                     f"| {pred} | {held} | {r.get('recomputations', '-')} | {step} | "
                     f"{r['grad_err']:.1e} |")
    return rows, lines, goals(rows)


def timing(args) -> dict[str, tuple[float, float]]:
    """Step time, round-robin in one process (plain allocator), so the load the machine
    carries falls on every configuration alike: (median, median ratio to aot_eager)."""
    out = _run([sys.executable, __file__, "--timing", *_model_args(args), "--steps", str(args.steps)])
    return {k: tuple(v) for k, v in out.items()}


def timing_worker(args) -> None:
    import torch._dynamo
    warnings.filterwarnings("ignore")
    for limit in ("cache_size_limit", "recompile_limit"):  # one compile per configuration
        setattr(torch._dynamo.config, limit, 64)
    runs = {}
    for config in TIMED:
        net, loss, wrapped = build(args.model, args)
        fn = compiled(config, net, wrapped, tempfile.mkdtemp(prefix="graphopt-bench-"),
                      reset=False)
        loss(fn).backward()  # compile now, under this configuration's settings
        torch._functorch.config.activation_memory_budget = 1.0
        runs[config] = (wrapped if config == "checkpoint" else net, fn, loss)
    times = {c: [] for c in runs}
    for _ in range(max(args.steps, 1)):
        for config, (m, fn, loss) in runs.items():
            m.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss(fn).backward()
            times[config].append(time.perf_counter() - start)
    ref = times["aot_eager"]
    # The load on a shared machine comes and goes: compare within each round, then take the
    # median of those ratios.
    print(json.dumps({c: [statistics.median(t), statistics.median(
        a / b for a, b in zip(t, ref))] for c, t in times.items()}))


def goals(rows: list[dict]) -> list[str]:
    """The PASS/FAIL lines. Peaks are compared with a slack of 0.5 MiB: two rows that run the
    very same plan (graphopt at 1.0 and 0.75 on the MLP) measured up to 0.5 MiB apart."""
    by = {r["config"]: r for r in rows}
    slack = 0.5 * MiB
    aot = by["aot_eager"]["peak"]
    out = []

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'PASS' if ok else 'FAIL'}: {text}")

    for b in BUDGETS:
        g = by[f"graphopt@{b}"]["peak"]
        m = by.get(f"mincut@{b}", by["aot_eager"])["peak"]
        line(g <= min(aot, m) + slack, f"at budget {b}: graphopt {g / MiB:.1f} MiB <= aot_eager "
             f"{aot / MiB:.1f} and min-cut {m / MiB:.1f} MiB")
    peaks = [by[f"graphopt@{b}"]["peak"] for b in BUDGETS]
    line(all(a + slack >= c for a, c in zip(peaks, peaks[1:])),
         "peak falls with the budget: " + " >= ".join(f"{p / MiB:.1f}" for p in peaks) + " MiB")
    r = by["graphopt@0.5"]["peak"] / aot
    line(r <= 0.6, f"at 0.5: graphopt / aot_eager = {r:.3f} (goal <= 0.6)")
    low, ck = by[f"graphopt@{BUDGETS[-1]}"]["peak"], by["checkpoint"]["peak"]
    line(low <= ck + slack, f"least budget {BUDGETS[-1]}: graphopt {low / MiB:.1f} MiB <= per-block "
         f"checkpoint {ck / MiB:.1f} MiB")
    ratio = by["graphopt@0.5"].get("step_ratio")
    if ratio is not None:
        line(ratio <= 1.3, f"step time at 0.5 / aot_eager = {ratio:.3f} (goal <= 1.3)")
    worst = max(rows, key=lambda r: (not r["grad_err"] < 1e-5, r["grad_err"]))  # NaN first
    line(worst["grad_err"] < 1e-5, f"gradients equal eager's: largest relative error "
         f"{worst['grad_err']:.1e} ({worst['config']}; goal < 1e-5)")
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
    x = torch.randn(64, 64)
    graphs = {"Linear-GELU-Linear": (nn.Sequential(nn.Linear(64, 256), nn.GELU(),
                                                   nn.Linear(256, 64)), x),
              "MLP 4 layers": (zoo.MLP(sizes=(64, 128, 128, 128, 10)), x),
              **{f"ResidualMLP depth {d}": (zoo.ResidualMLP(64, d, 256), x) for d in (1, 2, 4)},
              "SmallCNN (eval-mode batch norm)": (zoo.SmallCNN(channels=8).eval(),
                                                  torch.randn(2, 3, 16, 16))}
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
    rng, rand, missed = np.random.default_rng(0), {0.75: [], 0.5: []}, {0.75: 0, 0.5: 0}
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
    lines += ["", f"- {'PASS' if worst_graph <= 1.10 else 'FAIL'}: worst fast / exact on the "
              f"model graphs {worst_graph:.3f} (goal <= 1.10)"]
    return lines


# -- 3. planner speed ----------------------------------------------------------------------------

def speed(args) -> list[str]:
    import graphopt
    from graphopt.memory.joint import capture_joint
    from graphopt.memory.remat.build import build_problem
    from graphopt.memory.remat.greedy import solve_greedy
    from graphopt.zoo import ResidualMLP
    torch.manual_seed(0)
    model, x = ResidualMLP(dim=16, depth=args.scale_depth, hidden=64), torch.randn(8, 16)
    start = time.perf_counter()
    joint = capture_joint(graphopt.capture(model, (x,)), (x,))
    capture_s = time.perf_counter() - start
    def timed(fn):  # CPU time is the planner's own work; wall time counts the machine's load
        c, w = time.process_time(), time.perf_counter()
        out = fn()
        return time.process_time() - c, time.perf_counter() - w, out

    builds = [timed(lambda: build_problem(joint.graph, num_fwd_outputs=joint.num_fwd_outputs))
              for _ in range(3)]
    p = builds[-1][2]
    base = p.saved_bytes(p.default_saved())
    lines = [f"Joint graph of ResidualMLP(depth={args.scale_depth}): {len(joint.graph):,} nodes, "
             f"{len(p):,} candidates, {p.num_stages:,} stages (tracing it took {capture_s:.1f} s, "
             "not counted). Median of 3 runs, CPU seconds (wall seconds):", "",
             "| budget | build problem | fast solver | total | held peak / budget |",
             "|---:|---:|---:|---:|---:|"]
    rows = []
    bc, bw = (statistics.median(b[i] for b in builds) for i in (0, 1))
    for frac in (0.5, 0.25):
        runs = [timed(lambda: solve_greedy(p, int(frac * base))) for _ in range(3)]
        sc, sw = (statistics.median(r[i] for r in runs) for i in (0, 1))
        lines.append(f"| {frac} | {bc:.3f} ({bw:.3f}) | {sc:.3f} ({sw:.3f}) | {bc + sc:.3f} "
                     f"({bw + sw:.3f}) | {runs[-1][2].evaluation.peak / int(frac * base):.3f} |")
        rows.append(bc + sc)
    return lines + ["", f"- {'PASS' if max(rows) < 1 else 'FAIL'}: slowest {max(rows):.3f} CPU s (goal 1 s)"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="measured,quality,speed")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--model", default="mlp", help=argparse.SUPPRESS)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=256, help="Llama: tokens per sequence")
    ap.add_argument("--seqs", type=int, default=4, help="Llama: sequences per batch")
    ap.add_argument("--steps", type=int, default=3, help="round-robin timing rounds")
    ap.add_argument("--time-limit", type=float, default=20.0, help="MILP seconds per solve")
    ap.add_argument("--random", type=int, default=10, help="random problems for quality")
    ap.add_argument("--scale-depth", type=int, default=290, help="~38 joint nodes per block")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.md"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--ref", help=argparse.SUPPRESS)
    ap.add_argument("--timing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker or args.timing:
        return worker(args) if args.worker else timing_worker(args)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    sections = args.sections.split(",")
    md = ["# Memory planning and rematerialization", "",
          f"`python {' '.join(['bench/memory.py', *sys.argv[1:]])}` on "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__}, Python {platform.python_version()}.", ""]
    if "measured" in sections:
        md += ["## Measured peak of one training step", "", "Peak = least over three steps of "
               "VmHWM - VmRSS before the step, fresh process per row, MALLOC_MMAP_THRESHOLD_=65536. "
               "Predicted = graphopt's liveness of the planned step; held = what its plan keeps for "
               "the backward pass at the worst stage, against the budget (below the feasible "
               "minimum: the minimum); recomputations count each segment.", ""]
        for model in args.models.split(","):
            args.model = model
            print(f"measured peak: {describe(model, args)}", file=sys.stderr)
            rows, lines, checks = measured(args)
            md += [f"### {describe(model, args)}", "", *lines, "", *checks, ""]
            print("\n".join([describe(model, args), *lines, "", *checks, ""]))
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
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF,
              resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    md.append(f"Total run time: {time.perf_counter() - start:.0f} s wall, {cpu:.0f} s CPU "
              f"(all processes; the load average was {os.getloadavg()[0]:.1f} at the end).")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(md) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
