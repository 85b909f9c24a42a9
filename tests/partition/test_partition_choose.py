"""The one ranking rule: bytes first, time only past the thresholds, both numbers in the notes."""
import pytest

from graphopt.partition.choose import TIME_SLACK, best_plan, choice_notes, gives_way
from graphopt.partition.metrics import Metrics


def _m(comm, full_us, work_us, imbalance=0.01):
    """A two-stage plan's metrics: the slowest stage ``full_us`` (fixed costs included) of which
    ``work_us`` is work."""
    return Metrics(k=2, comm_bytes=comm, imbalance=imbalance, acyclic=True, stage_ordered=True,
                   part_flops=[1, 1], part_param_bytes=[0, 0], part_act_bytes=[0, 0],
                   part_seconds=[0.0, 0.0], recv_bytes=[0, comm], recv_messages=[0, 1],
                   stage_seconds=[full_us * 1e-6, full_us * 1e-6 / 2],
                   work_seconds=[work_us * 1e-6, work_us * 1e-6 / 2])


def _pick(pool, objective="volume", **kw):
    return best_plan(list(pool), lambda c: c[1], objective, TIME_SLACK, **kw)[0]


def test_a_difference_made_of_launches_does_not_outweigh_bytes():
    """4.4x fewer bytes at the same work wins even though launches make it 4% slower."""
    few = ("few", _m(100_000, full_us=104.0, work_us=5.0))
    many = ("many", _m(440_000, full_us=100.0, work_us=5.0))
    assert _pick([few, many]) == "few"
    assert _pick([few, many], "time") == "many"


def test_work_beyond_the_threshold_decides():
    """More than 10% of the stage time in extra work: the faster plan is kept."""
    few = ("few", _m(100_000, full_us=150.0, work_us=120.0))
    fast = ("fast", _m(400_000, full_us=100.0, work_us=70.0))
    assert _pick([few, fast]) == "fast"
    within = ("within", _m(100_000, full_us=105.0, work_us=75.0))
    assert _pick([within, fast]) == "within"


def test_balance_first_then_simplicity_breaks_ties():
    a = ("balanced", _m(500, 10.0, 5.0))
    b = ("cheap but unbalanced", _m(100, 10.0, 5.0))
    ok = {"balanced": True, "cheap but unbalanced": False}
    assert _pick([a, b], admissible=lambda c: ok[c[0]]) == "balanced"
    # none admissible: all compete
    assert _pick([a, b], admissible=lambda c: False) == "cheap but unbalanced"
    cut = ("cut", _m(500, 9.0, 5.0))
    whole = ("whole", _m(500, 10.0, 5.0))
    blocks = {"cut": 3, "whole": 0}
    assert _pick([cut, whole], simplicity=lambda c: blocks[c[0]]) == "whole"
    with pytest.raises(ValueError):
        best_plan([], lambda c: c)


def test_notes_give_both_plans_numbers():
    kept = _m(400_000, full_us=100.0, work_us=70.0, imbalance=0.02)
    fewest = _m(100_000, full_us=150.0, work_us=120.0)
    equal = _m(300_000, full_us=110.0, work_us=90.0, imbalance=0.12)
    notes = choice_notes(kept, fewest, equal, objective="volume", time_slack=0.1,
                         imbalance=0.03, equal_admissible=False, balance="flops")
    assert len(notes) == 2
    assert "100,000 B" in notes[0] and "400,000 B" in notes[0] and "150.0 us" in notes[0]
    assert "300,000 B" in notes[1] and "FLOPs imbalance is 12.0%" in notes[1]
    equal.time_imbalance, kept.time_imbalance = 0.25, 0.01
    notes = choice_notes(kept, fewest, equal, objective="volume", time_slack=0.1,
                         imbalance=0.03, equal_admissible=False)
    assert "time imbalance is 25.0%" in notes[1] and "this plan's is 1.0%" in notes[1]
    assert choice_notes(kept, kept, _m(500_000, 90.0, 60.0), objective="volume",
                        time_slack=0.1, imbalance=0.03, equal_admissible=True) == []


def test_a_plan_three_times_slower_in_launches_gives_way_to_one_sending_a_little_more():
    """Fixed costs are left out of the work threshold but not without bound: a stage more than
    twice as slow by the full estimate, bought for at most 10% fewer bytes, gives way."""
    blocks = ("six blocks", _m(444_928, full_us=806.0, work_us=7.7))
    single = ("one cut", _m(473_600, full_us=274.0, work_us=7.0))
    whole = ("whole", _m(819_200, full_us=155.0, work_us=5.1))
    assert _pick([blocks, single, whole]) == "one cut"
    assert gives_way(blocks[1], single[1]) and not gives_way(single[1], whole[1])
    # the 4.4x case above is untouched: 4% slower, far more than 10% fewer bytes
    assert not gives_way(_m(100_000, 104.0, 5.0), _m(440_000, 100.0, 5.0))
    # 11% fewer bytes keep their plan however slow its launches
    assert _pick([("blocks", _m(420_000, 806.0, 7.7)), single]) == "blocks"
    notes = choice_notes(single[1], blocks[1], None, objective="volume", time_slack=0.1,
                         imbalance=0.03, equal_admissible=True)
    assert len(notes) == 1 and "444,928 B" in notes[0] and "more than 2x" in notes[0]
