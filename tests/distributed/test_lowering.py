"""The relay lowering, in one process: stage chains equal the graph, forward and backward."""
import torch
from train_models import plan_from_cuts, prepared

from graphopt.capture import capture
from graphopt.distributed.lowering import (
    RelayStage,
    _restride,
    lower,
    relay_bytes,
    tied_parameters,
    unused_parameters,
)
from graphopt.partition.stages import split_graph
from graphopt.schedules import placement


def _chain(lowered, flat):
    """Run every RelayStage in order in this process (what the pipeline does across ranks)."""
    xs = tuple(flat)
    for p in lowered.programs:
        xs = RelayStage(p)(*xs)
    return xs


def _skip_plan():
    prep = prepared("resmlp")
    return prep, plan_from_cuts(prep.graph, 3, ["add", "layer_norm_1"], "resmlp")


def test_carries_line_up_and_every_root_enters_stage_0():
    prep, plan = _skip_plan()
    low = lower(plan.split(prep.graph), prep.graph)
    assert low.programs[0].carry_in == low.root_inputs == ["x"]
    for a, b in zip(low.programs, low.programs[1:]):
        assert a.carry_out == b.carry_in          # one canonical order per stage pair
    assert low.programs[-1].carry_out == prep.graph.output_names()


def test_relayed_stages_equal_the_graph_forward_and_backward():
    prep, plan = _skip_plan()
    graph = prep.graph
    low = lower(plan.split(graph), graph)
    x = torch.randn(2, 16)
    got = _chain(low, (x,))[0]
    want = graph.run(x)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    got.square().sum().backward()
    grads = {n: p.grad.clone() for prog in low.programs for n, p in prog.module.named_parameters()}
    for prog in low.programs:
        prog.module.zero_grad(set_to_none=True)
    graph.gm.zero_grad(set_to_none=True)
    whole = RelayStage(lower(split_graph(graph, {n: 0 for n in graph.info}, 1), graph).programs[0])
    whole(x)[0].square().sum().backward()
    for n, p in whole.inner.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-6, atol=1e-7)


def test_relay_sends_a_skip_once_per_boundary_it_crosses():
    prep, plan = _skip_plan()
    low = lower(plan.split(prep.graph), prep.graph)
    rows = relay_bytes(low, placement("1f1b", 3, 1))
    per = {s: f for s, f, _ in rows["per_boundary"]}
    skip = 2 * 16 * 4                              # block 0's output: 2 samples x 16 floats
    assert per[0] == skip and per[1] >= skip       # crosses 0 -> 1 and 1 -> 2
    assert rows["forward"] == sum(per.values()) and rows["backward"] == rows["forward"]
    same_rank = relay_bytes(low, [0, 1, 1])        # a boundary inside one rank sends nothing
    assert {s: f for s, f, _ in same_rank["per_boundary"]}[1] == 0


def test_masks_are_recomputed_and_tied_weights_found():
    prep = prepared("gpt2")
    graph = prep.graph
    names = [n.name for n in graph.fx_nodes() if not graph.info[n.name].is_param]
    cut = names[len(names) // 2]
    plan = plan_from_cuts(graph, 2, [cut], "gpt2")
    low = lower(plan.split(graph), graph)
    carried = {v for p in low.programs for v in p.carry_in}
    assert not [v for v in carried if graph.info[v].is_param]    # constants never travel
    groups = tied_parameters(low)
    assert len(groups) == 1 and {s for s, _ in groups[0]} == {0, 1}
    wte = dict(low.programs[0].module.named_parameters())[groups[0][0][1]]
    head = dict(low.programs[1].module.named_parameters())[groups[0][1][1]]
    assert wte is head                             # one weight in the model, two stages


def test_received_tensors_get_back_their_captured_strides():
    t = torch.randn(2, 3, 4).transpose(1, 2)       # as a producer left it
    dense = t.contiguous()                         # as it arrives
    back = _restride(dense, t.stride())
    assert back.stride() == t.stride() and torch.equal(back, t)
    assert _restride(dense, dense.stride()) is dense


class _Detached(torch.nn.Module):
    """``b`` feeds only a detached output; ``c`` only the second output."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x):
        h = self.a(x)
        return h.sum(), self.b(h).detach() + 1, self.c(x)


def test_unused_parameters_follow_the_loss_back_through_the_stages():
    graph = capture(_Detached(), (torch.randn(2, 4),), name="detached")
    low = lower(split_graph(graph, {n: 0 for n in graph.info}, 1), graph)
    flat = [name for name in low.programs[0].carry_out for _ in low.programs[0].specs[name]]
    assert len(flat) == 3
    # The loss is output 0 (the sum): b feeds a detached value and c another output.
    unused = unused_parameters(low, [0])[0]
    assert unused == {t for t in unused if t.startswith(("b", "c"))} and len(unused) == 4
    # Training on outputs 0 and 2 reaches c too; b never gets a gradient.
    assert {t[0] for t in unused_parameters(low, [0, 2])[0]} == {"b"}
    # Across stages: the skip plan of the resmlp tests uses every weight.
    prep, plan = _skip_plan()
    low = lower(plan.split(prep.graph), prep.graph)
    assert unused_parameters(low, [0]) == {0: set(), 1: set(), 2: set()}
