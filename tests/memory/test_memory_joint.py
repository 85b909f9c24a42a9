"""The joint training-step graph: traced from a captured graph, split back by the default
partitioner into modules that compute what the joint graph does."""
import pytest
import torch
import torch.utils._pytree as pytree

import graphopt
from graphopt import zoo
from graphopt.errors import GraphoptError
from graphopt.memory.joint import capture_joint, split_joint
from graphopt.memory.remat.build import forward_region


def test_joint_graph_has_forward_then_backward_and_splits_back():
    torch.manual_seed(0)
    model, x = zoo.ResidualMLP(dim=16, depth=2, hidden=32), torch.randn(4, 16)
    joint = capture_joint(graphopt.capture(model, (x,)), (x,))
    nodes = [n for n in joint.graph.gm.graph.nodes if n.op == "call_function"]
    forward = forward_region(joint.graph.gm)
    flags = [n.name in forward for n in nodes]
    assert flags[0] and not flags[-1] and flags == sorted(flags, reverse=True)
    assert joint.num_fwd_outputs == 1
    fw, bw = split_joint(joint.graph, joint.joint_inputs, num_fwd_outputs=1)
    primals = [p.detach() for p in model.parameters()] + [x]
    fw_out = fw(*primals)
    torch.testing.assert_close(fw_out[0], model(x))
    tangent = torch.ones_like(fw_out[0])
    saved = list(fw_out[1:])  # no symbolic sizes here: the saved tensors, then the tangent
    grads = [g for g in pytree.tree_leaves(bw(*saved, tangent)) if g is not None]
    ref = torch.autograd.grad(model(x), list(model.parameters()), tangent)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r)


def test_no_parameter_requires_grad_is_a_clear_error():
    model, inputs = zoo.build("mlp")
    for p in model.parameters():
        p.requires_grad_(False)
    g = graphopt.capture(model, inputs)
    with pytest.raises(GraphoptError) as info:
        capture_joint(g, inputs)
    assert "without --train" in str(info.value) and "\n" not in str(info.value)
