"""The rematerialization problem both solvers share, and the one accounting that judges a plan.

A joint forward+backward graph runs its forward nodes, then its backward nodes. Backward nodes
that read forward values are the *stages* ``0..T-1``, in backward order. A *candidate* is a
forward value some stage needs, directly or through the recomputation of another. A plan picks
the candidates to *save* (kept from the forward pass); every other needed candidate is
*recomputed* in the backward pass:

* a tensor (or a ``getitem`` of a multi-output op) is recomputed once, at stage ``at[v]``
  (default: its first need, just before the first backward node that needs it), held until its
  last need and then freed;
* a view or a tuple-producing op is never held (holding a view pins its base): it is recomputed
  at every stage that needs it, which for a view costs nothing.

Accounting (what the budget bounds): at stage ``t`` the bytes *held for the backward pass* are
the saved values still needed at or after ``t``, the recomputed values held across ``t``, and
the peak of what stage ``t`` recomputes, replayed in topological order with each value freed
after its last reader there (as the rewritten graph frees it). Values held into a stage count
for the whole stage, so this is an upper bound of what the schedule holds. Gradients and
backward temporaries are the same for every plan and are left to the liveness analysis
(:mod:`graphopt.memory.liveness`), which gives the step's full peak.

:mod:`graphopt.memory.remat.build` builds the problem from a joint graph.

Complexity: :func:`evaluate` is O(C + E_c + T) for C candidates with E_c edges among them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.errors import PlanError

__all__ = ["RematProblem", "Evaluation", "Solution", "evaluate", "resolve_budget", "KINDS",
           "NONE", "SAVED", "RECOMPUTED"]

# Candidate kinds: tensor and item can be held; view and tuple are recomputed where needed.
KINDS = ("tensor", "item", "view", "tuple")
_HOLDABLE = {"tensor", "item"}

NONE, SAVED, RECOMPUTED = 0, 1, 2


@dataclass
class RematProblem:
    """Candidates (topological order) with bytes, recompute cost, inputs and direct uses.

    ``hold[v]`` is the bytes while held, ``work[v]`` the bytes at the stage that recomputes it
    (0 for views, and for a getitem, whose bytes the tuple op counts), ``cost[v]`` the time (or
    FLOPs) to recompute it once, ``uses[v]`` the sorted stages that read it directly.
    """

    names: list[str]
    kind: list[str]
    hold: np.ndarray
    work: np.ndarray
    cost: np.ndarray
    flops: np.ndarray
    recomputable: np.ndarray
    inputs: list[list[int]]
    uses: list[list[int]]
    stage_names: list[str]
    users: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.users:
            self.users = [[] for _ in self.names]
            for v, ins in enumerate(self.inputs):
                for u in ins:
                    self.users[u].append(v)
        self.holdable = np.array([k in _HOLDABLE for k in self.kind], dtype=bool)
        self.recomputable = np.array(self.recomputable, dtype=bool)
        for v, k in enumerate(self.kind):
            # An output of a multi-output op comes back only by rerunning that op.
            if k == "item" and any(self.kind[u] == "tuple" and not self.recomputable[u]
                                   for u in self.inputs[v]):
                self.recomputable[v] = False

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    def default_saved(self) -> np.ndarray:
        """What a partitioner without rematerialization saves: every holdable value a stage
        reads, and the holdable bases of the views and tuples it reads (recomputed for free)."""
        saved = np.zeros(len(self), dtype=bool)
        stack = [v for v in range(len(self)) if self.uses[v]]
        seen = set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            if self.holdable[v]:
                saved[v] = True
            else:
                stack.extend(self.inputs[v])
        return saved

    def saved_bytes(self, saved: np.ndarray) -> int:
        return int(self.hold[saved].sum())


@dataclass
class Evaluation:
    """A plan under the shared accounting: per-stage held bytes, cost, and the schedule."""

    mem: np.ndarray
    cost: float
    flops: int
    state: list[int]
    first: list[int]
    last: list[int]
    nh_stages: dict[int, list[int]]
    missing: list[int]

    @property
    def peak(self) -> int:
        return int(self.mem.max()) if len(self.mem) else 0

    @property
    def peak_stage(self) -> int:
        return int(self.mem.argmax()) if len(self.mem) else 0

    @property
    def feasible(self) -> bool:
        return not self.missing

    def saved(self) -> list[int]:
        return [v for v, s in enumerate(self.state) if s == SAVED]

    def saved_mask(self) -> np.ndarray:
        return np.array([s == SAVED for s in self.state], dtype=bool)

    def recomputed(self) -> list[int]:
        return [v for v, s in enumerate(self.state) if s == RECOMPUTED]

    def over(self, budget: int) -> float:
        """Bytes-times-stages above the budget: 0 exactly when the plan fits."""
        return float(np.clip(self.mem - budget, 0, None).sum())


@dataclass
class Solution:
    """A solver's answer: the saved set, recompute stages, and how sure the solver is.

    ``status`` is ``optimal``, ``feasible`` (time limit hit with a plan in hand; ``gap`` says how
    far from optimal it may be), ``heuristic`` (the fast solver), or ``infeasible``, in which
    case ``min_peak`` is the smallest held peak the solver reached.
    """

    saved: np.ndarray
    at: dict[int, int]
    evaluation: Evaluation
    solver: str
    status: str
    seconds: float
    budget: int
    gap: float | None = None
    bound: float | None = None
    min_peak: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "feasible", "heuristic")

    def stats(self) -> dict:
        ev = self.evaluation
        return {"solver": self.solver, "status": self.status, "seconds": round(self.seconds, 4),
                "budget_bytes": self.budget, "held_peak_bytes": ev.peak,
                "recompute_cost": ev.cost, "recompute_flops": ev.flops, "gap": self.gap,
                "bound": self.bound, "min_peak_bytes": self.min_peak}


def evaluate(p: RematProblem, saved: np.ndarray, at: dict[int, int] | None = None) -> Evaluation:
    """Judge a plan: ``saved`` (bool per candidate) and optional recompute stages ``at``.

    Needs propagate from consumers to inputs in reverse topological order, so every value is
    decided after everything that could need it. Non-recomputable values that are needed but not
    saved are reported in ``missing`` and counted as saved. Then each stage's recomputations
    are replayed in topological order (:func:`_stage_peak`).
    """
    n, T = len(p), p.num_stages
    at = at or {}
    state = [NONE] * n
    first = [-1] * n
    last = [-1] * n
    nh_stages: dict[int, list[int]] = {}
    starts: list[int] = []
    ends: list[int] = []
    sizes: list[int] = []
    missing: list[int] = []
    at_stage: list[list[int]] = [[] for _ in range(T)]
    cost = 0.0
    flops = 0
    hold, costs, fl = p.hold.tolist(), p.cost.tolist(), p.flops.tolist()
    holdable, recomp, users = p.holdable.tolist(), p.recomputable.tolist(), p.users
    for v in range(n - 1, -1, -1):
        uses = p.uses[v]
        lo = uses[0] if uses else T
        hi = uses[-1] if uses else -1
        extra: list[int] = []
        for w in users[v]:
            sw = state[w]
            if sw != RECOMPUTED:
                continue
            if holdable[w]:
                f = first[w]
                lo, hi = min(lo, f), max(hi, f)
                if not holdable[v]:
                    extra.append(f)
            else:
                st = nh_stages[w]
                lo, hi = min(lo, st[0]), max(hi, st[-1])
                if not holdable[v]:
                    extra.extend(st)
        if hi < 0:
            continue
        if holdable[v]:
            if saved[v] or not recomp[v]:
                if not saved[v]:
                    missing.append(v)
                state[v], first[v], last[v] = SAVED, lo, hi
                starts.append(0), ends.append(hi), sizes.append(hold[v])
                continue
            f = min(at.get(v, lo), lo)
            state[v], first[v], last[v] = RECOMPUTED, f, hi
            cost += costs[v]
            flops += fl[v]
            at_stage[f].append(v)
            if hi > f:
                starts.append(f + 1), ends.append(hi), sizes.append(hold[v])
        else:
            stages = sorted(set(uses) | set(extra))
            if not recomp[v]:
                missing.append(v)
            state[v], first[v], last[v] = RECOMPUTED, stages[0], stages[-1]
            nh_stages[v] = stages
            cost += costs[v] * len(stages)
            flops += fl[v] * len(stages)
            for t in stages:
                at_stage[t].append(v)
    diff = np.zeros(T + 1, dtype=np.int64)
    if sizes:
        np.add.at(diff, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64))
        np.add.at(diff, np.asarray(ends, dtype=np.int64) + 1, -np.asarray(sizes, dtype=np.int64))
    mem = np.cumsum(diff[:-1]) if T else np.zeros(0, dtype=np.int64)
    for t, q in enumerate(at_stage):
        if q:
            mem[t] += _stage_peak(p, sorted(q), t, last)
    return Evaluation(mem, cost, flops, state, first, last, nh_stages, missing)


def _stage_peak(p: RematProblem, q: list[int], t: int, last: list[int]) -> int:
    """Peak bytes of the values stage ``t`` recomputes (``q``, in topological order), on top of
    what it holds. A value dies after its last reader in ``q`` unless stage ``t`` reads it or it
    is held past ``t``; a tuple op's buffer dies once all of its recomputed outputs have.
    The MILP's ``D`` variables (:mod:`graphopt.memory.remat.milp`) encode the same rule."""
    work, kind = p.work, p.kind
    inq = set(q)
    readers = {j: sum(1 for i in p.users[j] if i in inq) for j in q}
    items_left = {j: sum(1 for i in p.users[j] if i in inq and kind[i] == "item")
                  for j in q if kind[j] == "tuple"}
    keep = {j for j in q if t in p.uses[j] or (p.holdable[j] and last[j] > t)}
    cur = peak = 0
    for k in q:
        cur += int(work[k])
        peak = max(peak, cur)
        for u in p.inputs[k]:
            if u not in inq:
                continue
            readers[u] -= 1
            if readers[u] or u in keep:
                continue
            if kind[u] == "item":
                parent = next((a for a in p.inputs[u] if kind[a] == "tuple" and a in inq), None)
                if parent is not None:
                    items_left[parent] -= 1
                    if not items_left[parent] and not readers[parent] and parent not in keep:
                        cur -= int(work[parent])
            elif kind[u] == "tuple":
                if not items_left[u]:
                    cur -= int(work[u])
            else:
                cur -= int(work[u])
    return peak


def resolve_budget(budget: float | int, baseline_saved: int) -> int:
    """A float in (0, 1] is a fraction of the no-remat saved bytes; an int is bytes.

    Example:
        >>> resolve_budget(0.5, 1000), resolve_budget(300, 1000)
        (500, 300)
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise PlanError(f"memory budget must be a float in (0, 1] or an int of bytes, "
                        f"got {budget!r}")
    if isinstance(budget, float):
        if not 0.0 < budget <= 1.0:
            raise PlanError(f"memory budget {budget} is a fraction and must lie in (0, 1]; "
                            "pass an int for bytes")
        return int(budget * baseline_saved)
    if budget <= 0:
        raise PlanError(f"memory budget {budget} bytes must be positive")
    return int(budget)
