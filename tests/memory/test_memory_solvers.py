"""The remat model and its two solvers.

* the accounting (:func:`evaluate`) on hand-checked problems, segments (values recomputed more
  than once) included;
* on random problems (hypothesis): any plan's accounting gives every backward read and every
  recomputation its values; the fast solver's plan fits the budget in that accounting, or it
  reports a minimum that a retry at that minimum meets; the exact solver's plan fits too and
  never costs more than the fast one's; the free baseline never holds more than no remat;
* on real small joint graphs: the fast solver within 10% of the exact optimum at budgets 0.75
  and 0.5.
"""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graphopt.errors import PlanError
from graphopt.memory.remat.baseline import free_saved
from graphopt.memory.remat.greedy import solve_greedy
from graphopt.memory.remat.milp import milp_size, solve_milp
from graphopt.memory.remat.problem import RECOMPUTED, SAVED, RematProblem, _segments, evaluate, resolve_budget
from graphopt.memory.remat.solve import BudgetBelowMinimumWarning, solve_budget


def make_problem(spec, stages, free=()) -> RematProblem:
    """``spec``: (name, kind, bytes, cost, recomputable, inputs, uses) per candidate; ``free``:
    the names of free pointwise values (charged nothing)."""
    names, kind, hold, work, cost, rec, inputs, uses = [], [], [], [], [], [], [], []
    for name, k, nbytes, c, r, ins, us in spec:
        names.append(name)
        kind.append(k)
        hold.append(nbytes if k in ("tensor", "item") else 0)
        work.append(nbytes if k in ("tensor", "tuple") else 0)
        cost.append(c)
        rec.append(r)
        inputs.append(sorted(ins))
        uses.append(sorted(us))
    return RematProblem(names=names, kind=kind, hold=np.array(hold, dtype=np.int64),
                        work=np.array(work, dtype=np.int64), cost=np.array(cost, dtype=float),
                        flops=np.array([int(c * 100) for c in cost], dtype=np.int64),
                        recomputable=np.array(rec, dtype=bool), inputs=inputs, uses=uses,
                        stage_names=[f"s{t}" for t in range(stages)],
                        free=np.array([n in free for n in names], dtype=bool))


# A chain a -> b -> c, each read by the backward: b at stage 0, c at 0, a at 2.
CHAIN = [("a", "tensor", 100, 1.0, True, [], [2]),
         ("b", "tensor", 200, 5.0, True, [0], [0]),
         ("c", "tensor", 300, 1.0, True, [1], [1])]


def test_default_plan_holds_what_it_saves_until_the_last_read():
    p = make_problem(CHAIN, 3)
    base = p.default_saved()
    assert base.tolist() == [True, True, True]
    ev = evaluate(p, base)
    assert ev.mem.tolist() == [600, 400, 100] and ev.peak == p.saved_bytes(base) == 600
    assert ev.cost == 0 and not ev.missing


def test_recompute_just_before_first_use_and_free_after_last():
    p = make_problem(CHAIN, 3)
    ev = evaluate(p, np.array([True, True, False]))  # c recomputed from b at stage 1
    assert ev.state == [SAVED, SAVED, RECOMPUTED] and ev.first[2] == ev.last[2] == 1
    # b must now live until stage 1 to recompute c there.
    assert ev.mem.tolist() == [300, 600, 100] and ev.cost == 1.0
    ev = evaluate(p, np.array([True, False, False]))  # b and c from a
    assert ev.first[1] == 0 and ev.last[1] == 1
    assert ev.mem.tolist() == [100 + 200, 100 + 200 + 300, 100] and ev.cost == 6.0


def test_within_a_stage_a_chain_frees_as_it_goes():
    # x -> y -> z -> w recomputed at stage 0 for w only: y and z die as soon as read.
    spec = [("x", "tensor", 100, 1.0, True, [], [1]), ("y", "tensor", 100, 1.0, True, [0], []),
            ("z", "tensor", 100, 1.0, True, [1], []), ("w", "tensor", 100, 1.0, True, [2], [0])]
    p = make_problem(spec, 2)
    ev = evaluate(p, np.array([True, False, False, False]))
    # held x (100); y (100) then z (100, y alive while z writes), w (100, z alive): 300 max
    assert ev.mem.tolist() == [300, 100]


def test_views_and_tuples_are_recomputed_where_needed_and_random_ops_are_saved():
    spec = [("mm", "tensor", 400, 10.0, True, [], []),
            ("v", "view", 400, 0.0, True, [0], [0, 2]),
            ("ln", "tuple", 120, 3.0, True, [0], []),
            ("out", "item", 100, 0.0, True, [2], [1]),
            ("rstd", "item", 20, 0.0, True, [2], [1]),
            ("drop", "tensor", 50, 1.0, False, [0], [2])]
    p = make_problem(spec, 3)
    base = p.default_saved()
    assert base.tolist() == [True, False, False, True, True, True]
    ev = evaluate(p, base)
    assert ev.nh_stages[1] == [0, 2] and ev.cost == 0
    ev = evaluate(p, np.array([True, False, False, False, False, False]))
    assert ev.missing == [5]  # the random op must be saved
    ev = evaluate(p, np.array([True, False, False, False, False, True]))
    assert ev.state[2] == RECOMPUTED and ev.nh_stages[2] == [1] and ev.cost == 3.0
    assert ev.mem[1] == 400 + 50 + 120  # mm and drop held; the tuple's bytes at its stage


# ``a`` is read at stages 0 and 3, ``b`` at 1 and 2: holding ``a`` across 1-2 is what a
# value recomputed only once cannot avoid.
SPLIT = [("a", "tensor", 100, 1.0, True, [], [0, 3]),
         ("b", "tensor", 300, 1.0, True, [], [1, 2])]


def test_segments_split_the_needs_among_the_starts():
    assert _segments([2, 3, 7, 9], (2, 6)) == [(2, 3), (6, 9)]
    assert _segments([2, 3, 7, 9], None) == [(2, 9)]
    assert _segments([2, 3, 7, 9], (5,)) == [(2, 3), (5, 9)]  # the first need comes first
    assert _segments([2, 3, 7, 9], (0, 1, 8)) == [(1, 7), (8, 9)]  # 0 serves nothing


def test_a_value_recomputed_twice_is_freed_between_its_segments():
    p = make_problem(SPLIT, 4)
    ev = evaluate(p, np.array([True, True]))
    assert ev.mem.tolist() == [400, 400, 400, 100] and ev.cost == 0
    ev = evaluate(p, np.array([False, True]), {0: (0, 3)})  # recomputed at 0 and again at 3
    assert ev.segments[0] == [(0, 0), (3, 3)] and ev.recomputations() == 2
    assert ev.mem.tolist() == [400, 300, 300, 100] and ev.cost == 2.0
    ev = evaluate(p, np.array([True, True]), {0: (3,)})  # saved for stage 0, recomputed at 3
    assert ev.state[0] == SAVED and ev.kept[0] == 0 and ev.segments[0] == [(3, 3)]
    assert ev.mem.tolist() == [400, 300, 300, 100] and ev.cost == 1.0
    assert ev.present(0, 0) and not ev.present(0, 1) and ev.present(0, 3)
    ev = evaluate(p, np.array([True, True]), {0: (0, 3)})  # recomputed before any use: not kept
    assert ev.state[0] == RECOMPUTED and 0 not in ev.kept
    # Replaying a plan's own schedule gives the same accounting.
    again = evaluate(p, np.array([True, True]), ev.schedule())
    assert again.mem.tolist() == ev.mem.tolist() and again.cost == ev.cost


def test_both_solvers_split_a_value_when_one_recomputation_cannot_fit():
    p = make_problem(SPLIT, 4)
    for solve in (solve_greedy, lambda p, b: solve_milp(p, b, time_limit=20)):
        sol = solve(p, 300)
        assert sol.ok, sol.status
        ev = evaluate(p, sol.saved, sol.at)
        assert ev.peak <= 300 and ev.cost == 2.0  # a kept to 0 and rerun at 3; b rerun at 1
        assert len(ev.spans(0)) == 2


def test_a_recomputation_inside_a_segment_reads_its_inputs_there():
    # y = f(x), read at stages 0 and 4; x is read at stage 2 only.
    spec = [("x", "tensor", 50, 1.0, True, [], [2]), ("y", "tensor", 100, 1.0, True, [0], [0, 4])]
    p = make_problem(spec, 5)
    ev = evaluate(p, np.array([True, False]), {1: (0, 4)})
    assert ev.needs[0] == [0, 2, 4] and ev.kept[0] == 4  # x must be there for both reruns
    assert ev.segments[1] == [(0, 0), (4, 4)]


def test_free_values_are_recomputed_from_what_is_held_and_never_cost_more():
    # mm (not free) -> gelu (free): both read by the backward; mm is held to stage 2 anyway.
    spec = [("mm", "tensor", 400, 5.0, True, [], [2]), ("gelu", "tensor", 400, 0.0, True, [0], [0])]
    p = make_problem(spec, 3, free={"gelu"})
    base = p.default_saved()
    assert evaluate(p, base).mem.tolist() == [800, 400, 400]
    saved = free_saved(p)
    assert saved.tolist() == [True, False]
    ev = evaluate(p, saved)
    assert ev.mem.tolist() == [800, 400, 400] and ev.cost == 0  # rerun at 0, where it is read
    # A free value whose input nobody holds costs the input's recomputation: not free.
    spec = [("mm", "tensor", 400, 5.0, True, [], []), ("gelu", "tensor", 400, 0.0, True, [0], [0])]
    p = make_problem(spec, 1, free={"gelu"})
    assert free_saved(p).tolist() == [False, True]
    # At budget 1.0 the solvers keep the free recomputation.
    spec = [("mm", "tensor", 400, 5.0, True, [], [3]), ("gelu", "tensor", 400, 0.0, True, [0], [2])]
    p = make_problem(spec, 4, free={"gelu"})
    full = p.saved_bytes(p.default_saved())
    for solve in (solve_greedy, lambda p, b: solve_milp(p, b, time_limit=20)):
        ev = solve(p, full).evaluation
        assert ev.state[1] == RECOMPUTED and ev.mem.tolist() == [400, 400, 800, 400]


def test_clamping_a_budget_below_the_minimum_warns_and_gives_the_tightest_plan():
    p = make_problem(CHAIN, 3)
    base = p.saved_bytes(p.default_saved())
    with pytest.raises(PlanError, match="feasible minimum"):
        solve_budget(p, 10, baseline=base)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sol = solve_budget(p, 10, baseline=base, clamp=True, name="chain")
    assert [w.category for w in caught] == [BudgetBelowMinimumWarning]
    assert "chain: memory budget of 10 bytes is below the feasible minimum" in str(caught[0].message)
    assert sol.ok and sol.status == "clamped" and sol.requested_budget == 10
    assert sol.evaluation.peak == sol.budget == sol.min_peak > 10
    assert solve_greedy(p, sol.min_peak - 1).status == "infeasible"


def test_budget_semantics():
    assert resolve_budget(0.5, 1000) == 500 and resolve_budget(1.0, 1000) == 1000
    assert resolve_budget(300, 1000) == 300
    for bad in (0.0, 1.5, -3, True, "half"):
        with pytest.raises(PlanError):
            resolve_budget(bad, 1000)


@st.composite
def problems(draw, max_nodes=18, max_stages=10):
    n = draw(st.integers(2, max_nodes))
    T = draw(st.integers(1, max_stages))
    spec, free = [], []
    for v in range(n):
        kind = draw(st.sampled_from(["tensor"] * 6 + ["view", "tuple"]))
        if v and spec[v - 1][1] == "tuple":
            kind = "item"
        if kind == "item":
            ins = [v - 1]
        elif v:
            pool = [u for u in range(v) if spec[u][1] != "tuple"]
            ins = draw(st.lists(st.sampled_from(pool), max_size=1 if kind == "view" else 2,
                                unique=True)) if pool else []
        else:
            ins = []
        if kind == "view" and not ins:
            kind = "tensor"
        nbytes = draw(st.integers(1, 1000))
        cost = 0.0 if kind in ("view", "item") else draw(st.floats(0.1, 10.0))
        rec = kind in ("view", "item") or draw(st.integers(0, 9)) > 0
        if kind == "tensor" and rec and draw(st.integers(0, 3)) == 0:
            free.append(f"n{v}")
            cost = 0.0
        read = kind != "tuple" and draw(st.booleans())
        uses = draw(st.lists(st.integers(0, T - 1), min_size=1, max_size=3, unique=True)) \
            if read else []
        spec.append([f"n{v}", kind, nbytes, cost, rec, ins, uses])
    for v, row in enumerate(spec):  # a tuple's outputs: the items right after it
        if row[1] == "tuple" and (v + 1 == n or spec[v + 1][1] != "item"):
            row[1], row[3] = "tensor", max(row[3], 0.1) if row[0] not in free else 0.0
    return make_problem([tuple(r) for r in spec], T, free=set(free))


def assert_available(p: RematProblem, ev) -> None:
    """Every backward read finds its value at its stage, and so does every recomputation."""
    def there(u: int, t: int) -> bool:
        return ev.present(u, t) if p.holdable[u] else t in ev.nh_stages.get(u, ())

    assert not ev.missing
    for v in range(len(p)):
        for t in p.uses[v]:
            assert there(v, t), (p.names[v], t)
    reruns = [(w, s) for w, segs in ev.segments.items() for s, _ in segs]
    reruns += [(w, s) for w, stages in ev.nh_stages.items() for s in stages]
    for w, s in reruns:
        assert p.recomputable[w], p.names[w]
        for u in p.inputs[w]:
            assert there(u, s), (p.names[w], s, p.names[u])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.data())
def test_any_schedule_gives_every_read_its_value(p, data):
    """The accounting itself: random saved sets and random segment starts."""
    saved = np.array(data.draw(st.lists(st.booleans(), min_size=len(p), max_size=len(p))))
    saved |= ~p.recomputable & p.holdable  # what cannot be rerun is saved
    at = {v: tuple(data.draw(st.lists(st.integers(0, p.num_stages - 1), max_size=3)))
          for v in range(len(p)) if p.holdable[v]}
    ev = evaluate(p, saved, at)
    if ev.missing:  # a view or tuple op that cannot be rerun is needed: no plan exists
        return
    assert_available(p, ev)
    again = evaluate(p, saved, ev.schedule())
    assert again.mem.tolist() == ev.mem.tolist() and again.cost == pytest.approx(ev.cost)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_the_free_baseline_never_holds_more_than_no_remat(p):
    base = p.default_saved()
    e0 = evaluate(p, base)
    ev = evaluate(p, free_saved(p))
    assert (ev.mem <= e0.mem).all() and ev.cost == 0
    if not e0.missing:
        assert_available(p, ev)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.floats(0.05, 1.0))
def test_fast_plan_fits_in_its_own_accounting_or_states_a_minimum_that_works(p, frac):
    base = p.default_saved()
    assert evaluate(p, base).peak == p.saved_bytes(base)  # no remat holds what it saves
    budget = int(frac * p.saved_bytes(base))
    sol = solve_greedy(p, budget)
    ev = evaluate(p, sol.saved, sol.at)
    assert ev.peak == sol.evaluation.peak and ev.cost == pytest.approx(sol.evaluation.cost)
    if sol.ok:
        assert ev.peak <= budget and not ev.missing
        assert_available(p, ev)
    else:
        assert sol.min_peak > budget
        retry = solve_greedy(p, sol.min_peak)
        assert retry.ok and retry.evaluation.peak <= sol.min_peak


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(max_nodes=9, max_stages=6), st.floats(0.2, 1.0))
def test_exact_plan_fits_and_is_never_worse_than_the_fast_one(p, frac):
    budget = int(frac * p.saved_bytes(p.default_saved()))
    exact = solve_milp(p, budget, time_limit=20)
    fast = solve_greedy(p, budget)
    if exact.status == "optimal":
        ev = evaluate(p, exact.saved, exact.at)
        assert ev.peak <= budget and not ev.missing
        assert_available(p, ev)
        if fast.ok:
            assert exact.evaluation.cost <= fast.evaluation.cost * (1 + 1e-3) + 1e-9
    if exact.status == "infeasible":
        assert not fast.ok and exact.min_peak > budget
        assert fast.min_peak >= exact.min_peak


def _joint_problem(model, x):
    import graphopt
    from graphopt.memory.joint import capture_joint
    from graphopt.memory.remat.build import build_problem
    joint = capture_joint(graphopt.capture(model, (x,)), (x,))
    return build_problem(joint.graph, num_fwd_outputs=joint.num_fwd_outputs)


@pytest.mark.parametrize("which", ["resmlp1", "resmlp2", "mlp"])
def test_fast_solver_within_ten_percent_of_optimal_on_small_joint_graphs(which):
    from graphopt import zoo
    torch.manual_seed(0)
    if which.startswith("resmlp"):
        model = zoo.ResidualMLP(dim=64, depth=int(which[-1]), hidden=256)
        x = torch.randn(64, 64)
    else:
        model, x = zoo.MLP(sizes=(32, 64, 64, 64, 8)), torch.randn(16, 32)
    p = _joint_problem(model, x)
    assert milp_size(p) < 2000
    base = p.saved_bytes(p.default_saved())
    for frac in (0.75, 0.5):
        budget = int(frac * base)
        exact = solve_milp(p, budget, time_limit=30)
        fast = solve_greedy(p, budget)
        if exact.status == "infeasible":  # one block at half its bytes: below the minimum
            assert not fast.ok and fast.min_peak >= exact.min_peak > budget
            continue
        assert exact.status == "optimal" and fast.ok
        assert exact.evaluation.peak <= budget and fast.evaluation.peak <= budget
        assert fast.evaluation.cost <= 1.10 * exact.evaluation.cost + 1e-12, frac
