"""The schedule registry against torch's own: classes, placement, action orders, in-flight counts."""
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt import schedules
from graphopt.errors import GraphoptError, PlanError
from graphopt.schedules import (
    ALL_SCHEDULES,
    SCHEDULES,
    Action,
    action_orders,
    check_schedule,
    inflight,
    placement,
    stages_per_rank,
)

ts = pytest.importorskip("torch.distributed.pipelining.schedules")
vis = pytest.importorskip("torch.distributed.pipelining._schedule_visualizer")


def _torchs(schedule, p, m, v):
    """torch's own compute order, through its visualizer's schedule instantiation."""
    name = schedules.REGISTRY[schedule].torch_name
    ops = vis.get_schedule_ops(name, p, m, v)
    kinds = {"F": "F", "B": "B", "I": "B", "W": "W"}
    return [[Action(kinds[a.computation_type.value], a.stage_index, a.microbatch_index)
             for a in rank if a is not None and a.computation_type.value in kinds]
            for rank in ops]


def test_the_module_does_not_import_torch():
    code = ("import sys, graphopt.schedules, graphopt.parallel; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_names_resolve_to_torch_classes():
    assert set(SCHEDULES) < set(ALL_SCHEDULES)
    expected = {"gpipe": ts.ScheduleGPipe, "1f1b": ts.Schedule1F1B,
                "interleaved": ts.ScheduleInterleaved1F1B, "zero-bubble": ts.ScheduleZBVZeroBubble,
                "interleaved-zero-bubble": ts.ScheduleInterleavedZeroBubble}
    for name in ALL_SCHEDULES:
        assert schedules.torch_schedule_class(name) is expected[name]


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_placement_is_torchs_stage_to_rank_mapping(p):
    for name in ALL_SCHEDULES:
        v = stages_per_rank(name)
        style = schedules.REGISTRY[name].style
        theirs = ts.generate_stage_to_rank_mapping(p, p * v, style=style)
        assert placement(name, p, v) == [theirs[s] for s in range(p * v)]
    assert placement("zero-bubble", 3, 2) == [0, 1, 2, 2, 1, 0]
    assert placement("interleaved", 2, 3) == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("schedule,p,m,v", [
    ("interleaved", 2, 4, 2), ("interleaved", 4, 8, 2), ("interleaved", 3, 6, 3),
    ("interleaved", 4, 3, 2), ("zero-bubble", 2, 9, 2), ("zero-bubble", 3, 4, 2),
    ("zero-bubble", 4, 8, 2), ("zero-bubble", 3, 2, 2), ("interleaved-zero-bubble", 4, 8, 2),
    ("gpipe", 3, 5, 1)])
def test_action_orders_are_torchs_pipeline_order(schedule, p, m, v):
    assert action_orders(schedule, p, v, m) == _torchs(schedule, p, m, v)


@pytest.mark.parametrize("p,m", [(2, 2), (3, 7), (4, 8)])
def test_1f1b_is_torchs_order_and_its_runtime_loop_on_the_last_rank(p, m):
    ours, theirs = action_orders("1f1b", p, 1, m), _torchs("1f1b", p, m, 1)
    assert ours[:-1] == theirs[:-1]
    # Schedule1F1B's order IR numbers the last rank's forwards from 1; its loop does F0 B0 F1 ..
    assert ours[-1] == [Action(k, p - 1, i) for i in range(m) for k in "FB"]


def test_inflight_closed_forms():
    assert inflight("gpipe", 4, 1, 6) == [6] * 4
    assert inflight("1f1b", 4, 1, 8) == [4, 3, 2, 1]
    assert inflight("1f1b", 4, 1, 2) == [2, 2, 2, 1]
    # ZBV: the V's first stage on rank 0 holds the most.
    zbv = inflight("zero-bubble", 2, 2, 4)
    assert len(zbv) == 4 and max(zbv) == zbv[0]


def test_bad_configurations_are_one_line_plan_errors():
    with pytest.raises(PlanError, match="unknown schedule 'pipedream'"):
        stages_per_rank("pipedream")
    with pytest.raises(PlanError, match="multiple of"):
        action_orders("interleaved", 4, 2, 9)     # 2 rounds of 4 do not hold 9
    with pytest.raises(PlanError, match="one stage per rank"):
        stages_per_rank("1f1b", 2)
    with pytest.raises(PlanError, match="exactly 2"):
        stages_per_rank("zero-bubble", 3)
    with pytest.raises(PlanError, match="at least 2"):
        stages_per_rank("interleaved", 1)
    with pytest.raises(GraphoptError, match="--microbatches 4 or more"):
        check_schedule("1f1b", 4, 1, 2)
    with pytest.raises(GraphoptError) as err:
        check_schedule("interleaved", 4, 2, 9)
    assert "\n" not in str(err.value)
    check_schedule("interleaved", 4, 2, 8)
    assert stages_per_rank("interleaved-zero-bubble", 1) == 1


@settings(max_examples=60, deadline=None)
@given(schedule=st.sampled_from(ALL_SCHEDULES), p=st.integers(1, 5), m=st.integers(1, 12),
       extra=st.integers(0, 2))
def test_every_order_runs_each_action_once_on_its_rank(schedule, p, m, extra):
    info = schedules.REGISTRY[schedule]
    v = info.min_stages if info.max_stages == info.min_stages else info.min_stages + extra
    try:
        orders = action_orders(schedule, p, v, m)
    except PlanError:
        return                                      # torch refuses it: so does the registry
    place = placement(schedule, p, v)
    kinds = "FBW" if info.split_backward else "FB"
    seen = [(a.kind, a.stage, a.microbatch) for o in orders for a in o]
    assert sorted(seen) == sorted((k, s, i) for k in kinds for s in range(p * v) for i in range(m))
    for r, order in enumerate(orders):
        assert all(place[a.stage] == r for a in order)
        pos = {(a.kind, a.stage, a.microbatch): i for i, a in enumerate(order)}
        for (k, s, i), at in pos.items():            # a backward follows its forward
            if k != "F":
                assert pos[("F", s, i)] < at
    assert inflight(schedule, p, v, m) == [max(x, 0) for x in inflight(schedule, p, v, m)]
