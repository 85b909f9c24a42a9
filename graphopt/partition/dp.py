"""Contiguous splits of a topological order: the exact min-max dynamic program and the baselines.

Cutting a topological order into ``k`` contiguous segments always gives an acyclic, stage-ordered
partition. :func:`split_order` finds, among the cut positions a balance budget allows, the split
whose slowest stage (compute + receiving its inputs under the alpha-beta model) is fastest, then,
among splits within ``time_slack`` of that optimum, the one that sends the fewest bytes. Both are
exact dynamic programs over the candidate positions; a stage's receive volume ``in(i, j)`` (every
tensor made before ``i`` with a consumer in ``[i, j)``, once) depends only on its own two cuts,
which is what makes the min-max decomposable.

Balance budget: stage ``s`` may hold at most ``(1 + eps) * A_s`` of the balance weight, where
``A_s`` is its share of the work; a node heavier than that (a *giant*) sets its stage's limit to
``(1 + eps)`` times its own weight, and the other stages share the rest (water-filling). The
weight is each node's predicted time (``CostGraph.seconds``, from the cost model) by default, so
``eps`` bounds the stages' predicted time; ``by="flops"`` balances FLOPs instead. The parameter
bytes a stage holds plus its activation bytes times the micro-batches in flight must fit the
memory cap.

Complexity: O(k * C^2 + E) per order, with ``C`` the candidate cut positions of one stage
boundary (all positions the budget allows, at most ``max_candidates``: the ones with the least
crossing bytes and evenly spaced ones are kept when there are more).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.partition.costgraph import CostGraph, segment_reduce

__all__ = ["Budget", "make_budget", "split_order", "equal_flops_split", "cuts_to_parts",
           "balance_weight", "BALANCE_BY"]

_INF = float("inf")
BALANCE_BY = ("time", "flops")


def balance_weight(cg: CostGraph, by: str = "time") -> tuple[np.ndarray, str]:
    """``(weight, by)``: per-node balance weight, predicted seconds (``time``) or FLOPs
    (``flops``), parameters 0. A graph whose nodes carry no predicted time (a plan read from
    JSON without ``seconds``) balances FLOPs, and says so in the ``by`` returned."""
    if by not in BALANCE_BY:
        raise ValueError(f"balance by must be one of {', '.join(BALANCE_BY)}, got {by!r}")
    moving = ~cg.is_param
    if by == "time" and float(cg.seconds[moving].sum()) > 0:
        return np.where(moving, cg.seconds, 0.0).astype(np.float64), "time"
    return np.where(moving, cg.flops, 0).astype(np.float64), "flops"


@dataclass
class Budget:
    """Per-stage limits of a plan (see the module docstring).

    Attributes:
        target: weight share ``A_s`` of each stage (water-filled around giant nodes).
        eps: allowed relative excess over the share.
        giant: per-node flag of nodes heavier than ``(1 + eps) * A``.
        speeds: relative speed of each stage's device (compute time is divided by it).
        mem_cap: bytes a stage may hold (parameters + in-flight activations).
        inflight: micro-batches whose activations each stage holds at once.
        giant_total: weight of all giant nodes together.
        best_imbalance: lower bound on the imbalance any plan can reach (the heaviest node).
        weight: per-node balance weight (:func:`balance_weight`; parameters 0).
        by: what the weight is, ``time`` or ``flops``.
    """

    k: int
    target: np.ndarray
    eps: float
    giant: np.ndarray
    speeds: np.ndarray
    mem_cap: float = _INF
    inflight: np.ndarray = field(default_factory=lambda: np.ones(1))
    giant_total: float = 0.0
    best_imbalance: float = 0.0
    notes: list[str] = field(default_factory=list)
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0))
    by: str = "time"

    def cap(self, s: int, giant_weight):
        """Most weight stage ``s`` may hold, given the giant nodes' weight it holds."""
        return (1.0 + self.eps) * np.maximum(self.target[s], giant_weight)

    @property
    def tol(self) -> float:
        """Rounding slack on a weight sum."""
        return 1e-9 * float(self.weight.sum()) if self.weight.size else 0.0

    def part_weights(self, part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each part's weight and giant weight under ``part`` (parts of every node; those of
        parameters, which weigh nothing, are ignored)."""
        w, p = self.weight, np.clip(np.asarray(part, dtype=np.int64), 0, self.k - 1)
        return (np.bincount(p, weights=w, minlength=self.k),
                np.bincount(p, weights=np.where(self.giant, w, 0.0), minlength=self.k))

    def loose_cap(self, s: int) -> float:
        return (1.0 + self.eps) * max(float(self.target[s]), self.giant_total)


def make_budget(cg: CostGraph, k: int, eps: float, *, speeds=None, mem_cap: float = _INF,
                inflight=None, by: str = "time") -> Budget:
    """Shares per stage, giant nodes, and the note a plan shows when a node outweighs 1/k.
    ``by``: what ``eps`` bounds, the stages' predicted time (default) or their FLOPs."""
    sp = np.asarray(speeds if speeds is not None else [1.0] * k, dtype=np.float64)
    frac = sp / sp.sum()
    w, by = balance_weight(cg, by)
    what = "predicted time" if by == "time" else "FLOPs"
    total = float(w.sum())
    moving = ~cg.is_param
    giant = np.zeros(cg.n, dtype=bool)
    target = total * frac
    if np.allclose(frac, frac[0]):
        # Water-filling: nodes above (1+eps)*share take a stage each; the rest share the remainder.
        for _ in range(k):
            share = (total - w[giant].sum()) / max(k - int(giant.sum()), 1)
            new = moving & (w > (1.0 + eps) * share)
            if int(new.sum()) >= k or np.array_equal(new, giant):
                giant = new if int(new.sum()) < k else giant
                break
            giant = new
        share = (total - w[giant].sum()) / max(k - int(giant.sum()), 1)
        target = np.full(k, share)
    else:
        giant = moving & (w > (1.0 + eps) * target.max())
    inflight = np.asarray(inflight if inflight is not None else np.ones(k), dtype=np.float64)
    best = max(0.0, float(w[moving].max(initial=0)) / (total / k) - 1.0) if total else 0.0
    b = Budget(k=k, target=target, eps=eps, giant=giant, speeds=sp, mem_cap=mem_cap,
               inflight=inflight, giant_total=float(w[giant].sum()), best_imbalance=best,
               weight=w, by=by)
    if giant.any():
        heavy = int(np.argmax(np.where(giant, w, -1)))
        b.notes.append(f"node {cg.names[heavy]!r} alone holds {w[heavy] / total:.1%} of "
                       f"the {what} (more than 1/{k}): the slowest part is the one holding it; "
                       f"best achievable imbalance {best:.1%}")
    return b


def cuts_to_parts(cg: CostGraph, order: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Part of every node from cut positions along ``order`` (parameters follow consumers)."""
    part = np.zeros(cg.n, dtype=np.int64)
    for s in range(len(cuts) - 1):
        part[order[cuts[s]:cuts[s + 1]]] = s
    return cg.param_parts(part, len(cuts) - 1)


def equal_flops_split(cg: CostGraph, order: np.ndarray, k: int) -> np.ndarray:
    """The hand-made baseline: walk the order and end stage ``s`` right after the node at which
    the running FLOPs sum first reaches ``s/k`` of the total (the rule of PiPPy's and
    ``torch.distributed.pipelining``'s equal-size split, with FLOPs for parameter bytes and
    cumulative targets so that rounding does not drift onto the last stage)."""
    n = len(order)
    pf = np.cumsum(cg.flops[order]).astype(np.float64)
    cuts = [0]
    for s in range(1, k):
        c = int(np.searchsorted(pf, pf[-1] * s / k, side="left")) + 1 if n else 0
        cuts.append(min(max(c, cuts[-1] + 1), n - (k - s)))
    cuts.append(n)
    return np.asarray(cuts, dtype=np.int64)


@dataclass
class _Order:
    """Prefix sums and receive events of one topological order."""

    n: int
    pf: np.ndarray      # balance weight
    pt: np.ndarray      # roofline seconds
    pa: np.ndarray      # activation bytes
    pg: np.ndarray      # giant weight
    pc: np.ndarray      # compute nodes
    cross: np.ndarray   # bytes crossing each cut position
    ev: tuple           # data receive events (pp, pv, bytes)
    pev: tuple          # parameter use events (pp, pv, bytes)


def _events(cg: CostGraph, pos: np.ndarray, param: bool):
    """One event per (producer, first consumer at or after a cut): interval (pp, pv] of cuts."""
    m = cg.is_param[cg.src] if param else ~cg.is_param[cg.src]
    u, pv = cg.src[m], pos[cg.dst[m]]
    o = np.lexsort((pv, u))
    u, pv = u[o], pv[o]
    first = np.ones(len(u), dtype=bool)
    first[1:] = u[1:] != u[:-1]
    pp = np.empty_like(pv)
    pp[1:] = pv[:-1]
    pp[first] = -1 if param else pos[u[first]]
    o = np.argsort(pv, kind="stable")
    return pp[o], pv[o], cg.out_bytes[u[o]].astype(np.float64)


def _prepare(cg: CostGraph, order: np.ndarray, budget: Budget) -> _Order:
    n = len(order)
    pos = np.full(cg.n, -1, dtype=np.int64)
    pos[order] = np.arange(n)

    def prefix(x):
        return np.concatenate([[0.0], np.cumsum(x[order], dtype=np.float64)])

    ev = _events(cg, pos, param=False)
    pev = _events(cg, pos, param=True)
    # bytes crossing cut c: producers before c with a consumer at or after c
    last = segment_reduce(np.maximum, pos[cg.succ_idx], cg.succ_ptr, -1)
    prod = np.flatnonzero((last >= 0) & ~cg.is_param)
    w = cg.out_bytes[prod].astype(np.float64)
    diff = np.bincount(pos[prod] + 1, weights=w, minlength=n + 2) - \
        np.bincount(last[prod] + 1, weights=w, minlength=n + 2)
    return _Order(n=n, pf=prefix(budget.weight), pt=prefix(cg.seconds),
                  pa=prefix(cg.act_bytes.astype(np.float64)),
                  pg=prefix(np.where(budget.giant, budget.weight, 0.0)),
                  pc=prefix(cg.is_compute.astype(np.float64)), cross=np.cumsum(diff)[:n + 1],
                  ev=ev, pev=pev)


def _event_matrix(ev, wp: np.ndarray, wc: np.ndarray, weights: list[np.ndarray]) -> list:
    """M[a, b] = sum of a weight over events with wp[a] in (pp, pv] and pv < wc[b].

    Events are sorted by ``pv``, so the ones that can matter form one slice.
    """
    pp, pv = ev[0], ev[1]
    na, nb = len(wp), len(wc)
    lo_e, hi_e = np.searchsorted(pv, wp[0], side="left"), np.searchsorted(pv, wc[-1], side="left")
    pp, pv = pp[lo_e:hi_e], pv[lo_e:hi_e]
    sel = np.flatnonzero(pp < wp[-1])
    pp, pv = pp[sel], pv[sel]
    lo = np.searchsorted(wp, pp, side="right")
    hi = np.searchsorted(wp, pv, side="right")
    cnt = hi - lo
    total = int(cnt.sum())
    if total == 0:
        return [np.zeros((na, nb)) for _ in weights]
    rows = np.repeat(np.arange(len(cnt)), cnt)
    a = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt) + lo[rows]
    flat = a * (nb + 1) + np.searchsorted(wc, pv, side="right")[rows]
    out = []
    for w in weights:
        m = np.bincount(flat, weights=w[lo_e:hi_e][sel][rows], minlength=na * (nb + 1))
        out.append(np.cumsum(m.reshape(na, nb + 1), axis=1)[:, :nb])
    return out


def _windows(o: _Order, k: int, budget: Budget | None, time_ub: float | None,
             max_candidates: int, force: list[np.ndarray]) -> list[np.ndarray]:
    n = o.n
    lo = np.zeros(n + 1, dtype=bool)
    lo[1:n] = True
    wins = [np.array([0])]
    for s in range(1, k):
        ok = lo.copy()
        ok[:s] = False
        ok[n - (k - s) + 1:] = False
        if budget is not None:
            caps = [budget.loose_cap(r) for r in range(k)]
            hi_f, lo_f = sum(caps[:s]), o.pf[-1] - sum(caps[s:])
            tol = 1e-9 * o.pf[-1]
            ok &= (o.pf <= hi_f + tol) & (o.pf >= lo_f - tol)
        if time_ub is not None:
            sp = budget.speeds if budget is not None else np.ones(k)
            hi_t, lo_t = time_ub * sp[:s].sum(), o.pt[-1] - time_ub * sp[s:].sum()
            tol = 1e-12 + 1e-9 * o.pt[-1]
            ok &= (o.pt <= hi_t + tol) & (o.pt >= lo_t - tol)
        cand = np.flatnonzero(ok)
        if len(cand) > max_candidates:
            keep = set(int(f[s]) for f in force if ok[f[s]])
            half = max_candidates // 2
            keep.update(cand[np.argsort(o.cross[cand], kind="stable")[:half]].tolist())
            keep.update(cand[np.linspace(0, len(cand) - 1, max_candidates - len(keep))
                             .astype(int)].tolist())
            cand = np.asarray(sorted(keep), dtype=np.int64)
        wins.append(cand)
    wins.append(np.array([n]))
    return wins


def split_order(cg: CostGraph, order: np.ndarray, k: int, *, budget: Budget | None,
                alpha: float, beta: float, time_ub: float | None = None,
                minimize_comm: bool = True, time_slack: float = 0.005,
                comm_time_limit: float | None = None, max_candidates: int = 512,
                force: list[np.ndarray] = ()) -> np.ndarray | None:
    """Optimal contiguous split of ``order`` into ``k`` stages; ``None`` when none fits.

    Args:
        order: movable node indices in a topological order.
        budget: balance and memory limits (``None``: unconstrained, the PipeDream baseline).
        alpha, beta: link latency (s) and bandwidth (bytes/s) of the alpha-beta model.
        time_ub: prune stages whose compute alone exceeds it (a known plan's bottleneck).
        minimize_comm: second pass: fewest bytes among splits within ``time_slack`` of optimal
            (or, when given, whose slowest stage is at most ``comm_time_limit``).
        force: cut arrays whose positions stay candidates (so a baseline is always reachable).

    Returns:
        ``k + 1`` cut positions ``0 = c_0 < ... < c_k = len(order)``.
    """
    n = len(order)
    if n < k:
        return None
    # without a budget only the prefix sums matter: a budget that flags no giant supplies them
    o = _prepare(cg, order, budget if budget is not None else make_budget(cg, k, float(k)))
    wins = _windows(o, k, budget, time_ub, max_candidates, list(force))
    speeds = budget.speeds if budget is not None else np.ones(k)
    t_ev = alpha + o.ev[2] / beta
    # the memory cap cannot bind when all parameters and activations fit on one device
    mem_binds = budget is not None and np.isfinite(budget.mem_cap) and \
        cg.out_bytes[cg.is_param].sum() + budget.inflight.max() * o.pa[-1] > budget.mem_cap
    costs, nbytes = [], []
    for s in range(k):
        wp, wc = wins[s], wins[s + 1]
        if len(wp) == 0 or len(wc) == 0:
            return None
        i, j = wp[:, None], wc[None, :]
        comp = (o.pt[j] - o.pt[i]) / speeds[s]
        recv_t, recv_b = _event_matrix(o.ev, wp, wc, [t_ev, o.ev[2]])
        bad = (j <= i) | (o.pc[j] - o.pc[i] < 1)
        if budget is not None:
            f = o.pf[j] - o.pf[i]
            g = o.pg[j] - o.pg[i]
            bad |= f > budget.cap(s, g) + 1e-9 * o.pf[-1]
            if mem_binds:
                mem = _event_matrix(o.pev, wp, wc, [o.pev[2]])[0] + \
                    budget.inflight[s] * (o.pa[j] - o.pa[i])
                bad |= mem > budget.mem_cap
        cost = comp + recv_t
        cost[bad] = _INF
        costs.append(cost)
        nbytes.append(recv_b)
    # pass 1: minimize the slowest stage
    best = np.zeros(1)
    for s in range(k):
        best = np.maximum(best[:, None], costs[s]).min(axis=0)
    t_star = float(best[0])
    if not np.isfinite(t_star):
        return None
    # pass 2: fewest bytes among splits whose every stage is within the slack of optimal
    limit = t_star * (1.0 + time_slack) + 1e-15 if minimize_comm else t_star + 1e-15
    if minimize_comm and comm_time_limit is not None:
        limit = max(t_star, comm_time_limit) + 1e-15
    acc, args = np.zeros(1), []
    for s in range(k):
        tot = acc[:, None] + (nbytes[s] if minimize_comm else 0.0) + 1e-9 * costs[s]
        tot[costs[s] > limit] = _INF
        args.append(tot.argmin(axis=0))
        acc = tot.min(axis=0)
    if not np.isfinite(acc[0]):
        return None
    cuts = np.zeros(k + 1, dtype=np.int64)
    cuts[k] = n
    idx = 0
    for s in range(k - 1, -1, -1):
        idx = int(args[s][idx])
        cuts[s] = wins[s][idx]
    return cuts
