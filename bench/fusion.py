"""Fusion benchmark: graphopt's kernels and memory traffic against Inductor, side by side.

Default (any machine): for each model, compile it with ``backend="graphopt"`` (fusion planned,
kernels generated) and with Inductor, for inference and for a training step (forward and
backward graphs), and compare

* graphopt's generated Triton kernels, plus the non-library ops it leaves to ATen (embedding,
  cat, index ...: Inductor would generate kernels for those), with
* Inductor's ``torch._inductor.metrics.generated_kernel_count`` (C++ kernels on a CPU, counted
  the same way: one per generated kernel; library calls such as matmuls excluded on both sides),

and reports ``bytes_fused / bytes_unfused`` (memory traffic of the fused kernels over that of
the same ops run one by one).

``--cuda`` (a CUDA machine): times a micro-suite (pointwise chain, bias+GELU, softmax,
LayerNorm, RMSNorm; float32 and bfloat16; large sizes) for eager PyTorch, Inductor and graphopt
with ``triton.testing.do_bench`` (median after warm-up), and reports achieved GB/s against the
bytes-once roofline (inputs read once, outputs written once) and the measured copy bandwidth.

    python bench/fusion.py                       # all models, writes bench/results/fusion.md
    python bench/fusion.py --models gpt2,bert --modes inference
    python bench/fusion.py --cuda                # on a GPU: bench/results/fusion_cuda.md
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from graphopt.specs import load_spec

MODELS = {
    "gpt2": ("hf:GPT2LMHeadModel", {"n_layer": 2}, dict(batch=2, seq=128)),
    "bert": ("hf:BertModel", {"num_hidden_layers": 2}, dict(batch=2, seq=128)),
    "vit": ("hf:ViTModel", {"num_hidden_layers": 2}, dict(batch=2)),
    "resnet": ("hf:ResNetModel", {"depths": [1, 1, 1, 1]}, dict(batch=2, image_size=64)),
}
RESULTS = Path(__file__).resolve().parent / "results"


def _output(out):
    if hasattr(out, "logits"):
        return out.logits
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _step(fn, inputs, train: bool) -> None:
    with torch.enable_grad() if train else torch.no_grad():
        out = _output(fn(*inputs))
        if train:
            out.float().square().mean().backward()


def graphopt_counts(model, inputs, train: bool) -> dict:
    """Compile with graphopt (fusion on, kernels not run: CPU tensors use the ATen subgraphs)
    and read the fusion plans it dumps."""
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        compiled = torch.compile(model, backend="graphopt",
                                 options={"fuse": True, "dump_dir": tmp})
        _step(compiled, inputs, train)
        seconds = time.perf_counter() - start
        plans = [json.loads(Path(p).read_text())["summary"]
                 for p in glob.glob(f"{tmp}/*/fusion.json")]
    total = {k: sum(p[k] for p in plans) for k in ("graph_ops", "kernels", "aten_ops",
                                                    "extern_ops", "bytes_fused",
                                                    "bytes_unfused")}
    total["graphs"] = len(plans)
    total["seconds"] = seconds
    return total


def inductor_count(model, inputs, train: bool) -> tuple[int, float]:
    import torch._inductor.metrics as metrics
    torch._dynamo.reset()
    metrics.reset()
    start = time.perf_counter()
    _step(torch.compile(model, backend="inductor"), inputs, train)
    return metrics.generated_kernel_count, time.perf_counter() - start


def model_suite(names: list[str], modes: list[str]) -> list[dict]:
    rows = []
    for name in names:
        spec, overrides, kw = MODELS[name]
        loaded = load_spec(spec, overrides=overrides, seed=0, **kw)
        for mode in modes:
            train = mode == "training"
            model = copy.deepcopy(loaded.model).train(train)
            print(f"{name} {mode}: graphopt ...", file=sys.stderr, flush=True)
            ours = graphopt_counts(copy.deepcopy(model), loaded.inputs, train)
            print(f"{name} {mode}: inductor ...", file=sys.stderr, flush=True)
            theirs, ind_s = inductor_count(copy.deepcopy(model), loaded.inputs, train)
            left = ours["aten_ops"] - ours["extern_ops"]
            rows.append({"model": name, "mode": mode, "graph_ops": ours["graph_ops"],
                         "kernels": ours["kernels"], "aten_left": left,
                         "extern": ours["extern_ops"],
                         "ratio": ours["bytes_fused"] / max(ours["bytes_unfused"], 1),
                         "inductor": theirs, "ours_s": ours["seconds"], "inductor_s": ind_s})
    torch._dynamo.reset()
    return rows


def model_table(rows: list[dict]) -> str:
    head = ("| model | mode | graph ops | graphopt kernels | + ATen non-library ops | "
            "= graphopt total | Inductor kernels (CPU) | library calls (mm/conv/attn) | "
            "bytes fused / unfused |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = [f"| {r['model']} | {r['mode']} | {r['graph_ops']} | {r['kernels']} | "
             f"{r['aten_left']} | {r['kernels'] + r['aten_left']} | {r['inductor']} | "
             f"{r['extern']} | {r['ratio']:.3f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _preface() -> str:
    import platform

    import triton
    cfg = "; ".join(f"{n}: {spec} {ov} {kw}" for n, (spec, ov, kw) in MODELS.items())
    return (f"`python bench/fusion.py` on {platform.machine()} CPU, torch {torch.__version__}, "
            f"triton {triton.__version__}. Models (random weights): {cfg}. Training = forward "
            "and backward graphs of one step.\n\n")


def _notes() -> str:
    return ("\n*graphopt kernels*: generated Triton kernels (the fused groups). *ATen "
            "non-library ops*: ops graphopt leaves to ATen that are not matmul, convolution or "
            "attention (embedding, cat, index, pooling ...); Inductor generates kernels for "
            "those, so *graphopt total* is the number to hold against *Inductor kernels*, which "
            "is `torch._inductor.metrics.generated_kernel_count` (C++ kernels on a CPU). "
            "Library calls are made by both and counted by neither. *bytes fused / unfused*: "
            "memory traffic of the fused kernels over that of their ops run one kernel each "
            "(see `graphopt/fusion_plan.py`).\n")


# ---------------------------------------------------------------------------------------------
# --cuda micro-suite
# ---------------------------------------------------------------------------------------------
def _cases(dtype):
    F = torch.nn.functional
    dev = "cuda"
    rows, cols = 16384, 4096
    x = torch.randn(rows, cols, device=dev, dtype=dtype)
    w = torch.randn(cols, device=dev, dtype=dtype)
    b = torch.randn(cols, device=dev, dtype=dtype)
    flat = torch.randn(rows * cols, device=dev, dtype=dtype)

    def chain(v):
        return (torch.sigmoid(v * 1.5 + 0.5) * v).tanh() + 1.0

    def bias_gelu(v, bias):
        return F.gelu(v + bias, approximate="tanh")

    def softmax(v):
        return torch.softmax(v, dim=-1)

    def layer_norm(v, weight, bias):
        return F.layer_norm(v, (v.shape[-1],), weight, bias, eps=1e-5)

    def rms_norm(v, weight):
        vf = v.float()
        return (vf * torch.rsqrt(vf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(v.dtype) * weight

    return [("pointwise chain", chain, (flat,)), ("bias+GELU", bias_gelu, (x, b)),
            ("softmax", softmax, (x,)), ("LayerNorm", layer_norm, (x, w, b)),
            ("RMSNorm", rms_norm, (x, w))]


def _bytes_once(args, out) -> int:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(t.numel() * t.element_size() for t in (*args, *outs))


def copy_bandwidth() -> float:
    from triton.testing import do_bench
    src = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def cuda_suite(rep: int) -> tuple[list[dict], float]:
    from triton.testing import do_bench
    copy_bw = copy_bandwidth()
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, fn, args in _cases(dtype):
            ref = fn(*args)
            nbytes = _bytes_once(args, ref)
            row = {"case": name, "dtype": str(dtype).replace("torch.", ""),
                   "shape": "x".join(map(str, args[0].shape)), "bytes": nbytes}
            impls = {"eager": lambda: fn, "inductor": lambda: torch.compile(fn),
                     "graphopt": lambda: torch.compile(fn, backend="graphopt")}
            for impl, make in impls.items():
                torch._dynamo.reset()  # dynamo caches per function: one backend at a time
                f = make()
                with torch.no_grad():
                    got = f(*args)  # compiles (and autotunes) once, outside the timing
                    err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                    ms = do_bench(lambda: f(*args), warmup=25, rep=rep,
                                  return_mode="median")
                row[f"{impl}_ms"] = ms
                row[f"{impl}_err"] = err
            rows.append(row)
            print(f"{name} {row['dtype']}: eager {row['eager_ms']:.3f} ms, inductor "
                  f"{row['inductor_ms']:.3f} ms, graphopt {row['graphopt_ms']:.3f} ms",
                  file=sys.stderr, flush=True)
    torch._dynamo.reset()
    return rows, copy_bw


def cuda_table(rows: list[dict], copy_bw: float) -> str:
    head = (f"Measured copy bandwidth: {copy_bw / 1e9:.0f} GB/s "
            f"({torch.cuda.get_device_name()}). Times are medians of `do_bench` after "
            "warm-up; GB/s counts each input read once and each output written once.\n\n"
            "| case | dtype | shape | eager ms | Inductor ms | graphopt ms | graphopt GB/s | "
            "% of copy BW | Inductor / graphopt time | graphopt rel. err |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        gbs = r["bytes"] / (r["graphopt_ms"] * 1e-3)
        lines.append(f"| {r['case']} | {r['dtype']} | {r['shape']} | {r['eager_ms']:.3f} | "
                     f"{r['inductor_ms']:.3f} | {r['graphopt_ms']:.3f} | {gbs / 1e9:.0f} | "
                     f"{100 * gbs / copy_bw:.0f}% | "
                     f"{r['inductor_ms'] / r['graphopt_ms']:.2f} | {r['graphopt_err']:.1e} |")
    ratios = [r["inductor_ms"] / r["graphopt_ms"] for r in rows]
    tail = (f"\nMedian Inductor/graphopt time ratio: {statistics.median(ratios):.2f} "
            "(>= 1 means graphopt is at least as fast).\n")
    return head + "\n".join(lines) + "\n" + tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--modes", default="inference,training", help="inference,training")
    p.add_argument("--cuda", action="store_true", help="time the micro-suite on a CUDA device")
    p.add_argument("--rep", type=int, default=200, help="do_bench repetition time in ms "
                   "(--cuda)")
    p.add_argument("--out", default=None, help="markdown file to write (default "
                   "bench/results/fusion.md, or fusion_cuda.md with --cuda)")
    args = p.parse_args(argv)
    if args.cuda:
        if not torch.cuda.is_available():
            print("bench/fusion.py --cuda: no CUDA device here (torch.cuda.is_available() is "
                  "False); run it on a GPU machine, or drop --cuda for the kernel-count suite",
                  file=sys.stderr)
            return 2
        rows, bw = cuda_suite(args.rep)
        text = "## Fusion micro-suite on CUDA\n\n" + cuda_table(rows, bw)
        out = Path(args.out or RESULTS / "fusion_cuda.md")
    else:
        names = [m for m in args.models.split(",") if m]
        unknown = [m for m in names if m not in MODELS]
        if unknown:
            print(f"unknown model(s) {unknown}; choose from {list(MODELS)}", file=sys.stderr)
            return 2
        modes = [m for m in args.modes.split(",") if m]
        rows = model_suite(names, modes)
        text = ("## Fusion: kernels and memory traffic against Inductor\n\n" + _preface()
                + model_table(rows) + _notes())
        out = Path(args.out or RESULTS / "fusion.md")
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
