"""Boundary refinement toward the true communication volume, keeping balance, memory and order.

Needs: a partition of a :class:`~graphopt.partition.costgraph.CostGraph` that meets its budget
(:func:`rebalance` first when it does not). Guarantees: the communication volume never rises; no
part exceeds its FLOPs cap or the memory cap; the slowest stage (compute + receives) stays at
or under ``time_limit``; in ``ordered`` mode every edge still goes to an equal or higher part.

The objective is the hypergraph connectivity-minus-one volume (a tensor sent to a part counts
once, parameters never), which METIS' edge cut over-counts when a tensor has several consumers.
Each pass is Fiduccia-Mattheyses: moves are taken best gain first from a lazily re-evaluated heap,
each node moves at most once, negative-gain moves are allowed for a while to climb out of local
minima, and the pass is rolled back to its best prefix. A node may move to part ``q`` only within
``[max part of its producers, min part of its consumers]`` in ordered mode (the acyclic-
refinement rule of dagP and KaHyPar), and to any part holding a neighbour otherwise.

Per-net consumer counts per part make a move's effect local: only the source and target parts'
receive volumes, FLOPs, parameter bytes and activation bytes change. A move costs O(degree + k).
"""
from __future__ import annotations

import heapq
import time

import numpy as np

from graphopt.partition.costgraph import CostGraph, segment_reduce
from graphopt.partition.dp import Budget

__all__ = ["Refiner", "refine", "rebalance"]


class Refiner:
    """Incremental partition state: counts per (net, part) and per-part totals.

    Args:
        cg: the cost graph.
        part: a part for every node (parameters' entries are ignored).
        k: parts.
        budget: FLOPs caps, memory cap, in-flight micro-batches, speeds.
        alpha, beta: alpha-beta link model for the stage times.
        ordered: keep the partition stage-ordered (pipeline mode).
    """

    def __init__(self, cg: CostGraph, part: np.ndarray, k: int, budget: Budget, *,
                 alpha: float, beta: float, ordered: bool) -> None:
        self.cg, self.k, self.budget, self.ordered = cg, k, budget, ordered
        self.alpha, self.beta = alpha, beta
        self.part = [int(p) for p in part]
        self.is_param = cg.is_param.tolist()
        self.flops = budget.weight.tolist()       # the balance weight (time or FLOPs)
        self.secs = cg.seconds.tolist()
        self.acts = cg.act_bytes.tolist()
        self.bytes = cg.out_bytes.tolist()
        self.giant = budget.giant.tolist()
        self.sptr, self.succ = cg.succ_ptr.tolist(), cg.succ_idx.tolist()
        self.pptr, self.pred = cg.pred_ptr.tolist(), cg.pred_idx.tolist()
        self.speed = [float(s) for s in budget.speeds]
        parr = np.asarray(self.part, dtype=np.int64)
        cnt = np.bincount(cg.src * k + parr[cg.dst], minlength=cg.n * k).reshape(cg.n, k)
        self.cnt = cnt
        mv = ~cg.is_param
        self.F = np.bincount(parr[mv], weights=budget.weight[mv], minlength=k).tolist()
        self.G = np.bincount(parr[mv], weights=np.where(budget.giant, budget.weight, 0)[mv],
                             minlength=k).tolist()
        self.C = np.bincount(parr[mv], weights=cg.seconds[mv], minlength=k).tolist()
        self.A = np.bincount(parr[mv], weights=cg.act_bytes[mv], minlength=k).tolist()
        # non-parameter nodes per part: no move empties a part (the contract's)
        self.N = np.bincount(parr[mv], minlength=k).tolist()
        self.P = [0.0] * k
        self.R = [0.0] * k
        self.M = [0] * k
        self.comm = 0
        rows, cols = np.nonzero(cnt)
        for u, r in zip(rows.tolist(), cols.tolist()):
            if self.is_param[u]:
                self.P[r] += self.bytes[u]
            elif r != self.part[u]:
                self.R[r] += self.bytes[u]
                self.M[r] += 1
                self.comm += self.bytes[u]
        self.tol = budget.tol

    # -- internals -------------------------------------------------------------------------------
    def stage_time(self, r: int, C=None, R=None, M=None) -> float:
        C = self.C[r] if C is None else C
        R = self.R[r] if R is None else R
        M = self.M[r] if M is None else M
        return C / self.speed[r] + R / self.beta + self.alpha * M

    def times(self) -> list[float]:
        return [self.stage_time(r) for r in range(self.k)]

    def cap(self, r: int, g: float) -> float:
        return float(self.budget.cap(r, g))

    def mem(self, r: int, P=None, A=None) -> float:
        P = self.P[r] if P is None else P
        A = self.A[r] if A is None else A
        return P + float(self.budget.inflight[min(r, len(self.budget.inflight) - 1)]) * A

    def overload(self, r: int) -> float:
        return max(0.0, self.F[r] - self.cap(r, self.G[r]) - self.tol)

    def targets(self, v: int) -> list[int]:
        """Parts ``v`` may move to."""
        p = self.part[v]
        preds = [u for u in self.pred[self.pptr[v]:self.pptr[v + 1]] if not self.is_param[u]]
        succs = self.succ[self.sptr[v]:self.sptr[v + 1]]
        if self.ordered:
            lo = max((self.part[u] for u in preds), default=0)
            hi = min((self.part[w] for w in succs), default=self.k - 1)
            cand = {lo, hi, p - 1, p + 1}
            return sorted(q for q in cand if lo <= q <= hi and q != p)
        return sorted(({self.part[u] for u in preds} | {self.part[w] for w in succs}) - {p})

    def delta(self, v: int, q: int):
        """Effect of moving ``v`` to ``q``: (comm delta, new (R, M, P) of source and target)."""
        p, b = self.part[v], self.bytes[v]
        Rp, Rq, Mp, Mq, Pp, Pq = self.R[p], self.R[q], self.M[p], self.M[q], self.P[p], self.P[q]
        d = 0
        cnt = self.cnt
        if cnt[v, q] > 0:
            Rq -= b
            Mq -= 1
            d -= b
        if cnt[v, p] > 0:
            Rp += b
            Mp += 1
            d += b
        for u in self.pred[self.pptr[v]:self.pptr[v + 1]]:
            bu = self.bytes[u]
            if self.is_param[u]:
                if cnt[u, p] == 1:
                    Pp -= bu
                if cnt[u, q] == 0:
                    Pq += bu
                continue
            pu = self.part[u]
            if cnt[u, p] == 1 and p != pu:
                Rp -= bu
                Mp -= 1
                d -= bu
            if cnt[u, q] == 0 and q != pu:
                Rq += bu
                Mq += 1
                d += bu
        return d, (Rp, Mp, Pp), (Rq, Mq, Pq)

    def feasible(self, v: int, q: int, src, dst, time_limit: float | None,
                 balance_only: bool = False) -> bool:
        p = self.part[v]
        if self.N[p] <= 1:
            return False
        f, g = self.flops[v], (self.flops[v] if self.giant[v] else 0)
        Fq, Gq = self.F[q] + f, self.G[q] + g
        if f > 0 and Fq > self.cap(q, Gq) + self.tol:
            return False
        grows = dst[2] > self.P[q] or self.acts[v] > 0
        if grows and self.mem(q, dst[2], self.A[q] + self.acts[v]) > self.budget.mem_cap:
            return False
        if balance_only or time_limit is None:
            return True
        tp = self.stage_time(p, self.C[p] - self.secs[v], src[0], src[1])
        tq = self.stage_time(q, self.C[q] + self.secs[v], dst[0], dst[1])
        return max(tp, tq) <= time_limit

    def best_move(self, v: int, time_limit: float | None):
        """(gain, target) of the best feasible move of ``v``, or None."""
        best = None
        for q in self.targets(v):
            d, src, dst = self.delta(v, q)
            if not self.feasible(v, q, src, dst, time_limit):
                continue
            if best is None or -d > best[0]:
                best = (-d, q)
        return best

    def apply(self, v: int, q: int) -> None:
        p = self.part[v]
        d, (Rp, Mp, Pp), (Rq, Mq, Pq) = self.delta(v, q)
        self.R[p], self.M[p], self.P[p] = Rp, Mp, Pp
        self.R[q], self.M[q], self.P[q] = Rq, Mq, Pq
        self.comm += d
        f = self.flops[v]
        self.F[p] -= f
        self.F[q] += f
        if self.giant[v]:
            self.G[p] -= f
            self.G[q] += f
        self.C[p] -= self.secs[v]
        self.C[q] += self.secs[v]
        self.A[p] -= self.acts[v]
        self.A[q] += self.acts[v]
        self.N[p] -= 1
        self.N[q] += 1
        for u in self.pred[self.pptr[v]:self.pptr[v + 1]]:
            self.cnt[u, p] -= 1
            self.cnt[u, q] += 1
        self.part[v] = q

    def neighbours(self, v: int, limit: int = 64) -> list[int]:
        out = [w for w in self.succ[self.sptr[v]:self.sptr[v + 1]]]
        for u in self.pred[self.pptr[v]:self.pptr[v + 1]]:
            if self.is_param[u]:
                continue
            out.append(u)
            sib = self.succ[self.sptr[u]:self.sptr[u + 1]]
            out.extend(sib[:limit])
        return out

    def boundary(self) -> list[int]:
        """Movable nodes with at least one legal target."""
        part = np.asarray(self.part, dtype=np.int64)
        cg = self.cg
        m = ~cg.is_param[cg.src]
        s, d = cg.src[m], cg.dst[m]
        if self.ordered:
            from_data = np.where(cg.is_param[cg.pred_idx], 0, part[cg.pred_idx])
            lo = segment_reduce(np.maximum, from_data, cg.pred_ptr, 0)
            hi = segment_reduce(np.minimum, part[cg.succ_idx], cg.succ_ptr, self.k - 1)
            ok = (lo < part) | (hi > part)
        else:
            ok = np.zeros(cg.n, dtype=bool)
            cross = part[s] != part[d]
            ok[s[cross]] = True
            ok[d[cross]] = True
        ok &= ~cg.is_param
        return np.flatnonzero(ok).tolist()

    def parts(self) -> np.ndarray:
        return np.asarray(self.part, dtype=np.int64)


def refine(cg: CostGraph, part: np.ndarray, k: int, budget: Budget, *, alpha: float,
           beta: float, ordered: bool, time_limit: float | None = None, max_passes: int = 8,
           max_uphill: int = 64, deadline: float | None = None) -> np.ndarray:
    """FM passes that lower the communication volume under the budget and the time limit.

    Args:
        time_limit: the slowest stage may not exceed this (default: the starting plan's).
        max_uphill: consecutive non-improving moves a pass tries before it stops.
        deadline: ``time.perf_counter()`` value after which no new pass starts.

    Returns:
        The refined parts (parameters take the lowest part among their consumers).
    """
    st = Refiner(cg, part, k, budget, alpha=alpha, beta=beta, ordered=ordered)
    if time_limit is None:
        time_limit = max(st.times()) * (1 + 1e-12)
    for _ in range(max_passes):
        if deadline is not None and time.perf_counter() > deadline:
            break
        start_comm = st.comm
        _fm_pass(st, time_limit, max_uphill, deadline)
        if st.comm >= start_comm:
            break
    return cg.param_parts(st.parts(), k)


def _fm_pass(st: Refiner, time_limit: float, max_uphill: int, deadline: float | None) -> None:
    heap: list = []
    tick = 0
    for i, v in enumerate(st.boundary()):
        if deadline is not None and i % 256 == 0 and time.perf_counter() > deadline:
            break
        mv = st.best_move(v, time_limit)
        if mv is not None:
            heap.append((-mv[0], tick, v, mv[1]))
            tick += 1
    heapq.heapify(heap)
    locked: set[int] = set()
    applied: list[tuple[int, int]] = []
    best_comm, best_t, best_len = st.comm, max(st.times()), 0
    uphill = 0
    while heap and uphill < max_uphill:
        if deadline is not None and tick % 256 == 0 and time.perf_counter() > deadline:
            break
        neg, _, v, q = heapq.heappop(heap)
        if v in locked:
            continue
        mv = st.best_move(v, time_limit)
        if mv is None:
            continue
        if mv[0] != -neg or mv[1] != q:
            heapq.heappush(heap, (-mv[0], tick, v, mv[1]))
            tick += 1
            continue
        p = st.part[v]
        st.apply(v, q)
        locked.add(v)
        applied.append((v, p))
        t = max(st.times())
        if st.comm < best_comm or (st.comm == best_comm and t < best_t - 1e-15):
            best_comm, best_t, best_len = st.comm, t, len(applied)
            uphill = 0
        else:
            uphill += 1
        for w in st.neighbours(v):
            if w in locked or st.is_param[w]:
                continue
            nm = st.best_move(w, time_limit)
            if nm is not None:
                heapq.heappush(heap, (-nm[0], tick, w, nm[1]))
                tick += 1
    for v, p in reversed(applied[best_len:]):
        st.apply(v, p)


def rebalance(cg: CostGraph, part: np.ndarray, k: int, budget: Budget, *, alpha: float,
              beta: float, ordered: bool, max_rounds: int = 64,
              deadline: float | None = None) -> np.ndarray | None:
    """Move boundary nodes out of over-cap parts (cheapest volume first); None if it cannot.

    The balance half of dagP's balance-FM. Each round ranks the legal moves out of overloaded
    parts by volume added per FLOP moved (work-carrying nodes first: zero-FLOP ones only open
    the way to them) and applies them in that order, re-checking each against the current
    state, until no part is over its cap. O(rounds * (V + E)).
    """
    st = Refiner(cg, part, k, budget, alpha=alpha, beta=beta, ordered=ordered)
    for _ in range(max_rounds):
        if not any(st.overload(r) > 0 for r in range(k)):
            return cg.param_parts(st.parts(), k)
        if deadline is not None and time.perf_counter() > deadline:
            return None
        moves = []
        for v in st.boundary():
            if st.overload(st.part[v]) <= 0:
                continue
            for q in st.targets(v):
                d, _, _ = st.delta(v, q)
                moves.append((st.flops[v] == 0, d / max(st.flops[v], 1e-30), v, q))
        moves.sort()
        applied = 0
        for _, _, v, q in moves:
            if st.overload(st.part[v]) <= 0 or q not in st.targets(v):
                continue
            d, src, dst = st.delta(v, q)
            if st.feasible(v, q, src, dst, None, balance_only=True):
                st.apply(v, q)
                applied += 1
        if applied == 0:
            return None
    return None
