"""Capture benchmark: node counts, capture time, and graphopt's FLOPs against FlopCounterMode.

For each model, graphopt captures the graph (torch.export, fake tensors) and counts FLOPs from its
cost model; ``torch.utils.flop_counter.FlopCounterMode`` counts the same forward pass by running
it. SDPA runs on the math backend under FlopCounterMode so that attention's matmuls are counted
(its CPU fused kernel is not in the flop registry). Also times plain ``symbolic_trace``, the
alternative a user would try first.

    python bench/capture.py                 # zoo + transformers default configs
    python bench/capture.py --models gpt2,bert --repeat 3
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import graphopt
from graphopt.specs import load_spec

SPECS = {
    "mlp": ("zoo:mlp", {}),
    "cnn": ("zoo:cnn", {}),
    "gpt": ("zoo:gpt", {}),
    "gpt2": ("hf:GPT2LMHeadModel", {"seq": 128}),
    "bert": ("hf:BertModel", {"seq": 128}),
    "vit": ("hf:ViTModel", {}),
    "resnet": ("hf:ResNetModel", {}),
}


def flop_counter(model, inputs) -> int:
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(*inputs)
    return fc.get_total_flops()


def symbolic_trace_ok(model) -> str:
    try:
        torch.fx.symbolic_trace(model)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(SPECS))
    ap.add_argument("--repeat", type=int, default=3, help="captures per model (median time)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    print(f"{'model':8} {'nodes':>6} {'compute':>7} {'capture s (median)':>19} "
          f"{'graphopt GFLOP':>15} {'FlopCounter GFLOP':>18} {'ratio':>7}  symbolic_trace")
    for key in args.models.split(","):
        spec, kw = SPECS[key]
        loaded = load_spec(spec, **kw)
        times, graph = [], None
        for _ in range(args.repeat):
            start = time.perf_counter()
            graph = graphopt.capture(loaded.model, loaded.inputs, name=spec)
            times.append(time.perf_counter() - start)
        ref = flop_counter(loaded.model, loaded.inputs)
        ratio = graph.total_flops / ref if ref else float("nan")
        print(f"{key:8} {len(graph):6d} {len(graph.compute_nodes()):7d} "
              f"{statistics.median(times):19.2f} {graph.total_flops / 1e9:15.3f} {ref / 1e9:18.3f} "
              f"{ratio:7.3f}  {symbolic_trace_ok(loaded.model)}")


if __name__ == "__main__":
    main()
