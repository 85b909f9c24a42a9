"""Measure this machine into a ``graphopt.device/1`` document (see :mod:`graphopt.costmodel.device_file`).

What is measured, and why that way:

* **matmul FLOP/s** per dtype (float32, bfloat16 where the device runs it; float16 on CUDA) at
  several square sizes: small matmuls run far below the peak, and the model's matmuls are small.
* **memory bandwidth**: a large copy (2 bytes moved per byte) and a large add (3 per byte); the
  add's rate is the one the roofline uses, since elementwise ops read two inputs and write one.
* **per-op overhead**: a chain of one-element adds, and one of views (aliasing ops move no bytes
  but still pay the dispatcher), each a generated ``torch.fx`` module of ATen calls run with
  autograd recording: that is how a training stage runs its graph, and each call through an
  ATen overload with autograd on costs about twice a bare ``torch.add`` in a loop.
* **attention**: the fused attention op at model-like shapes (causal, no dropout), FLOPs counted
  by the cost model: on a CPU it runs at half the matmul rate or less.
* **random draws**: dropout's elements per second (drawing a random number costs far more than
  the multiply the roofline would charge: 10+ ns an element on a CPU core).
* **links**: a ring shift (every rank sends to the next and receives from the previous, at once,
  as pipeline stages do) and an all-reduce, at sizes from 1 KiB to 64 MiB over gloo (CPU) or NCCL
  (a GPU per rank); ``alpha`` and ``beta`` come from a least-squares fit of ``T = alpha + beta·m``
  weighted by ``1/T`` (so small messages count as much as large ones), with the fit's relative error.

On a CPU all ranks measure compute at the same time with ``cores // world`` threads each, because
that is how a training run on this host shares its cores and memory bandwidth: the rates are per
process under that sharing. Every wait has a timeout; a worker that hangs is terminated.

Processes start through :func:`graphopt.launch.run_workers` (spawn, gloo or NCCL on
127.0.0.1, one limit for the whole job).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from graphopt.cost import node_flops
from graphopt.costmodel.device_file import SCHEMA, current_device_type
from graphopt.errors import GraphoptError
from graphopt.launch import WorkerError, run_workers

__all__ = ["CalibrationError", "calibrate", "fit_alpha_beta", "machine_info", "cache_path",
           "LINK_SIZES", "QUICK_LINK_SIZES"]

KIB, MIB = 1 << 10, 1 << 20
LINK_SIZES = [KIB << (2 * i) for i in range(9)]          # 1 KiB, 4 KiB, ... 64 MiB
QUICK_LINK_SIZES = [KIB, 64 * KIB, 1 * MIB]


class CalibrationError(GraphoptError):
    """Calibration could not run as asked (bad world size, workers that failed or hung)."""


# -- timing -----------------------------------------------------------------------------------------
def _sync(device: str):
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _median_seconds(fn, device: str, budget_s: float, min_reps: int = 3, max_reps: int = 9,
                    batch_s: float = 0.03) -> float:
    """Seconds per call of ``fn()``: the median over batches of back-to-back calls.

    A batch lasts at least ``batch_s`` (several scheduler time slices), so the time a process
    loses to others on a shared host is counted as a training run would feel it: the median of
    single short calls would keep only the calls nobody interrupted and report the speed of an
    idle machine. The number of batches fits ``budget_s``.
    """
    sync = _sync(device)
    fn()
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = max(time.perf_counter() - start, 1e-9)
    batch = max(1, int(batch_s / first))
    reps = int(min(max_reps, max(min_reps, budget_s / (first * batch))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        sync()
        times.append((time.perf_counter() - start) / batch)
    return float(np.median(times))


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"  {text}", file=sys.stderr, flush=True)


# -- compute, memory, overhead ----------------------------------------------------------------------
def _matmul_dtypes(device: str) -> list[str]:
    return ["float32", "bfloat16", "float16"] if device == "cuda" else ["float32", "bfloat16"]


def _matmul_sizes(device: str, quick: bool) -> list[int]:
    if device == "cuda":
        return [1024, 4096] if quick else [512, 1024, 2048, 4096, 8192]
    return [128, 256] if quick else [128, 256, 512, 1024]


def _vector_rates(dev, device: str, budget: float) -> dict[str, float]:
    """Effective FLOP/s of the non-matmul ops a model is made of, FLOPs counted by the cost model.

    One rate for every pointwise op is crude (a ``tanh`` costs far more per element than an
    ``add``), so it is taken as the median over a mix, each op's FLOPs counted exactly as
    :func:`graphopt.cost.node_flops` counts them: the roofline then reproduces the mix's times.
    Activation-sized tensors (1 MiB on a CPU), outputs allocated and freed as in a model.
    """

    aten = torch.ops.aten
    x = torch.randn((64 if device == "cuda" else 1) * MIB // 4 // 256, 256, device=dev)
    cases = {"mul": (aten.mul.Tensor, (x, x)), "exp": (aten.exp.default, (x,)),
             "gelu": (aten.gelu.default, (x,)), "softmax": (aten._softmax.default, (x, -1, False)),
             "layer_norm": (aten.native_layer_norm.default, (x, [256], None, None, 1e-5))}
    rates = {}
    for name, (op, args) in cases.items():
        flops = node_flops(op, list(args), {}, op(*args))
        rates[name] = flops / _median_seconds(lambda: op(*args), device, budget / 2)
    return rates


def _chain(op, length: int, dev):
    """A ``torch.fx`` module of ``length`` ATen calls of ``op`` on a one-element tensor that
    requires grad, as a stage runs its graph in training (returns a function to time)."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    for _ in range(length):
        x = graph.call_function(op, (x, [-1]) if op is torch.ops.aten.view.default else (x, x))
    graph.output(x)
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    tiny = torch.ones(1, device=dev, requires_grad=True)
    return lambda: gm(tiny)


def _attention_rates(dev, device: str, budget: float) -> list[dict]:
    """FLOP/s of the fused attention op (causal, no dropout) at (batch x heads, tokens, head
    dim) shapes from small LMs up, FLOPs counted as :func:`graphopt.cost.node_flops` counts."""

    op = torch.ops.aten.scaled_dot_product_attention.default
    shapes = [(16, 64, 32), (16, 128, 64), (32, 256, 64)] + \
        ([(64, 1024, 64), (64, 2048, 128)] if device == "cuda" else [])
    rows = []
    for bh, s, d in shapes:
        q = torch.randn(1, bh, s, d, device=dev)
        args = [q, q, q, None, 0.0, True]
        flops = node_flops(op, args, {}, op(*args))
        seconds = _median_seconds(lambda: op(*args), device, budget / 3)
        rows.append({"shape": [bh, s, d], "flops": flops, "seconds": seconds,
                     "flops_per_s": flops / seconds})
    return rows


def measure_compute(device: str, quick: bool, progress: bool = False) -> dict:
    """The ``compute``, ``memory`` and ``overhead`` sections, measured in this process."""
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    budget = 0.1 if quick else 0.4
    matmul = {}
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False   # float32 means float32, not TF32
    for name in _matmul_dtypes(device):
        dtype = getattr(torch, name)
        rows = []
        for n in _matmul_sizes(device, quick):
            try:
                a = torch.randn(n, n, device=dev).to(dtype)
                b = torch.randn(n, n, device=dev).to(dtype)
                seconds = _median_seconds(lambda: torch.mm(a, b), device, budget)
            except (RuntimeError, TypeError) as exc:   # dtype not supported here
                _say(progress, f"matmul {name}: not supported ({str(exc).splitlines()[0][:80]})")
                break
            flops = 2 * n ** 3
            rows.append({"n": n, "flops": flops, "seconds": seconds, "flops_per_s": flops / seconds})
            _say(progress, f"matmul {name} {n}x{n}: {flops / seconds / 1e9:.1f} GFLOP/s")
            if seconds > 1.0:    # a slow emulated dtype: larger sizes would only cost time
                break
        if rows:
            matmul[name] = {"best_flops_per_s": max(r["flops_per_s"] for r in rows), "sizes": rows}
    big = (256 if device == "cuda" else (16 if quick else 64)) * MIB // 4
    a, b = torch.randn(big, device=dev), torch.randn(big, device=dev)
    c = torch.empty_like(a)
    copy_s = _median_seconds(lambda: c.copy_(a), device, budget)
    add_s = _median_seconds(lambda: torch.add(a, b, out=c), device, budget)
    nbytes = big * 4
    copy_rate, add_rate = 2 * nbytes / copy_s, 3 * nbytes / add_s
    _say(progress, f"memory: copy {copy_rate / 1e9:.1f} GB/s, add {add_rate / 1e9:.1f} GB/s")
    vector = _vector_rates(dev, device, budget)
    _say(progress, "pointwise/normalisation: " + ", ".join(f"{k} {v / 1e9:.2f}"
                                                       for k, v in vector.items()) + " GFLOP/s")
    loops = 100 if quick else 400
    op_s = _median_seconds(_chain(torch.ops.aten.add.Tensor, loops, dev), device, budget) / loops
    view_s = _median_seconds(_chain(torch.ops.aten.view.default, loops, dev), device,
                             budget) / loops
    _say(progress, f"overhead: {op_s * 1e6:.2f} us per op, {view_s * 1e6:.2f} us per view")
    attention = _attention_rates(dev, device, budget)
    _say(progress, "attention: " + ", ".join(f"{r['flops_per_s'] / 1e9:.1f}"
                                             for r in attention) + " GFLOP/s")
    drop = torch.randn(MIB // 4 * (16 if device == "cuda" else 1), device=dev)
    random_rate = drop.numel() / _median_seconds(
        lambda: torch.ops.aten.native_dropout.default(drop, 0.1, True), device, budget / 2)
    _say(progress, f"random draws: {random_rate / 1e9:.2f} G elements/s")
    return {"compute": {"matmul": matmul, "vector_ops": vector,
                        "vector_flops_per_s": float(np.median(list(vector.values()))),
                        "attention": {"float32": {"sizes": attention}},
                        "random_elements_per_s": random_rate},
            "memory": {"bandwidth_bytes_per_s": add_rate, "copy_bytes_per_s": copy_rate,
                       "add_bytes_per_s": add_rate},
            "overhead": {"op_seconds": op_s, "view_seconds": view_s}}


# -- links ------------------------------------------------------------------------------------------
def _link_plan(nbytes: int, quick: bool) -> tuple[int, int]:
    """(timed rounds, back-to-back ops per round) for one size, the same on every rank.

    Collectives must match one for one across ranks, so the counts depend on the size alone.
    Ops run back to back within a round and the round's time is divided by their number: one
    barrier per round, so its skew and an occasional descheduling are spread over many ops.
    """
    batch = 32 if nbytes <= 64 * KIB else 8 if nbytes <= MIB else 2 if nbytes <= 4 * MIB else 1
    rounds = 7 if nbytes <= 16 * MIB else 4
    return (3, max(1, batch // 4)) if quick else (rounds, batch)


def measure_links(rank: int, world: int, device: str, sizes: list[int], quick: bool,
                  progress: bool = False) -> dict:
    """Per size, this rank's seconds per op of a ring shift and of an all-reduce, per round."""
    dev = torch.device(f"cuda:{rank}") if device == "cuda" else torch.device("cpu")
    sync = _sync(device)
    out = {"p2p": {}, "allreduce": {}}
    nxt, prv = (rank + 1) % world, (rank - 1) % world
    for nbytes in sizes:
        send = torch.ones(nbytes // 4, device=dev)
        recv, acc = torch.empty_like(send), torch.zeros_like(send)
        rounds, batch = _link_plan(nbytes, quick)

        def shift():
            reqs = [dist.isend(send, nxt), dist.irecv(recv, prv)]
            for r in reqs:
                r.wait()

        def allreduce():
            dist.all_reduce(acc)     # zeros stay zeros: no overflow, no denormals

        for kind, fn in (("p2p", shift), ("allreduce", allreduce)):
            times = []
            for i in range(rounds + 1):           # the first is a warm-up (connection set-up)
                dist.barrier()
                start = time.perf_counter()
                for _ in range(batch):
                    fn()
                sync()
                if i:
                    times.append((time.perf_counter() - start) / batch)
            out[kind][str(nbytes)] = times
        if rank == 0:
            p2p, ar = (np.median(out[k][str(nbytes)]) * 1e6 for k in ("p2p", "allreduce"))
            _say(progress, f"link {nbytes:>10,d} B: p2p {p2p:.0f} us, all-reduce {ar:.0f} us")
    return out


def fit_alpha_beta(nbytes, seconds) -> dict:
    """Fit ``T = alpha + beta·m`` minimising relative residuals; alpha, beta kept positive.

    Rows are divided by the measured time, so a 1 KiB message's 20% error weighs as much as a
    64 MiB one's (unweighted least squares would fit the large sizes only and leave alpha to
    noise, often negative). When the unconstrained fit goes negative, non-negative least squares
    on the same weighted system replaces it, and a zero is lifted to a tiny positive value.
    """
    m = np.asarray(nbytes, dtype=float)
    t = np.asarray(seconds, dtype=float)
    if len(m) < 2 or np.any(t <= 0) or not np.all(np.isfinite(t)):
        raise CalibrationError("need at least two sizes with positive finite times to fit alpha/beta")
    a = np.stack([1.0 / t, m / t], axis=1)
    coef = np.linalg.lstsq(a, np.ones_like(t), rcond=None)[0]
    if np.any(coef <= 0):
        from scipy.optimize import nnls
        coef = nnls(a, np.ones_like(t))[0]
    alpha = max(float(coef[0]), 1e-9)
    beta = max(float(coef[1]), 1e-15)
    rel = np.abs(alpha + beta * m - t) / t
    return {"alpha_s": alpha, "beta_s_per_byte": beta, "fit_rel_err_max": float(rel.max()),
            "fit_rel_err_rms": float(np.sqrt(np.mean(rel ** 2)))}


def _link_section(kind: str, per_rank: list[dict], world: int, backend: str) -> dict:
    """Per size: the slowest rank in each repetition (the op is done when all ranks are), median."""
    sizes = sorted(int(k) for k in per_rank[0][kind])
    medians = [float(np.median(np.max([r[kind][str(s)] for r in per_rank], axis=0))) for s in sizes]
    fit = fit_alpha_beta(sizes, medians)
    doc = {"backend": backend, "world_size": world, **fit,
           "samples": [{"bytes": s, "seconds": t} for s, t in zip(sizes, medians)]}
    if kind == "allreduce":
        # T = 2(n-1)(α + (m/n)β)  <=>  intercept = 2(n-1)α, slope = 2(n-1)β/n.
        doc["ring_alpha_s"] = fit["alpha_s"] / (2 * (world - 1))
        doc["ring_beta_s_per_byte"] = fit["beta_s_per_byte"] * world / (2 * (world - 1))
    return doc


# -- processes --------------------------------------------------------------------------------------
def _measure_rank(rank: int, world: int, cfg: dict) -> dict:
    """One rank's measurements (runs inside the process group :func:`run_workers` set up)."""
    device, backend = cfg["device"], cfg["backend"]
    result = {}
    # On a CPU every rank measures at once (they share the cores, as training does); on GPUs
    # each rank would have its own device, so rank 0 alone measures it.
    if device == "cpu" or rank == 0:
        result.update(measure_compute(device, cfg["quick"], cfg["progress"] and rank == 0))
    dist.barrier()
    link_device = "cuda" if backend == "nccl" else "cpu"
    result["links"] = measure_links(rank, world, link_device, cfg["sizes"], cfg["quick"],
                                    cfg["progress"])
    return result


def _spawn(world: int, cfg: dict, timeout_s: float) -> list[dict]:
    """Every rank's measurements, from ``world`` processes of this host, or CalibrationError."""
    try:
        return run_workers(_measure_rank, world, (cfg,), timeout_s=timeout_s,
                           backend=cfg["backend"], threads=cfg["threads"])
    except WorkerError as exc:
        raise CalibrationError(f"calibration with {world} processes failed: {exc}") from None


# -- the document -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def machine_info(world: int, device: str | None = None) -> dict:
    """What identifies the machine a spec was measured on (also the cache key's parts)."""
    device = device or current_device_type()
    cores = os.cpu_count() or 1
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    if device == "cuda":
        memory = int(torch.cuda.get_device_properties(0).total_memory)
    else:
        try:
            memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):
            memory = 0
    return {"hostname": socket.gethostname(), "cpu_model": _cpu_model(), "cores": cores,
            "threads_per_process": max(1, cores // max(world, 1)), "torch_version": torch.__version__,
            "gpu_model": gpu, "memory_bytes": memory, "world_size": world, "device_type": device,
            "load_average": _load_average()}


def _load_average() -> float | None:
    """The 1-minute load average: a busy host measures slow, and the file should say so."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _median_sections(results: list[dict]) -> dict:
    """Compute sections from every rank that measured them: the median rank, per number."""
    measured = [r for r in results if "compute" in r]
    if len(measured) == 1:
        return {k: measured[0][k] for k in ("compute", "memory", "overhead")}
    out = json.loads(json.dumps({k: measured[0][k] for k in ("compute", "memory", "overhead")}))

    def med(path):
        vals = []
        for r in measured:
            cur = r
            for key in path:
                cur = cur[key]
            vals.append(cur)
        return float(np.median(vals))
    for name, m in out["compute"]["matmul"].items():
        for i, row in enumerate(m["sizes"]):
            if all(len(r["compute"]["matmul"].get(name, {}).get("sizes", [])) > i for r in measured):
                row["seconds"] = med(["compute", "matmul", name, "sizes", i, "seconds"])
                row["flops_per_s"] = row["flops"] / row["seconds"]
        m["best_flops_per_s"] = max(r["flops_per_s"] for r in m["sizes"])
    for key in out["compute"]["vector_ops"]:
        out["compute"]["vector_ops"][key] = med(["compute", "vector_ops", key])
    out["compute"]["vector_flops_per_s"] = float(np.median(list(out["compute"]["vector_ops"].values())))
    for key in out["memory"]:
        out["memory"][key] = med(["memory", key])
    for key in out["overhead"]:
        out["overhead"][key] = med(["overhead", key])
    return out


def calibrate(world: int = 2, *, quick: bool = False, progress: bool = False,
              device: str | None = None, timeout_s: float = 300.0) -> dict:
    """Measure this machine with ``world`` processes at once; returns a device document.

    Args:
        world: processes measured together (1: compute only, no links).
        quick: fewer sizes and repeats (3 link sizes): a smoke test, not a calibration.
        progress: print each measurement on stderr.
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        timeout_s: the whole measurement's limit; workers still running then are terminated.

    Example:
        >>> doc = calibrate(world=2)
        >>> doc["links"]["allreduce"]["ring_alpha_s"], doc["compute"]["matmul"]["float32"]
    """
    if world < 1:
        raise CalibrationError(f"--world must be at least 1, got {world}")
    device = device or current_device_type()
    if device == "cuda" and not torch.cuda.is_available():
        raise CalibrationError("device cuda asked for, but torch sees no CUDA device here")
    info = machine_info(world, device)
    backend = "nccl" if device == "cuda" and torch.cuda.device_count() >= world else "gloo"
    start = time.perf_counter()
    links = {"p2p": None, "allreduce": None}
    if world == 1:
        old = torch.get_num_threads()
        torch.set_num_threads(info["threads_per_process"])
        try:
            sections = measure_compute(device, quick, progress)
        finally:
            torch.set_num_threads(old)
    else:
        cfg = {"threads": info["threads_per_process"], "device": device, "backend": backend,
               "quick": quick, "progress": progress, "timeout_s": timeout_s,
               "sizes": QUICK_LINK_SIZES if quick else LINK_SIZES}
        results = _spawn(world, cfg, timeout_s)
        sections = _median_sections(results)
        per_rank = [r["links"] for r in results]
        links = {kind: _link_section(kind, per_rank, world, backend) for kind in links}
    name = info["gpu_model"] or f"{info['cpu_model']} ({info['threads_per_process']} threads " \
        f"per process, {world} at once)"
    return {"schema": SCHEMA, "device_type": device, "name": name, "machine": info, **sections,
            "links": links,
            "calibration": {"seconds": time.perf_counter() - start, "quick": quick,
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}}


# -- the per-machine cache --------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$GRAPHOPT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphopt``, else ``~/.cache/graphopt``."""
    root = os.environ.get("GRAPHOPT_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphopt"


def cache_path(world: int, *, quick: bool = False, device: str | None = None) -> Path:
    """Where this machine's measurement for ``world`` processes is kept.

    Keyed by hostname, CPU model, torch version, device type and world size: a different
    machine, a torch upgrade or another world size measures afresh.
    """
    info = machine_info(world, device)
    parts = [info["hostname"], info["cpu_model"], info["gpu_model"] or "", info["torch_version"],
             info["device_type"], f"w{world}", "quick" if quick else "full"]
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in info["hostname"])[:40]
    return cache_dir() / "calibrate" / f"{safe}-w{world}{'-quick' if quick else ''}-{digest}.json"
