"""``memory.json`` (schema ``graphopt.memory/1``): a memory plan as users and scripts read it.

One builder for the CLI (``graphopt remat``) and the backend's ``dump_dir``, so both write the
same fields. Contract fields: ``schema, model, train, budget_bytes, baseline{peak_bytes,
saved_bytes}, plan{peak_bytes, saved_bytes, recompute_flops, total_flops, recomputed},
arena{bytes, lower_bound}``; the rest is extra detail (solver, the tensors at the peak, what the
budget bounds).
"""
from __future__ import annotations

import json

from graphopt.memory.arena import Arena
from graphopt.memory.liveness import Liveness

__all__ = ["SCHEMA", "memory_report", "dumps", "BUDGET_ACCOUNTING"]

SCHEMA = "graphopt.memory/1"
BUDGET_ACCOUNTING = ("the budget bounds the activation bytes held for the backward pass at any "
                     "moment: saved tensors not yet freed plus recomputed tensors alive")


def memory_report(*, model: str, train: bool, baseline: Liveness, plan: Liveness, arena: Arena,
                  total_flops: int, remat=None, budget=None, notes: list[str] | None = None,
                  top: int = 5) -> dict:
    """The ``memory.json`` dictionary.

    Args:
        model: the model spec (or graph name).
        train: whether the schedule is a training step (joint forward+backward graph).
        baseline, plan: liveness of the step without and with the plan.
        arena: the buffer-reuse arena of the planned step.
        total_flops: FLOPs of the planned step, recomputation included.
        remat: the :class:`~graphopt.passes.rematerialize.RematReport` (training only).
        budget: the budget as the user gave it (fraction or bytes).

    Example:
        >>> data = memory_report(model="zoo:mlp", train=False, baseline=lv, plan=lv,
        ...                      arena=plan_arena(lv.buffers), total_flops=g.total_flops)
        >>> data["schema"]
        'graphopt.memory/1'
    """
    saved_base = remat.baseline_saved_bytes if remat else 0
    held_base = getattr(remat, "baseline_held_bytes", None) if remat else None
    saved_plan = remat.saved_bytes if remat else 0
    notes = list(notes or [])
    asked = getattr(remat, "requested_budget_bytes", None)
    if asked is not None:
        notes.append(f"the budget asked for ({asked:,} bytes) is below the feasible minimum: "
                     f"budget_bytes is the held peak of the tightest plan")
    data = {
        "schema": SCHEMA,
        "model": model,
        "train": bool(train),
        "budget_bytes": remat.budget_bytes if remat else None,
        "baseline": {"peak_bytes": baseline.peak, "saved_bytes": saved_base,
                     **({"held_bytes": held_base} if held_base is not None else {})},
        "plan": {"peak_bytes": plan.peak, "saved_bytes": saved_plan,
                 "recompute_flops": remat.recompute_flops if remat else 0,
                 "total_flops": int(total_flops),
                 "recomputed": list(remat.recomputed) if remat else [],
                 "held_peak_bytes": remat.held_peak_bytes if remat else None,
                 "peak_node": plan.steps[plan.peak_step] if plan.steps else None,
                 "peak_tensors": [{"name": b.name, "bytes": b.size}
                                  for b in plan.at_peak()[:top]]},
        "arena": {"bytes": arena.size, "lower_bound": arena.lower_bound,
                  "alignment": arena.alignment},
        "budget": {"requested": budget, "accounting": BUDGET_ACCOUNTING},
        "solver": remat.solver if remat else None,
        "notes": notes,
    }
    return data


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1) + "\n"
