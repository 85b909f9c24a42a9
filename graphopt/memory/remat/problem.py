"""The rematerialization problem both solvers share, and the one accounting that judges a plan.

A joint forward+backward graph runs its forward nodes, then its backward nodes. Backward nodes
that read forward values are the *stages* ``0..T-1``, in backward order. A *candidate* is a
forward value some stage needs, directly or through the recomputation of another. A plan picks
the candidates to *save* (kept from the forward pass); every other needed candidate is
*recomputed* in the backward pass:

* a tensor (or a ``getitem`` of a multi-output op) is recomputed at one or more *segment
  starts* ``at[v]`` (default: one, at its first need). Each start serves the needs from it up
  to the next start; the value is held from the start to the last need it serves and then
  freed, so a value read early and again much later can be freed in between and recomputed
  (segment checkpointing). The first start is at or before the first need; a start that
  serves no need is dropped. Every segment costs one recomputation;
* a saved tensor is held from the forward pass to its last need, or, given segment starts
  ``at[v]``, only to its last need before the first of them, and recomputed for the later
  segments as above (a saved tensor whose first start is at or before its first need keeps no
  forward copy: the plan recomputes it);
* a view or a tuple-producing op is never held (holding a view pins its base): it is recomputed
  at every stage that needs it, which for a view costs nothing.

A recomputation needs its inputs at its stage, so each segment start of a value is a need of
each of its inputs.

Accounting (what the budget bounds): at stage ``t`` the bytes *held for the backward pass* are
the saved values still needed at or after ``t``, the recomputed values held across ``t``, and
the peak of what stage ``t`` recomputes, replayed in topological order with each value freed
after its last reader there (as the rewritten graph frees it). Values held into a stage count
for the whole stage, so this is an upper bound of what the schedule holds. Gradients and
backward temporaries are the same for every plan and are left to the liveness analysis
(:mod:`graphopt.memory.liveness`), which gives the step's full peak.

*Free* candidates (``free[v]``) are pointwise ops whose recomputation costs (nearly) nothing:
:mod:`graphopt.memory.remat.build` decides which and charges them 0, and every solver starts
from the no-remat plan with them recomputed wherever that holds less
(:mod:`graphopt.memory.remat.baseline`).

:mod:`graphopt.memory.remat.build` builds the problem from a joint graph.

Complexity: :func:`evaluate` is O(C + E_c + T + S) for C candidates with E_c edges among them
and S segment starts.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from graphopt.errors import PlanError, SizeError
from graphopt.parallel import MemoryBudget

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
    FLOPs) to recompute it once, ``uses[v]`` the sorted stages that read it directly, ``free[v]``
    whether it is a pointwise op recomputed for nothing (its ``cost`` is then 0; default none),
    ``base[t]`` the bytes alive at stage ``t`` that no plan changes (gradients, backward
    temporaries; default 0): held plus base is the step's memory there, which the tightest plan
    minimises (:func:`graphopt.memory.remat.greedy.tighten`).
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
    free: np.ndarray | None = None
    base: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.users:
            self.users = [[] for _ in self.names]
            for v, ins in enumerate(self.inputs):
                for u in ins:
                    self.users[u].append(v)
        self.holdable = np.array([k in _HOLDABLE for k in self.kind], dtype=bool)
        self.recomputable = np.array(self.recomputable, dtype=bool)
        self.free = (np.zeros(len(self.names), dtype=bool) if self.free is None
                     else np.array(self.free, dtype=bool))
        self.base = (np.zeros(len(self.stage_names), dtype=np.int64) if self.base is None
                     else np.asarray(self.base, dtype=np.int64))
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
    """A plan under the shared accounting: per-stage held bytes, cost, and the schedule.

    ``first[v]``/``last[v]``: the first and last stage the value is present; ``segments[v]``:
    for a recomputed tensor, its ``(start, last need served)`` pairs; ``needs[v]``: for a saved
    or recomputed tensor, the sorted stages that need it (its reads and its consumers'
    recomputations); ``kept[v]``: the last stage a saved value's forward copy is held (its
    later segments, if any, are in ``segments``); ``nh_stages[v]``: the
    stages that rerun a view or tuple op.
    """

    mem: np.ndarray
    cost: float
    flops: int
    state: list[int]
    first: list[int]
    last: list[int]
    nh_stages: dict[int, list[int]]
    missing: list[int]
    segments: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    needs: dict[int, list[int]] = field(default_factory=dict)
    kept: dict[int, int] = field(default_factory=dict)

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

    def present(self, v: int, t: int) -> bool:
        """Whether tensor ``v`` is held (or recomputed) at stage ``t`` under this plan."""
        if self.state[v] == SAVED and self.kept.get(v, -1) >= t:
            return True
        return any(s <= t <= e for s, e in self.segments.get(v, ()))

    def spans(self, v: int) -> list[tuple[int, int]]:
        """The stretches of stages tensor ``v`` is held: the forward copy of a saved value
        from stage 0, then its segments."""
        head = [(0, self.kept[v])] if self.state[v] == SAVED and v in self.kept else []
        return head + list(self.segments.get(v, ()))

    def schedule(self) -> dict[int, tuple[int, ...]]:
        """The segment starts of every recomputed tensor (and of a saved one's later segments):
        ``evaluate(p, saved, schedule)`` replays this plan."""
        return {v: tuple(s for s, _ in segs) for v, segs in self.segments.items()}

    def recomputations(self) -> int:
        """How many times tensors are recomputed (segments), views and tuple ops aside."""
        return sum(len(segs) for segs in self.segments.values())

    def over(self, budget: int) -> float:
        """Bytes-times-stages above the budget: 0 exactly when the plan fits."""
        return float(np.clip(self.mem - budget, 0, None).sum())


@dataclass
class Solution:
    """A solver's answer: the saved set, the segment starts ``at``, and how sure the solver is.

    ``status`` is ``optimal``, ``feasible`` (time limit hit with a plan in hand; ``gap`` says how
    far from optimal it may be), ``heuristic`` (the fast solver), ``clamped`` (the tightest plan,
    for a budget below the minimum: :func:`graphopt.memory.remat.solve.solve_budget`), or
    ``infeasible``, in which case ``min_peak`` is the smallest held peak the solver reached.
    ``requested_budget`` is the budget asked for when the plan was made for a larger one.
    """

    saved: np.ndarray
    at: dict[int, tuple[int, ...]]
    evaluation: Evaluation
    solver: str
    status: str
    seconds: float
    budget: int
    gap: float | None = None
    bound: float | None = None
    min_peak: int | None = None
    requested_budget: int | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "feasible", "heuristic", "clamped")

    def stats(self) -> dict:
        ev = self.evaluation
        return {"solver": self.solver, "status": self.status, "seconds": round(self.seconds, 4),
                "budget_bytes": self.budget, "held_peak_bytes": ev.peak,
                "recompute_cost": ev.cost, "recompute_flops": ev.flops, "gap": self.gap,
                "bound": self.bound, "min_peak_bytes": self.min_peak,
                "requested_budget_bytes": self.requested_budget,
                "recomputations": ev.recomputations()}


def evaluate(p: RematProblem, saved: np.ndarray,
             at: dict[int, int | tuple[int, ...]] | None = None) -> Evaluation:
    """Judge a plan: ``saved`` (bool per candidate) and optional segment starts ``at`` (an int
    or a sequence of stages per tensor; default one segment at its first need for a recomputed
    tensor, none after the forward copy for a saved one).

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
    segments: dict[int, list[tuple[int, int]]] = {}
    needs_of: dict[int, list[int]] = {}
    kept: dict[int, int] = {}
    starts: list[int] = []
    ends: list[int] = []
    sizes: list[int] = []
    missing: list[int] = []
    at_stage: dict[int, list[int]] = defaultdict(list)  # stage -> what it recomputes
    keep: dict[int, set[int]] = defaultdict(set)  # stage -> what outlives its recomputation
    cost = 0.0
    flops = 0
    hold, costs, fl = p.hold.tolist(), p.cost.tolist(), p.flops.tolist()
    holdable, recomp, users = p.holdable.tolist(), p.recomputable.tolist(), p.users
    for v in range(n - 1, -1, -1):
        uses = p.uses[v]
        extra: list[int] = []
        for w in users[v]:
            if holdable[w]:
                segs = segments.get(w)
                if segs:
                    extra += [s for s, _ in segs]
            elif state[w] == RECOMPUTED:
                extra += nh_stages[w]
        if extra:
            stages = sorted(set(uses).union(extra))
        elif uses:
            stages = uses  # already sorted and distinct
        else:
            continue
        if holdable[v]:
            needs_of[v] = stages
            later = at.get(v) if at and recomp[v] else None
            if later is not None:
                later = _marks(later)
            # A saved value recomputed at or before its first need keeps no forward copy.
            if (saved[v] and not (later and min(later) <= stages[0])) or not recomp[v]:
                if not saved[v]:
                    missing.append(v)
                state[v], first[v], last[v] = SAVED, stages[0], stages[-1]
                if not later:
                    kept[v] = stages[-1]
                    starts.append(0), ends.append(stages[-1]), sizes.append(hold[v])
                    continue
                segs = _segments(stages, (stages[0], *(s for s in later if s > stages[0])))
                kept[v] = segs[0][1]
                starts.append(0), ends.append(segs[0][1]), sizes.append(hold[v])
                segs = segs[1:]
                if not segs:
                    continue
            else:
                segs = _segments(stages, later)
                state[v], first[v], last[v] = RECOMPUTED, segs[0][0], segs[-1][1]
            segments[v] = segs
            cost += costs[v] * len(segs)
            flops += fl[v] * len(segs)
            for s, e in segs:
                at_stage[s].append(v)
                if e > s or s in uses:
                    keep[s].add(v)
                if e > s:
                    starts.append(s + 1), ends.append(e), sizes.append(hold[v])
        else:
            if not recomp[v]:
                missing.append(v)
            state[v], first[v], last[v] = RECOMPUTED, stages[0], stages[-1]
            nh_stages[v] = stages
            cost += costs[v] * len(stages)
            flops += fl[v] * len(stages)
            for t in stages:
                at_stage[t].append(v)
            for t in p.uses[v]:
                keep[t].add(v)
    diff = np.zeros(T + 1, dtype=np.int64)
    if sizes:
        np.add.at(diff, np.asarray(starts, dtype=np.int64), np.asarray(sizes, dtype=np.int64))
        np.add.at(diff, np.asarray(ends, dtype=np.int64) + 1, -np.asarray(sizes, dtype=np.int64))
    mem = np.cumsum(diff[:-1]) if T else np.zeros(0, dtype=np.int64)
    for t, q in at_stage.items():
        mem[t] += _stage_peak(p, sorted(q), keep[t])
    return Evaluation(mem, cost, flops, state, first, last, nh_stages, missing, segments,
                      needs_of, kept)


def _segments(stages: list[int], req) -> list[tuple[int, int]]:
    """Split the sorted need stages of a recomputed tensor among its segment starts ``req``.

    Example:
        >>> _segments([2, 3, 7, 9], (2, 6))     # recomputed at 2 (for 2, 3) and at 6 (7, 9)
        [(2, 3), (6, 9)]
    """
    lo, hi = stages[0], stages[-1]
    if req is None:
        return [(lo, hi)]
    marks = sorted({s for s in _marks(req) if s <= hi})
    if not marks or marks[0] > lo:
        marks.insert(0, lo)
    segs, i = [], 0
    for k, s in enumerate(marks):
        stop = marks[k + 1] if k + 1 < len(marks) else hi + 1
        served = None
        while i < len(stages) and stages[i] < stop:
            served = stages[i]
            i += 1
        if served is not None:
            segs.append((s, served))
    return segs


def _marks(req) -> tuple[int, ...]:
    if req is None:
        return ()
    if isinstance(req, (int, np.integer)):
        return (int(req),)
    return tuple(int(s) for s in req)


def _stage_peak(p: RematProblem, q: list[int], keep: set[int]) -> int:
    """Peak bytes of the values stage ``t`` recomputes (``q``, in topological order), on top of
    what it holds. A value dies after its last reader in ``q`` unless it is in ``keep`` (stage
    ``t`` reads it, or its segment holds it past ``t``); a tuple op's buffer dies once all of
    its recomputed outputs have. The MILP's ``D`` variables (:mod:`graphopt.memory.remat.milp`)
    encode the same rule."""
    work, kind = p.work, p.kind
    inq = set(q)
    readers = {j: sum(1 for i in p.users[j] if i in inq) for j in q}
    items_left = {j: sum(1 for i in p.users[j] if i in inq and kind[i] == "item")
                  for j in q if kind[j] == "tuple"}
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


def resolve_budget(budget, baseline_saved: int) -> int:
    """The budget in bytes: a fraction in (0, 1] of ``baseline_saved``, the activation bytes the
    plan without paid recomputation holds for the backward pass (its held peak: see
    :func:`graphopt.memory.remat.baseline.baseline_held`), or bytes. ``budget`` is a
    :class:`~graphopt.parallel.MemoryBudget` or what its ``parse`` reads (a float is a fraction,
    an int bytes); a bad one raises :class:`PlanError` with ``MemoryBudget``'s one line.

    Example:
        >>> resolve_budget(0.5, 1000), resolve_budget(300, 1000)
        (500, 300)
    """
    try:
        return MemoryBudget.parse(budget, option="memory budget").bytes_of(baseline_saved)
    except SizeError as exc:
        raise PlanError(str(exc)) from None
