"""The joint forward+backward graph of a training step, and splitting it back into two.

aot_autograd traces forward and backward into one *joint* graph (primals and tangents in; forward
outputs and gradients out) and hands it to a ``partition_fn`` that must return the forward and
backward graphs. graphopt plans memory on the joint graph, because that is where the choice
between saving and recomputing lives, then splits it with aot_autograd's default partitioner:
after :mod:`graphopt.passes.rematerialize` every forward value the backward part still reads is
one the plan saves, and the recomputation already sits in the backward part where the plan put
it, so the default split is exactly the plan.

* :func:`capture_joint` records the joint graph of a captured :class:`~graphopt.graph.Graph`
  (what ``graphopt remat --train`` plans);
* :func:`joint_graph` wraps a joint module as a Graph; :func:`split_joint` splits it.

Needs aot_autograd (torch >= 2.6). Tracing is on fake tensors; nothing runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from graphopt.capture import quiet_torch
from graphopt.errors import GraphoptError, first_line
from graphopt.graph import Graph

__all__ = ["JointCapture", "capture_joint", "joint_graph", "split_joint"]


@dataclass
class JointCapture:
    """A joint graph and how many of its leading outputs are forward outputs."""

    graph: Graph
    num_fwd_outputs: int
    joint_inputs: object = None


def joint_graph(joint_module: torch.fx.GraphModule, *, name: str = "joint") -> Graph:
    """The joint module as a Graph; parameters are the primals aot_autograd lifted."""
    return Graph(joint_module, name=name, capture_mode="aot_autograd_joint")


def split_joint(graph: Graph, joint_inputs, *, num_fwd_outputs: int, **kwargs):
    """Forward and backward modules of a (planned) joint graph, by the default partitioner."""
    from torch._functorch.partitioners import default_partition
    return default_partition(graph.gm, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)


def capture_joint(graph: Graph, inputs) -> JointCapture:
    """Trace the training step of a captured forward graph: its joint forward+backward graph.

    The step is forward, then backward from every floating-point output with a given
    cotangent (aot_autograd's tangents), so it needs no loss function.

    Example:
        >>> g = graphopt.capture(model, (x,))
        >>> joint = capture_joint(g, (x,))
        >>> len(joint.graph), joint.num_fwd_outputs
    """
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    if not any(p.requires_grad for p in graph.gm.parameters()):
        raise GraphoptError(f"{graph.name}: no parameter requires grad, so a training step has "
                            "no backward pass; plan it without --train")
    record: dict = {}

    def partition(joint_module, joint_inputs, *, num_fwd_outputs, **kwargs):
        record.update(module=joint_module, num_fwd_outputs=num_fwd_outputs, inputs=joint_inputs)
        return split_joint(joint_graph(joint_module), joint_inputs,
                           num_fwd_outputs=num_fwd_outputs, **kwargs)

    def nop(gm, _inputs):
        return make_boxed_func(gm.forward)

    try:
        with torch.enable_grad(), quiet_torch():
            aot_module_simplified(graph.gm, list(inputs), fw_compiler=nop, bw_compiler=nop,
                                  partition_fn=partition)
    except GraphoptError:
        raise
    except Exception as exc:  # noqa: BLE001 - aot_autograd fails in many ways; say which
        raise GraphoptError(f"{graph.name}: cannot trace the training step with aot_autograd: "
                            f"{first_line(exc)}") from exc
    if "module" not in record:
        raise GraphoptError(f"{graph.name}: no output depends on a parameter that requires "
                            "grad, so the training step has no backward pass")
    return JointCapture(joint_graph(record["module"], name=f"{graph.name} (train step)"),
                        record["num_fwd_outputs"], record["inputs"])
