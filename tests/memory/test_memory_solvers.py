"""The remat model and its two solvers.

* the accounting (:func:`evaluate`) on hand-checked problems;
* on random problems (hypothesis): the fast solver's plan fits the budget in that accounting,
  or it reports a minimum that a retry at that minimum meets; the exact solver's plan fits too
  and never costs more than the fast one's;
* on real small joint graphs: the fast solver within 10% of the exact optimum at budgets 0.75
  and 0.5.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from graphopt.memory.remat.greedy import solve_greedy
from graphopt.memory.remat.milp import milp_size, solve_milp
from graphopt.memory.remat.problem import RECOMPUTED, SAVED, RematProblem, evaluate, resolve_budget
from graphopt.errors import PlanError


def make_problem(spec, stages) -> RematProblem:
    """``spec``: (name, kind, bytes, cost, recomputable, inputs, uses) per candidate."""
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
                        stage_names=[f"s{t}" for t in range(stages)])


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
    spec = []
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
        read = kind != "tuple" and draw(st.booleans())
        uses = draw(st.lists(st.integers(0, T - 1), min_size=1, max_size=3, unique=True)) \
            if read else []
        spec.append([f"n{v}", kind, nbytes, cost, rec, ins, uses])
    for v, row in enumerate(spec):  # a tuple's outputs: the items right after it
        if row[1] == "tuple" and (v + 1 == n or spec[v + 1][1] != "item"):
            row[1], row[3] = "tensor", max(row[3], 0.1)
    return make_problem([tuple(r) for r in spec], T)


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
