"""Which values of a captured graph carry a gradient: what the runtime tells the engine and
what the cost model prices a backward for."""
from __future__ import annotations

import torch

__all__ = ["requires_grad_map"]

_NO_GRAD_OPS = ("detach", "argmax", "argmin", "zeros_like", "ones_like", "empty_like")


def _differentiable(val) -> bool:
    if isinstance(val, torch.Tensor):
        return val.dtype.is_floating_point or val.dtype.is_complex
    if isinstance(val, (tuple, list)):
        return any(_differentiable(v) for v in val)
    return False


def requires_grad_map(graph) -> dict[str, bool]:
    """Which values carry a gradient: floating values computed, through differentiable ops,
    from a trainable parameter. The engine is told the same flags statically, so both sides of a
    boundary agree on which tensors get a gradient sent back."""
    out: dict[str, bool] = {}
    gm = graph.gm
    for node in graph.fx_nodes():
        val = node.meta.get("val")
        if node.op == "get_attr":
            obj = gm
            for atom in str(node.target).split("."):
                obj = getattr(obj, atom, None)
            out[node.name] = isinstance(obj, torch.Tensor) and obj.requires_grad
        elif node.op == "placeholder" or not _differentiable(val):
            out[node.name] = False
        elif node.op == "call_function" and any(w in str(node.target) for w in _NO_GRAD_OPS):
            out[node.name] = False
        else:
            out[node.name] = any(out.get(a.name, False) for a in node.all_input_nodes)
    return out
