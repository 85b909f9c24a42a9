"""DDP's gradient sync on ranks that share this host's cores: measured beside the simulator.

For a 2-layer GPT-2 and a 2-layer Llama (the configs of ``bench/parallel.py``, batch 8 split over
the ranks) on N = 2 and 4 processes, gloo on 127.0.0.1, each rank times its forward and its
backward, the median of 20 steps after a warm-up, a barrier before each step:

* **alone**: one process (N = 1) on the same per-rank micro-batch;
* **plain**: N processes at once, no DDP: what sharing the cores costs by itself;
* **DDP**: the same wrapped in ``DistributedDataParallel`` as ``graphopt train`` wraps it
  (``find_unused_parameters=True``), so the backward also all-reduces the gradients.

Predicted, from the plain forward and backward and the ring all-reduce calibrated for N
processes (``graphopt calibrate --world N``, this machine's cached spec): the simulator's step
with DDP's buckets overlapping the backward (``overlap_sync=True``, as on a GPU) and reduced after
it (``overlap_sync=False``, what the planner assumes for CPU ranks). The error column is
predicted / measured - 1 for the DDP step.

    python bench/ddp_sync.py          # about 2 min: results/ddp_sync.md
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from parallel import MODELS, device_for  # noqa: E402

STEPS, WARMUP, BATCH = 20, 3, 8


def _rank_step(rank: int, world: int, name: str, ddp: bool, batch: int) -> dict:
    import torch.distributed as dist

    from graphopt.specs import load_spec
    spec, overrides, kw = MODELS[name]
    kw = dict(kw, batch=batch)
    loaded = load_spec(spec, overrides=overrides, seed=0, **kw)
    model = loaded.model.train()
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, find_unused_parameters=True)
    fwd, bwd = [], []
    for i in range(WARMUP + STEPS):
        dist.barrier()
        start = time.perf_counter()
        out = model(*loaded.inputs, **(loaded.kwargs or {}))
        loss = out.logits.float().mean()
        mid = time.perf_counter()
        loss.backward()
        end = time.perf_counter()
        model.zero_grad(set_to_none=True)
        if i >= WARMUP:
            fwd.append(mid - start)
            bwd.append(end - mid)
    return {"forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
            "grad_bytes": grad_bytes}


def _slowest(per_rank: list[dict]) -> dict:
    """The step is done when every rank is: the slowest rank's forward and backward."""
    return max(per_rank, key=lambda r: r["forward_s"] + r["backward_s"])


def main() -> int:
    from graphopt.costmodel.device import LinkSpec
    from graphopt.costmodel.simulate import simulate_step
    from graphopt.launch import run_workers
    rows = []
    for name in ("gpt2", "llama"):
        for n in (2, 4):
            print(f"{name} N={n} ...", file=sys.stderr, flush=True)
            _, _, doc = device_for(n, False)
            ar = doc["links"]["allreduce"]
            ring = LinkSpec("ring", ar["ring_alpha_s"], 1.0 / ar["ring_beta_s_per_byte"])
            micro = BATCH // n
            one = run_workers(_rank_step, 1, (name, False, micro), timeout_s=300)[0]
            plain = _slowest(run_workers(_rank_step, n, (name, False, micro), timeout_s=300))
            ddp = _slowest(run_workers(_rank_step, n, (name, True, micro), timeout_s=300))
            pred = {}
            for overlap in (True, False):
                est = simulate_step([plain["forward_s"]], [plain["backward_s"]], [], None, "1f1b",
                                    1, dp=n, grad_bytes_per_stage=[plain["grad_bytes"]],
                                    allreduce_link=ring, overlap_sync=overlap)
                pred[overlap] = est.step_seconds
            measured = ddp["forward_s"] + ddp["backward_s"]
            rows.append({"model": name, "n": n,
                         "alone_s": one["forward_s"] + one["backward_s"],
                         "plain_s": plain["forward_s"] + plain["backward_s"],
                         "ddp_s": measured, "grad_bytes": plain["grad_bytes"],
                         "overlap_s": pred[True], "after_s": pred[False]})
    lines = ["# DDP gradient sync on shared cores: measured vs simulated", "",
             "`python bench/ddp_sync.py`. Per-rank step = forward + backward of the slowest rank, "
             f"median of {STEPS} steps; batch {BATCH} split over N ranks; gloo on 127.0.0.1.", "",
             "| model | N | grad bytes | alone ms | N plain ms (x alone) | N with DDP ms | DDP adds "
             "ms | simulated, overlapped ms (error) | simulated, after backward ms (error) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n']} | {r['grad_bytes']:,} | {r['alone_s'] * 1e3:.1f} | "
            f"{r['plain_s'] * 1e3:.1f} ({r['plain_s'] / r['alone_s']:.2f}x) | "
            f"{r['ddp_s'] * 1e3:.1f} | {(r['ddp_s'] - r['plain_s']) * 1e3:.1f} | "
            f"{r['overlap_s'] * 1e3:.1f} ({r['overlap_s'] / r['ddp_s'] - 1:+.0%}) | "
            f"{r['after_s'] * 1e3:.1f} ({r['after_s'] / r['ddp_s'] - 1:+.0%}) |")
    text = "\n".join(lines) + "\n"
    out = HERE / "results" / "ddp_sync.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
