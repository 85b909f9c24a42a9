"""What a node's backward costs over its forward: read from the op table.

Node ``v`` costs ``(1 + b(v))`` times its forward FLOPs and seconds over a training step, with
``b`` the entry's ``backward`` or its class's :data:`graphopt.op_table.BACKWARD_FACTOR`; matmul
and convolution count one matmul of the same size per operand that needs a gradient (0-2: the
first layer's matmul has no ``dX``, its input is data). A node whose output depends on no
trainable weight has no backward (``b = 0``), whatever its class.

Checked two ways (``bench/train.py`` prints both): summed over a model, forward plus these
backward FLOPs are within 6% of the forward+backward graph aot_autograd traces for it (the joint
graph of :mod:`graphopt.memory.joint`: ratios 1.002 residual MLP, 1.027 GPT-2, 1.055 BERT,
1.025 ViT, 1.046 ResNet, tiny configs); and as time on this project's 2-core CPU machine
(autograd, 1 thread, medians of alternating runs), matmul backward/forward came out 1.5-2.8
with both operands differentiable and 0.7-1.1 with the weight alone, conv 2.3-2.7, SDPA
2.6-2.9, softmax 1.2-1.8, while pointwise ops and layer norm scattered from 1 to 6 from one run
to the next: their time is memory traffic and per-op overhead on a loaded machine, which FLOP
ratios do not describe.
"""
from __future__ import annotations

import numpy as np
import torch

from graphopt.autodiff import requires_grad_map
from graphopt.op_table import backward_factor

__all__ = ["backward_factors"]


def backward_factors(graph) -> np.ndarray:
    """``b(v)`` for every node of ``graph`` in node order (see the module docstring)."""
    grad = requires_grad_map(graph)
    out = []
    for node in graph.fx_nodes():
        info = graph.info[node.name]
        if node.op != "call_function" or not grad.get(node.name, False):
            out.append(0.0)
            continue
        b = backward_factor(node.target, info.op_class)
        if b is None:      # matmul, conv: one product per operand that needs a gradient
            mats = [a for a in node.all_input_nodes
                    if isinstance(a.meta.get("val"), torch.Tensor) and a.meta["val"].dim() >= 2]
            b = float(min(2, sum(1 for a in mats if grad.get(a.name, False))))
        out.append(float(b))
    return np.asarray(out, dtype=np.float64)
