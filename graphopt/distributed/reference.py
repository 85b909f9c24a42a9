"""Single-process training of the same steps, and the comparison ``--check`` makes with it.

The reference trains the eager model (a deep copy) when its outputs line up with the captured
graph's, else the whole captured graph as one module. Each step runs the global batch as the
same ``dp * M`` micro-batches, averages their gradients, and takes the same optimizer step, so
a correct pipeline differs from it only by float rounding (the order of additions). Tied weights
need nothing here: the eager model holds them once.

Relative errors: a loss ``|a - b| / max(|b|, tiny)``; a parameter ``max|a - b| / max(max|b|,
1e-3)``: the floor keeps a tensor that stays near zero (an attention key bias, whose gradient is
zero in exact arithmetic and float noise in practice) from turning noise into a large ratio. NaN
or a missing tensor is infinite, so it never passes.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree

from graphopt.distributed.job import TrainJob, make_optimizer
from graphopt.distributed.lowering import RelayStage, lower
from graphopt.partition.stages import split_graph

__all__ = ["Reference", "reference_training", "compare_runs", "PARAM_FLOOR"]

PARAM_FLOOR = 1e-3


@dataclass
class Reference:
    losses: list[float]
    params: dict[str, torch.Tensor]
    what: str                       # "the eager model" or "the captured graph"


def _eager_runner(model, in_spec, job: TrainJob):
    """A function flat inputs -> flat outputs for the eager model, or None when its outputs
    do not match the graph's (then the graph itself is the reference)."""
    last = job.lowered.programs[-1]
    want = [spec for name in last.carry_out for spec in last.specs[name]]

    def run(flat):
        args, kwargs = pytree.tree_unflatten(list(flat), in_spec)
        out = model(*args, **kwargs)
        return tuple(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor))

    try:
        with torch.no_grad():
            got = run(tuple(t[:job.micro] for t in job.batches.example))
    except Exception:  # noqa: BLE001 - any mismatch means: use the graph instead
        return None
    if [(tuple(t.shape), t.dtype) for t in got] != [(tuple(s), d) for s, d in want]:
        return None
    return run


def reference_training(job: TrainJob, *, model=None, in_spec=None, graph=None) -> Reference:
    """Train ``job``'s steps in this process (see the module docstring).

    Args:
        model: the eager model (copied, never changed); in_spec: the pytree spec of
            ``(args, kwargs)`` that the flat inputs unflatten to.
        graph: the captured graph, the fallback when the eager outputs do not line up.
    """
    cfg = job.config
    run, module, what = None, None, "the eager model"
    if model is not None and in_spec is not None:
        module = copy.deepcopy(model)
        run = _eager_runner(module, in_spec, job)
    if run is None:
        if graph is None:
            raise ValueError("the reference needs the eager model or the captured graph")
        one = lower(split_graph(graph, {n: 0 for n in graph.info}, 1), graph)
        module = RelayStage(copy.deepcopy(one.programs[0]))
        run, what = (lambda flat: module(*flat)), "the captured graph"
    params = [p for p in module.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    chunks = cfg.dp * cfg.microbatches
    losses = []
    for step in range(cfg.steps):
        batch = job.batches.draw(step)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for c in range(chunks):
            lo, hi = c * job.micro, (c + 1) * job.micro
            out = run(tuple(t[lo:hi] for t in batch))
            loss = job.loss(out, job.target[lo:hi])
            (loss / chunks).backward()
            total += float(loss.detach())
        losses.append(total / chunks)
        opt.step()
    named = dict(module.named_parameters(remove_duplicate=False))
    if isinstance(module, RelayStage):
        named = dict(module.inner.named_parameters(remove_duplicate=False))
    return Reference(losses=losses, params={n: p.detach().clone() for n, p in named.items()},
                     what=what)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    if a.shape != b.shape or not torch.isfinite(a).all() or not torch.isfinite(b).all():
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a - b).abs().max() / max(float(b.abs().max()), PARAM_FLOOR))


def compare_runs(losses: list[float], params: dict[int, dict[str, torch.Tensor]], ref: Reference,
                 rtol: float = 1e-5) -> dict:
    """``check`` of train.json: the worst loss and parameter errors over steps and stages."""
    loss_err = 0.0 if len(losses) == len(ref.losses) else math.inf
    for a, b in zip(losses, ref.losses):
        err = abs(a - b) / max(abs(b), 1e-30) if math.isfinite(a) and math.isfinite(b) else math.inf
        loss_err = max(loss_err, err)
    param_err, worst = 0.0, ""
    for s, named in sorted(params.items()):
        for name, t in named.items():
            err = _rel(t, ref.params[name]) if name in ref.params else math.inf
            if err >= param_err:
                param_err, worst = err, f"stage {s} {name}"
    ok = loss_err < rtol and param_err < rtol
    return {"max_loss_rel_err": loss_err, "max_param_rel_err": param_err, "ok": bool(ok),
            "worst_param": worst, "reference": ref.what, "rtol": rtol}
