"""Backend benchmark: ``torch.compile(backend="graphopt")`` beside eager, aot_eager and Inductor.

On the CPU graphopt has nothing to fuse (its kernels are Triton kernels, run on CUDA tensors), so
the question is what the backend costs: at steady state it should be no slower than
``aot_eager``, the same aot_autograd lowering with no compiler behind it. For each case this
prints, per backend,

* the first call (compile plus one step, seconds) and, for graphopt, the part of it spent in
  graphopt's own per-graph work (Graph build, passes, binding: ``pipeline s``);
* the median step time over round-robin repeats after warm-up (the backends take turns, so a
  change in machine load hits them alike), its spread (min-max) and ratios to aot_eager;
* the relative error of the first call's outputs (and, training, gradients) against eager.

Cases: GPT-2 small (transformers' default config, 12 layers) inference, batch 2, sequence 128; a
4-layer GPT-2 training step (forward, backward, SGD step); a small Llama (hidden 512, 4 layers,
8 heads sharing 2 key/value heads) inference and training step. Models are built from configs
with random weights; dropout is 0 so that outputs can be compared with eager.

    python bench/backend.py                 # ~5 minutes on 2 cores; writes results/backend.md
    python bench/backend.py --quick         # smaller models, fewer repeats: backend_quick.md
    python bench/backend.py --cases gpt2-train --backends aot_eager,graphopt --repeats 9
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch._dynamo

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ["eager", "aot_eager", "graphopt", "inductor"]


@dataclass
class Case:
    """One model and mode: ``build()`` returns the model and its input ids."""

    name: str
    description: str
    build: Callable[[], tuple[torch.nn.Module, torch.Tensor]]
    train: bool


def _gpt2(layers: int, batch: int, seq: int, **config):
    def build():
        import transformers
        cfg = transformers.GPT2Config(n_layer=layers, use_cache=False, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, **config)
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(cfg)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq),
                            generator=torch.Generator().manual_seed(1))
        return model, ids
    return build


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, batch: int, seq: int):
    def build():
        import transformers
        cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                                       num_hidden_layers=layers, num_attention_heads=heads,
                                       num_key_value_heads=kv_heads, vocab_size=32000,
                                       max_position_embeddings=512, use_cache=False)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(cfg)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq),
                            generator=torch.Generator().manual_seed(1))
        return model, ids
    return build


def cases(quick: bool) -> list[Case]:
    if quick:
        return [
            Case("gpt2-infer", "GPT-2 2 layers, 768 wide, inference, batch 2, seq 64",
                 _gpt2(2, 2, 64), train=False),
            Case("gpt2-train", "GPT-2 2 layers training step (fwd+bwd+SGD), batch 2, seq 64",
                 _gpt2(2, 2, 64), train=True),
            Case("llama-infer", "Llama hidden 256, 2 layers, 4 heads / 2 kv heads, inference, "
                 "batch 2, seq 64", _llama(256, 2, 4, 2, 2, 64), train=False),
            Case("llama-train", "the same Llama, training step, batch 2, seq 64",
                 _llama(256, 2, 4, 2, 2, 64), train=True),
        ]
    return [
        Case("gpt2-infer", "GPT-2 small (12 layers, 768 wide), inference, batch 2, seq 128",
             _gpt2(12, 2, 128), train=False),
        Case("gpt2-train", "GPT-2 4 layers training step (fwd+bwd+SGD), batch 2, seq 128",
             _gpt2(4, 2, 128), train=True),
        Case("llama-infer", "Llama hidden 512, 4 layers, 8 heads / 2 kv heads (GQA), "
             "inference, batch 2, seq 128", _llama(512, 4, 8, 2, 2, 128), train=False),
        Case("llama-train", "the same Llama, training step (fwd+bwd+SGD), batch 2, seq 128",
             _llama(512, 4, 8, 2, 2, 128), train=True),
    ]


class PipelineClock:
    """Seconds spent inside graphopt's per-graph compile functions (the rest of a first call is
    TorchDynamo's, aot_autograd's and the step itself)."""

    def __init__(self) -> None:
        import graphopt.backend as backend
        self.backend = backend
        self.seconds = 0.0
        self._real = {name: getattr(backend, name) for name in ("_compile", "_partition")}
        for name, fn in self._real.items():
            setattr(backend, name, self._timed(fn))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed

    def close(self) -> None:
        for name, fn in self._real.items():
            setattr(self.backend, name, fn)


def _step(fn, model, ids, train: bool, optimizer):
    """One inference call or one training step; returns the logits (inference) or the loss."""
    if not train:
        with torch.no_grad():
            return fn(input_ids=ids).logits
    out = fn(input_ids=ids, labels=ids).loss
    out.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return out.detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("nan")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _grad_rel(model, reference: dict) -> float:
    num = den = 0.0
    for name, p in model.named_parameters():
        if name in reference:
            num += (p.grad.double() - reference[name].double()).square().sum().item()
            den += reference[name].double().square().sum().item()
    return (num / max(den, 1e-60)) ** 0.5


def _first_calls(case: Case, model, ids, backends: list[str], optimizer):
    """Compile each backend on the shared model with one forward (and backward) at the same
    weights, and compare its outputs and gradients with eager's."""
    fns, rows = {}, []
    reference_out, reference_grads = None, {}
    for name in sorted(backends, key=lambda b: b != "eager"):   # eager first: the reference
        fn = model if name == "eager" else torch.compile(model, backend=name)
        clock = PipelineClock() if name == "graphopt" else None
        optimizer.zero_grad(set_to_none=True)   # each call leaves its own gradients to compare
        start = time.perf_counter()
        try:
            if case.train:
                out = fn(input_ids=ids, labels=ids).loss
                out.backward()
                out = out.detach()
            else:
                out = _step(fn, model, ids, False, optimizer)
        finally:
            if clock:
                clock.close()
        row = {"case": case.name, "backend": name, "first_s": time.perf_counter() - start,
               "pipeline_s": clock.seconds if clock else None, "out_err": None,
               "grad_err": None}
        if name == "eager":
            reference_out = out
            reference_grads = {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}
        if reference_out is not None:
            row["out_err"] = _rel(out, reference_out)
            row["grad_err"] = _grad_rel(model, reference_grads) if case.train else None
        rows.append(row)
        fns[name] = fn
        print(f"  {case.name:12s} {name:10s} first call {row['first_s']:7.2f} s  out err "
              f"{_fmt(row['out_err'], '.1e')}", file=sys.stderr, flush=True)
    return fns, rows


def _timed_steps(fns: dict, model, ids, train: bool, optimizer, warmup: int, repeats: int):
    """Wall and CPU seconds of each backend's steps, the backends taking turns."""
    for fn in fns.values():
        for _ in range(warmup):
            _step(fn, model, ids, train, optimizer)
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    order = list(fns)
    for _ in range(repeats):
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            _step(fns[name], model, ids, train, optimizer)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
        order.reverse()   # no backend always runs right after the same other one
    return wall, cpu


def run_case(case: Case, backends: list[str], warmup: int, repeats: int) -> list[dict]:
    """Compile every backend on one shared model, check it against eager, then time them in
    round-robin; one row per backend."""
    model, ids = case.build()
    model.train(case.train)
    # The first calls run forward and backward without an update, so every backend is checked
    # at the same weights; warm-up and timed training steps include the SGD step.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    fns, rows = _first_calls(case, model, ids, backends, optimizer)
    wall, cpu = _timed_steps(fns, model, ids, case.train, optimizer, warmup, repeats)
    base = {key: statistics.median(series["aot_eager"]) if "aot_eager" in series else None
            for key, series in (("wall", wall), ("cpu", cpu))}
    base_first = next((r["first_s"] for r in rows if r["backend"] == "aot_eager"), None)
    for row in rows:
        t = wall[row["backend"]]
        row.update(step_ms=1e3 * statistics.median(t), min_ms=1e3 * min(t), max_ms=1e3 * max(t),
                   cpu_ms=1e3 * statistics.median(cpu[row["backend"]]))
        row["vs_aot"] = row["step_ms"] / (1e3 * base["wall"]) if base["wall"] else None
        row["cpu_vs_aot"] = row["cpu_ms"] / (1e3 * base["cpu"]) if base["cpu"] else None
        row["first_vs_aot"] = row["first_s"] / base_first if base_first else None
    del fns, model
    torch._dynamo.reset()
    return rows


def _warm_up_backends(backends: list[str]) -> None:
    """Compile a tiny model with each backend first, so that one-time costs (imports, Inductor's
    compiler checks) do not land on whichever backend a case compiles first."""
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
    x = torch.randn(4, 8)
    for name in backends:
        if name != "eager":
            torch.compile(tiny, backend=name)(x).sum().backward()
    torch._dynamo.reset()


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[dict], all_cases: list[Case], args, loads: tuple) -> str:
    described = {c.name: c.description for c in all_cases}
    lines = ["# torch.compile backends on the CPU", "",
             f"`{args.command}` on "
             f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}, Python {platform.python_version()}; "
             f"load average {loads[0]:.1f} before, {loads[1]:.1f} after.", "",
             f"Step: median of {args.repeats} round-robin repeats (order reversed every round) "
             f"after {args.warmup} warm-up step(s), min-max beside it; CPU: the process's CPU "
             "time per step, median (steadier than wall time on a shared machine, most of all "
             "with `--threads 1`). First call: "
             "compile plus one forward (and backward); `pipeline s` is graphopt's own share of "
             "it. Errors: relative L2 of the first call's logits (loss, training) and gradients "
             "against eager. Ratios are to aot_eager.", ""]
    for name in dict.fromkeys(r["case"] for r in rows):
        lines += [f"## {name}: {described[name]}", "",
                  "| backend | first call (s) | pipeline s | vs aot_eager | step (ms) | min-max "
                  "(ms) | vs aot_eager | CPU (ms) | vs aot_eager | output err | grad err |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in (r for r in rows if r["case"] == name):
            lines.append(
                f"| {r['backend']} | {r['first_s']:.2f} | {_fmt(r['pipeline_s'], '.2f')} | "
                f"{_fmt(r['first_vs_aot'], '.2f')} | {r['step_ms']:.1f} | "
                f"{r['min_ms']:.0f}-{r['max_ms']:.0f} | {_fmt(r['vs_aot'], '.3f')} | "
                f"{r['cpu_ms']:.0f} | {_fmt(r['cpu_vs_aot'], '.3f')} | "
                f"{_fmt(r['out_err'], '.1e')} | {_fmt(r['grad_err'], '.1e')} |")
        lines.append("")
    graphopt = [r for r in rows if r["backend"] == "graphopt" and r["vs_aot"] is not None]
    if graphopt:
        worst = max(graphopt, key=lambda r: r["vs_aot"])
        lines += [f"- slowest graphopt step / aot_eager: {worst['vs_aot']:.3f} ({worst['case']})",
                  f"- graphopt's pipeline, summed over the cases: "
                  f"{sum(r['pipeline_s'] for r in graphopt):.2f} s of "
                  f"{sum(r['first_s'] for r in graphopt):.1f} s of first calls", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller models, fewer repeats")
    p.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma-separated, from eager, aot_eager, graphopt, inductor")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first call")
    p.add_argument("--repeats", type=int, default=None, help="timed round-robin rounds "
                   "(default 5, quick 3)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", default=None, help="markdown file (default results/backend.md, "
                   "quick: results/backend_quick.md)")
    args = p.parse_args(argv)
    args.command = " ".join(["python bench/backend.py", *(sys.argv[1:] if argv is None else argv)])
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - set(BACKENDS))
    all_cases = cases(args.quick)
    chosen = all_cases if not args.cases else [c for c in all_cases
                                               if c.name in args.cases.split(",")]
    if unknown or not chosen or args.repeats < 1:
        p.error(f"unknown backend(s) {unknown}" if unknown else
                "no such case; cases: " + ", ".join(c.name for c in all_cases)
                if not chosen else "--repeats must be at least 1")
    loads = [os.getloadavg()[0]]
    _warm_up_backends(backends)
    rows = []
    for case in chosen:
        rows += run_case(case, backends, args.warmup, args.repeats)
    loads.append(os.getloadavg()[0])
    text = render(rows, all_cases, args, tuple(loads))
    print(text)
    out = Path(args.out or RESULTS / ("backend_quick.md" if args.quick else "backend.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
