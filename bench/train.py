"""Training benchmark: graphopt's pipeline plan against the equal-FLOPs split, on the engine.

For each model and schedule, both plans train the same steps on the same processes in one launch
(``graphopt.distributed.trainer.run_jobs``: one process start-up; a throw-away warm-up job
first, then every variant round-robin ``--rounds`` times, so the machine's load falls on all
alike): graphopt's plan (:func:`graphopt.planner.training.plan_training`: forward plus
backward weights, training memory) and the equal-FLOPs contiguous split of the forward graph's
order (``graphopt.partition.dp.equal_flops_split``: the split a user makes by hand), and under
GPipe graphopt's plan again with the direct lowering (skips sent straight to their consumer).
Reported per plan: measured step time (median over the steps after the first), the bytes the
engine posted between stages per step (counted in its p2p calls) beside what the lowering
predicts, the measured bubble (idle share of the ranks' step) and the cost model's estimate of
both.

Second table: the backward/forward time ratio of single ops on this CPU (1 thread, autograd),
beside the factor the training cost model uses (``graphopt.op_table.BACKWARD_FACTOR``).

    python bench/train.py                 # writes bench/results/train.md
    python bench/train.py --models gpt2 --steps 4
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

MODELS = {
    "resmlp": ("zoo:resmlp", {}, {}),
    "gpt": ("zoo:gpt", {}, {}),
    "gpt2": ("hf:GPT2LMHeadModel", {"n_layer": 4, "n_embd": 128, "n_head": 4, "vocab_size": 2048,
                                    "n_positions": 128}, {"batch": 8, "seq": 64}),
    "bert": ("hf:BertModel", {"num_hidden_layers": 4, "hidden_size": 128,
                              "num_attention_heads": 4, "intermediate_size": 512,
                              "vocab_size": 2048, "max_position_embeddings": 128},
             {"batch": 8, "seq": 64}),
}


def equal_flops_plan(graph, k: int, model: str):
    """The hand-made split: contiguous, equal forward FLOPs, along the graph's order."""
    from graphopt.partition.costgraph import CostGraph
    from graphopt.partition.dp import cuts_to_parts, equal_flops_split
    from graphopt.partition.plan import Partition
    cg = CostGraph.from_graph(graph, "cpu")
    part = cuts_to_parts(cg, cg.movable, equal_flops_split(cg, cg.movable, k))
    return Partition(model=model, k=k, mode="pipeline", cost_graph=cg, part=part,
                     method="equal_flops", options={"device": "cpu", "link": "loopback"})


def estimate_device(pp: int):
    """``(cost model, what)`` for the estimate: this machine's calibration for ``pp``
    processes when ``graphopt calibrate --world pp`` has cached one, else the cpu preset."""
    from graphopt.costmodel.calibrate import cache_path
    from graphopt.costmodel.device_file import load_device_spec
    from graphopt.costmodel.target import CostModel, Target
    path = cache_path(pp)
    if not path.exists():
        cm = CostModel(Target.preset("cpu"))
        return cm, f"{cm.describe()} (no calibration)"
    cm = CostModel(Target.from_spec(load_device_spec(path), key=path.name))
    return cm, f"{cm.describe()} (`graphopt calibrate --world {pp}`)"


def run_model(name: str, pp: int, microbatches: int, steps: int, schedules: list[str],
              cost_model, rounds: int) -> list[dict]:
    from graphopt.distributed.job import TrainConfig
    from graphopt.distributed.trainer import measured_bubble, run_jobs
    from graphopt.errors import PlanError
    from graphopt.planner.training import estimate_step, make_job, prepare_model
    from graphopt.specs import load_spec
    spec, overrides, kw = MODELS[name]
    loaded = load_spec(spec, overrides=overrides, **kw)
    prep = prepare_model(loaded, TrainConfig.of(pp=pp, microbatches=microbatches))
    jobs, meta = [], []
    for schedule in schedules:
        variants = [("graphopt", None, "relay"),
                    ("equal-FLOPs", equal_flops_plan(prep.graph, pp, spec), "relay")]
        if schedule == "gpipe":      # the same plan with its skips sent straight to the consumer
            variants.append(("graphopt", None, "direct"))
        for label, plan, lowering in variants:
            cfg = TrainConfig.of(pp=pp, schedule=schedule, microbatches=microbatches,
                                 steps=steps, timeout_s=1200, lowering=lowering)
            try:
                job, info = make_job(prep, cfg, plan=plan, cost_model=cost_model)
            except PlanError as exc:           # e.g. a tuple crosses: direct cannot send it
                print(f"  {spec} {schedule} {label} {lowering}: skipped ({exc})", flush=True)
                continue
            est = estimate_step(info.plan, prep, cfg, cost_model)
            jobs.append(job)
            meta.append((schedule, label, lowering, info, est))
    # the first job of a launch pays the processes' warm-up (allocator, kernel caches, lazy
    # imports): a throw-away copy of it runs first, so no measured row carries that cost; then
    # the variants run round-robin ``rounds`` times, so the machine's load drifts over all alike
    warm = copy.copy(jobs[0])
    warm.config = dataclasses.replace(jobs[0].config, steps=2)
    runs = run_jobs([warm] + jobs * rounds)[1:]
    rows = []
    for i, (job, (schedule, label, lowering, info, est)) in enumerate(zip(jobs, meta)):
        mine = runs[i::len(jobs)]
        step = statistics.median(r.median_step_seconds for r in mine)
        relay = (info.relay["forward"] + info.relay["backward"]) * microbatches
        rows.append({"model": spec, "schedule": schedule, "plan": label, "lowering": lowering,
                     "method": info.plan.method, "imbalance": info.plan.summary()["imbalance"],
                     "step_s": step, "est_s": est["step_seconds"],
                     "spread": (min(r.median_step_seconds for r in mine),
                                max(r.median_step_seconds for r in mine)),
                     "bytes": mine[0].sent_bytes[mine[0].timed_step], "bytes_planned": relay,
                     "plan_comm": info.plan.summary()["comm_bytes"],
                     "bubble": statistics.median(measured_bubble(r) for r in mine),
                     "est_bubble": est["bubble"], "samples_s": job.batches.batch / step,
                     "losses": mine[0].losses})
    return rows


def joint_check(name: str, pp: int, microbatches: int) -> tuple[str, int, int, int]:
    """(model, forward FLOPs, aot_autograd joint-graph FLOPs, the cost model's training FLOPs)."""
    from graphopt.distributed.job import TrainConfig
    from graphopt.memory.joint import capture_joint
    from graphopt.planner.training import prepare_model, training_cost_graph
    from graphopt.specs import load_spec
    spec, overrides, kw = MODELS[name]
    prep = prepare_model(load_spec(spec, overrides=overrides, **kw),
                         TrainConfig.of(pp=pp, microbatches=microbatches))
    joint = capture_joint(prep.graph, [t[:prep.micro] for t in prep.batches.example])
    return (spec, prep.graph.total_flops, joint.graph.total_flops,
            training_cost_graph(prep.graph, "cpu").total_flops)


def _time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def backward_ratios() -> list[tuple[str, float, float]]:
    """(op, measured backward/forward time, the model's factor) on 1 thread."""
    from graphopt.cost import OpClass
    from graphopt.op_table import BACKWARD_FACTOR
    torch.set_num_threads(1)
    big = torch.randn(1024, 1024, requires_grad=True)
    other = torch.randn(1024, 1024, requires_grad=True)
    x = torch.randn(512, 512, requires_grad=True)
    w = torch.randn(512, 512, requires_grad=True)
    data = torch.randn(512, 512)
    img = torch.randn(8, 32, 32, 32, requires_grad=True)
    conv = torch.nn.Conv2d(32, 32, 3, padding=1)
    q = torch.randn(4, 4, 128, 64, requires_grad=True)
    ln = torch.nn.LayerNorm(1024)
    cases = [
        ("mm, both operands", lambda: torch.mm(x, w), [x, w], 2.0),
        ("mm, weight only", lambda: torch.mm(data, w), [w], 1.0),
        ("conv2d 3x3", lambda: conv(img), [img] + list(conv.parameters()), 2.0),
        ("sdpa (causal)", lambda: torch.nn.functional.scaled_dot_product_attention(
            q, q, q, is_causal=True), [q], BACKWARD_FACTOR[OpClass.ATTENTION]),
        ("layer_norm", lambda: ln(big), [big] + list(ln.parameters()),
         BACKWARD_FACTOR[OpClass.NORM]),
        ("gelu", lambda: torch.nn.functional.gelu(big), [big], 1.0),
        ("softmax", lambda: big.softmax(-1), [big], 1.5),
        ("mul", lambda: big * other, [big, other], 1.0),
        ("add", lambda: big + other, [big, other], 1.0),
    ]
    out = []
    for name, fn, leaves, factor in cases:
        def step(fn=fn, leaves=leaves):
            y = fn()
            torch.autograd.grad(y, leaves, torch.ones_like(y))
        fn(), step()
        reps = max(1, int(0.02 / max(_time(fn, 3), 1e-6)))   # ~20 ms per measurement

        def many(f, n=reps):
            for _ in range(n):
                f()
        ratios = []
        for _ in range(9):     # forward and forward+backward alternate: load drifts hit both
            fwd = _time(lambda: many(fn), 1)
            both = _time(lambda: many(step), 1)
            ratios.append(max(both - fwd, 0.0) / fwd)
        out.append((name, statistics.median(ratios), factor))
    return out


def write(rows: list[dict], ratios, joints, path: Path, args, what: str, threads: int) -> None:
    lines = ["# Training on the engine: graphopt's plan vs the equal-FLOPs split", "",
             f"`python bench/train.py --pp {args.pp} --microbatches {args.microbatches} --steps "
             f"{args.steps} --rounds {args.rounds}`; {platform.machine()}, {threads} threads visible, "
             f"torch {torch.__version__}, gloo on one host (2 shared CPU cores: timings are "
             "noisy: all variants of a model ran in one launch, round-robin, after a warm-up job). "
             "Step: median over the rounds of each round's median over the steps after the "
             "first, with the rounds' range. Bytes: what the engine posted between stages in one step "
             "(p2p calls counted), beside the relay lowering's prediction; plan comm: the "
             "plan's own one-send-per-consumer count per micro-batch. Estimate: "
             f"`graphopt.planner.training.estimate_step` on {what}.", "",
             "| model | schedule | plan | lowering | imbalance | step ms (min-max) | est. ms | "
             "samples/s | bytes/step | predicted | plan comm/mb | bubble | est. bubble |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['schedule']} | {r['plan']} ({r['method']}) | "
                     f"{r['lowering']} | "
                     f"{r['imbalance']:.1%} | {r['step_s'] * 1e3:.1f} ({r['spread'][0] * 1e3:.0f}-"
                     f"{r['spread'][1] * 1e3:.0f}) | {r['est_s'] * 1e3:.2f} | "
                     f"{r['samples_s']:.0f} | {r['bytes']:,} | {r['bytes_planned']:,} | "
                     f"{r['plan_comm']:,} | {r['bubble']:.0%} | {r['est_bubble']:.0%} |")
    lines += ["", "## Training FLOPs: the per-op backward factors against aot_autograd's backward",
              "", "Forward FLOPs times (1 + b) per node, summed, against the FLOPs of the joint "
              "forward+backward graph aot_autograd traces for the same micro-batch.", "",
              "| model | forward | joint graph | cost model | ratio |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {m} | {f:,} | {j:,} | {o:,} | {o / j:.3f} |" for m, f, j, o in joints]
    lines += ["", "## Backward / forward time of single ops (1 thread, autograd)", "",
              "| op | measured | cost model |", "|---|---:|---:|"]
    lines += [f"| {name} | {m:.2f} | {f:.2f} |" for name, m, f in ratios]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--schedules", default="gpipe,1f1b")
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--microbatches", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin repeats of every variant")
    ap.add_argument("-o", "--out", default=str(Path(__file__).parent / "results" / "train.md"))
    args = ap.parse_args()
    threads = torch.get_num_threads()
    cost_model, what = estimate_device(args.pp)
    rows = []
    for name in args.models.split(","):
        t = time.perf_counter()
        got = run_model(name, args.pp, args.microbatches, args.steps, args.schedules.split(","),
                        cost_model, args.rounds)
        rows += got
        for r in got:
            print(f"{r['model']:>20} {r['schedule']:>5} {r['plan']:>12} {r['lowering']:>6}: "
                  f"{r['step_s'] * 1e3:8.1f} ms (est {r['est_s'] * 1e3:7.2f}), "
                  f"{r['bytes']:>10,} B/step (predicted {r['bytes_planned']:,}), "
                  f"bubble {r['bubble']:.0%}", flush=True)
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    joints = [joint_check(name, args.pp, args.microbatches) for name in args.models.split(",")]
    for m, _, j, o in joints:
        print(f"{m:>20}: training FLOPs {o:,} vs joint graph {j:,} ({o / j:.3f})")
    ratios = backward_ratios()
    for name, m, f in ratios:
        print(f"{name:>20}: backward/forward {m:.2f} (model {f:.2f})")
    write(rows, ratios, joints, Path(args.out), args, what, threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
