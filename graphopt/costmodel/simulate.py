"""Step time of a training configuration (pipeline × data parallel), simulated rather than guessed.

Needs: per-stage forward and backward seconds (:func:`graphopt.costmodel.stage_profile.stage_profile`
derives them from a partitioned graph and a cost model), the bytes
crossing each stage boundary per micro-batch, a link (alpha-beta), a schedule and ``M`` micro-batches.
Guarantees: a timeline of every rank's actions that respects the dependencies and each rank's
serial execution, from which the bubble is *measured* (idle share of the ranks' time), not taken
from ``(P−1)/(M+P−1)``; with equal stages and free links the two agree exactly.

Model:

* **Action orders** are those of torch's schedules: ``gpipe`` ScheduleGPipe, ``1f1b``
  Schedule1F1B, ``interleaved`` ScheduleInterleaved1F1B (stage ``s`` on rank ``s mod P``),
  ``zero-bubble`` ScheduleZBVZeroBubble (rank ``r`` holds stages ``r`` and ``2P−1−r``, a V) and
  ``interleaved-zero-bubble`` ScheduleInterleavedZeroBubble. The zero-bubble ones split a
  backward into an input-gradient ``B`` and a weight-gradient ``W`` that fills the bubble.
* **Dependencies**: ``F(s,m)`` after ``F(s−1,m)`` plus its transfer; ``B(s,m)`` after
  ``B(s+1,m)`` plus its transfer (the last stage's after its own ``F``); ``W(s,m)`` after ``B(s,m)``.
  A transfer takes ``alpha + bytes/beta``; transfers on one directed link go one after another.
* **Transfers** move as gloo and NCCL move them: a send completes only once its receiver has
  posted the matching receive (gloo's TCP pair sends an unbound buffer when the peer has
  notified a pending receive). ``gpipe`` and ``1f1b`` post a receive right before the action
  that consumes it, so there a transfer starts when both the sender is done and the receiver
  has reached that action, and the receiver pays the whole transfer. The sender waits for its
  own sends where torch's schedule waits for them (:func:`_send_waits`): Schedule1F1B fuses a
  steady-state forward's send with the next backward's receive, so the two ranks advance in
  lock-step. The runtime schedules (``interleaved``, zero-bubble) post receives as early as
  their order allows and wait for sends at the end: their transfers start when the sender is
  done. With a free link both give the textbook timelines.
* **Data parallelism**: each stage's gradients are all-reduced over ``dp`` replicas in DDP's
  buckets (the first 1 MiB, then 25 MiB), each launched when the last micro-batch's backward has
  produced it (gradients appear evenly through that backward) and run one after another on the
  rank's communication stream, overlapping the rest of the backward as DDP does. A bucket costs
  the ring all-reduce ``2(n−1)(α + (m/n)β)`` or, for comparison, a parameter server. CPU ranks
  that share a host's cores have no core left for the reduction (``overlap_sync=False``): there
  every bucket waits for the end of the backward. ``bench/ddp_sync.py`` measures what DDP adds
  on such ranks beside both predictions.
* **Memory per rank**: parameters + gradients + optimizer state + the activations of the
  micro-batches in flight under the schedule (forward done, backward not yet).

Complexity: O(P·v·M) actions, each visited a bounded number of times.
Example:
    >>> from graphopt.costmodel import LinkSpec
    >>> est = simulate_step([1e-3] * 4, [2e-3] * 4, [1 << 20] * 3, LinkSpec("l", 1e-5, 1e9),
    ...                     "1f1b", 8, dp=2, grad_bytes_per_stage=[4 << 20] * 4)
    >>> est.step_seconds, est.bubble, est.allreduce_seconds
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from graphopt.costmodel.collectives import (
    DDP_BUCKET,
    ddp_buckets,
    parameter_server_seconds,
    ring_allreduce_seconds,
)
from graphopt.costmodel.device import LinkSpec
from graphopt.costmodel.optimizer import OPTIMIZER_STATE
from graphopt.errors import PlanError
from graphopt.schedules import ALL_SCHEDULES, Action, action_orders, placement, split_backward

__all__ = ["SCHEDULES", "Action", "Event", "StepEstimate", "schedule_actions", "placement",
           "simulate_step", "FREE_LINK"]

SCHEDULES = ALL_SCHEDULES
RENDEZVOUS = ("gpipe", "1f1b")   # receives posted right before the action that consumes them
FREE_LINK = LinkSpec("free", 0.0, float("inf"))


@dataclass(frozen=True)
class Event:
    """An action (or a gradient all-reduce bucket, kind ``AR``) placed on the timeline."""

    rank: int
    kind: str
    stage: int
    microbatch: int
    start: float
    end: float


@dataclass
class StepEstimate:
    """What :func:`simulate_step` predicts for one training step."""

    step_seconds: float                # the slowest rank, gradient sync included
    pipeline_seconds: float            # the compute timeline alone (last action's end)
    bubble: float                      # idle share of the ranks' pipeline time
    allreduce_seconds: float           # gradient sync time on the busiest rank (overlapped or not)
    exposed_sync_seconds: float        # how much the sync added past the compute timeline
    compute_seconds: list[float]       # busy time per rank
    rank_seconds: list[float]          # when each rank is done: its sends and sync included
    events: list[list[Event]]          # per rank, in time order (all-reduce buckets included)
    peak_activation_bytes: list[int]   # per rank: in-flight activations at their peak
    memory_bytes: list[int]            # per rank: params + grads + optimizer + activations
    schedule: str = "1f1b"
    microbatches: int = 1
    pp: int = 1
    dp: int = 1
    virtual_stages: int = 1

    def to_dict(self, with_events: bool = False) -> dict:
        d = asdict(self)
        if not with_events:
            del d["events"]
        return d


# -- action orders ---------------------------------------------------------------------------------
def schedule_actions(schedule: str, pp: int, microbatches: int,
                     virtual_stages: int = 1) -> list[list[Action]]:
    """Each rank's ordered actions under ``schedule``: :func:`graphopt.schedules.action_orders`,
    read from torch's schedule classes.

    Example:
        >>> [f"{a.kind}{a.microbatch}" for a in schedule_actions("1f1b", 2, 3)[0]]
        ['F0', 'F1', 'B0', 'F2', 'B1', 'B2']
    """
    if pp < 1 or microbatches < 1 or virtual_stages < 1:
        raise PlanError(f"pp, micro-batches and stages per rank must be >= 1, got {pp}, "
                        f"{microbatches}, {virtual_stages}")
    return action_orders(schedule, pp, virtual_stages, microbatches)


# -- the timeline ----------------------------------------------------------------------------------
def _per_stage(values, n: int, what: str) -> list[float]:
    vals = [values] * n if isinstance(values, (int, float)) else list(values)
    if len(vals) != n:
        raise PlanError(f"{what} has {len(vals)} entries for {n} stages")
    if any(v < 0 for v in vals):
        raise PlanError(f"{what} must not be negative")
    return [float(v) for v in vals]


def _send_waits(schedule: str, orders, place, nstages: int
                ) -> dict[tuple[int, int], list[tuple]]:
    """Where each rank waits for its own sends to finish, as torch's schedules wait: ``(rank,
    index) -> message keys`` that must have reached their receiver before the rank's action at
    ``index`` starts (``index == len(order)``: at the end of the step).

    * ``1f1b`` (Schedule1F1B): a steady-state forward's send is fused with the next backward's
      receive and waited together, and a backward's send with the next forward's receive; a
      warm-up forward's or cool-down backward's send is waited after the next action.
    * ``gpipe`` (ScheduleGPipe): every forward send is waited before the first backward, every
      backward send at the end.
    * The runtime schedules (``interleaved``, zero-bubble): at the end of the step.
    """
    out: dict[tuple[int, int], list[tuple]] = {}
    for r, order in enumerate(orders):
        n = len(order)
        warm = next((i for i, a in enumerate(order) if a.kind != "F"), n)    # leading forwards
        for i, a in enumerate(order):
            key = (a.kind, a.stage, a.microbatch)
            if _receiver(a, place, nstages) is None:
                continue
            if schedule == "1f1b":
                if a.kind == "F":
                    at = i + 2 if i < warm - 1 else i + 1
                else:
                    at = i + 1 if i + 1 < n and order[i + 1].kind == "F" else i + 2
            elif schedule == "gpipe":
                at = warm if a.kind == "F" else n
            else:
                at = n
            out.setdefault((r, min(at, n)), []).append(key)
    return out


def _receiver(a: Action, place, nstages: int) -> int | None:
    """The rank ``a``'s output goes to, or None where it stays on its own rank (or nowhere)."""
    if a.kind == "W" or (a.kind == "F" and a.stage == nstages - 1) or \
            (a.kind == "B" and a.stage == 0):
        return None
    to = a.stage + 1 if a.kind == "F" else a.stage - 1
    return None if place[to] == place[a.stage] else place[to]


def _input_of(a: Action, nstages: int) -> tuple | None:
    """The key ``(kind, stage, microbatch)`` of the action whose output ``a`` consumes."""
    if a.kind == "F":
        return None if a.stage == 0 else ("F", a.stage - 1, a.microbatch)
    if a.kind == "W":
        return ("B", a.stage, a.microbatch)
    if a.stage == nstages - 1:
        return ("F", a.stage, a.microbatch)
    return ("B", a.stage + 1, a.microbatch)


def _timeline(orders, place, fwd, bwd, wfrac, boundary, link, zero_bubble, schedule):
    """Place every action: returns per-rank event lists (in execution order) and the time each
    rank is done, its own sends' waits included (module docstring: transfers)."""
    def dur(a: Action) -> float:
        if a.kind == "F" or not zero_bubble:
            return fwd[a.stage] if a.kind == "F" else bwd[a.stage]
        return bwd[a.stage] * (wfrac if a.kind == "W" else 1.0 - wfrac)

    pp, nstages = len(orders), len(place)
    rendezvous = schedule in RENDEZVOUS
    waits = _send_waits(schedule, orders, place, nstages)
    consumer = {_input_of(a, nstages): (r, i) for r, order in enumerate(orders)
                for i, a in enumerate(order) if a.kind != "W"}
    done: dict[tuple, float] = {}        # (kind, stage, mb) -> end time on its own rank
    sent: dict[tuple, tuple] = {}        # key -> (end, src, dst, bytes) of a cross-rank message
    arrive: dict[tuple, float] = {}      # key -> when it reached its receiver
    post = {(r, 0): 0.0 for r in range(pp)}     # (rank, index) -> when the rank got there
    link_free: dict[tuple[int, int], float] = {}
    free = [0.0] * pp
    ptr = [0] * pp
    events: list[list[Event]] = [[] for _ in range(pp)]

    def arrival(key) -> float | None:
        if key in arrive:
            return arrive[key]
        if key not in sent:
            return None
        end, src, dst, nbytes = sent[key]
        start = max(end, link_free.get((src, dst), 0.0))
        if rendezvous:               # the data moves once the receiver has posted its receive
            at = post.get(consumer[key]) if key in consumer else end
            if at is None:
                return None
            start = max(start, at)
        arrive[key] = link_free[(src, dst)] = start + link.seconds(nbytes)
        return arrive[key]

    def ready(r: int, i: int, a: Action) -> float | None:
        t = 0.0
        dep = _input_of(a, nstages)
        if dep is not None:
            t = done.get(dep) if place[dep[1]] == r else arrival(dep)
            if t is None:
                return None
        for key in waits.get((r, i), ()):
            w = arrival(key)
            if w is None:
                return None
            t = max(t, w)
        return t

    def send(a: Action, end: float, src: int):
        dst = _receiver(a, place, nstages)
        if dst is None:
            return
        to = a.stage + 1 if a.kind == "F" else a.stage - 1
        sent[(a.kind, a.stage, a.microbatch)] = (end, src, dst, boundary[min(a.stage, to)])
        if not rendezvous:
            arrival((a.kind, a.stage, a.microbatch))

    remaining = sum(len(o) for o in orders)
    while remaining:
        moved = False
        for r in range(pp):
            while ptr[r] < len(orders[r]):
                a = orders[r][ptr[r]]
                t = ready(r, ptr[r], a)
                if t is None:
                    break
                start = max(free[r], t)
                end = start + dur(a)
                free[r] = end
                done[(a.kind, a.stage, a.microbatch)] = end
                events[r].append(Event(r, a.kind, a.stage, a.microbatch, start, end))
                send(a, end, r)
                ptr[r] += 1
                post[(r, ptr[r])] = end
                remaining -= 1
                moved = True
        if not moved:
            stuck = {r: orders[r][ptr[r]] for r in range(pp) if ptr[r] < len(orders[r])}
            raise PlanError(f"the schedule deadlocks: ranks wait on each other at {stuck}")
    tails = []
    for r in range(pp):
        keys = waits.get((r, len(orders[r])), ())
        tails.append(max([free[r]] + [arrival(k) for k in keys]))
    return events, tails


def _grad_sync(events_r, rank, stages, grad_bytes, dp, sync, zero_bubble, bucket_cap,
               overlap=True):
    """DDP-style bucketed sync for the stages on one rank; returns (AR events, busy seconds).
    Without ``overlap`` every bucket waits for the end of the backward that fills it."""
    grad_kind = "W" if zero_bubble else "B"
    last = {}
    for e in events_r:
        if e.kind == grad_kind and (e.stage not in last or e.end >= last[e.stage].end):
            last[e.stage] = e
    out, comm_free, busy = [], 0.0, 0.0
    for s in sorted(stages, key=lambda s: last[s].end if s in last else 0.0):
        total = grad_bytes[s]
        if total <= 0 or s not in last:
            continue
        e, done_bytes = last[s], 0
        for size in ddp_buckets(int(total), cap=bucket_cap):
            done_bytes += size
            ready = e.start + (e.end - e.start) * done_bytes / total if overlap else e.end
            start = max(ready, comm_free)
            seconds = sync(size, dp)
            comm_free = start + seconds
            busy += seconds
            out.append(Event(rank, "AR", s, -1, start, comm_free))
    return out, busy


def _peak_activations(orders_r, act_bytes, zero_bubble) -> int:
    live = peak = 0
    release = "W" if zero_bubble else "B"
    for a in orders_r:
        if a.kind == "F":
            live += act_bytes[a.stage]
            peak = max(peak, live)
        elif a.kind == release:
            live -= act_bytes[a.stage]
    return int(peak)


def simulate_step(stage_fwd_s, stage_bwd_s, boundary_bytes, link: LinkSpec | None = None,
                  schedule: str = "1f1b", microbatches: int = 1, *, dp: int = 1,
                  virtual_stages: int = 1, grad_bytes_per_stage=None,
                  allreduce_link: LinkSpec | None = None, grad_sync: str = "ring",
                  servers: int = 1, bucket_bytes: int = DDP_BUCKET, weight_fraction: float = 0.5,
                  param_bytes_per_stage=None, act_bytes_per_stage=None, optimizer: str = "adamw",
                  forward_only: bool = False, overlap_sync: bool = True) -> StepEstimate:
    """Simulate one training step of a ``pp × dp`` configuration.

    Args:
        stage_fwd_s, stage_bwd_s: seconds per micro-batch of each of the ``pp·virtual_stages``
            stages, in pipeline order (placed on ranks by :func:`placement`).
        boundary_bytes: bytes between stage ``s`` and ``s+1`` per micro-batch (activations
            forward, their gradients backward); one entry per boundary, or one number for all.
        link: the p2p link between neighbouring ranks (default: free).
        schedule: one of :data:`SCHEDULES` (``zero-bubble`` is ZBV: ``virtual_stages=2``).
        microbatches: ``M`` per step (per data-parallel replica).
        dp: data-parallel replicas; each stage's gradients are synchronised over them.
        grad_bytes_per_stage: gradient bytes of each stage (default: no sync).
        allreduce_link: the ring's per-hop link (default ``link``); ``grad_sync`` ``ring`` or
            ``ps`` (parameter server with ``servers`` shards, for comparison).
        weight_fraction: share of a backward that is weight gradient (zero-bubble's ``W``).
        param_bytes_per_stage, act_bytes_per_stage: for memory per rank (activations saved per
            micro-batch); ``optimizer`` picks the state kept per parameter byte.
        forward_only: forwards alone (inference, or ``graphopt pipeline``).
        overlap_sync: whether gradient buckets are all-reduced while the backward goes on (a
            GPU's communication kernels run beside its compute); ``False`` where the ranks'
            processes have no spare core for it (CPU ranks sharing a host's cores, each running
            its compute thread), so each bucket is reduced after the backward.
    """
    pp = len(list(stage_fwd_s)) // max(virtual_stages, 1)
    nstages = pp * virtual_stages
    if pp < 1 or nstages != len(list(stage_fwd_s)):
        raise PlanError(f"{len(list(stage_fwd_s))} stages do not split into {virtual_stages} per rank")
    fwd = _per_stage(stage_fwd_s, nstages, "stage_fwd_s")
    bwd = _per_stage(stage_bwd_s, nstages, "stage_bwd_s")
    boundary = _per_stage(boundary_bytes, nstages - 1, "boundary_bytes") if nstages > 1 else []
    grads = _per_stage(grad_bytes_per_stage or 0, nstages, "grad_bytes_per_stage")
    if dp < 1:
        raise PlanError(f"dp must be at least 1, got {dp}")
    if not 0.0 <= weight_fraction <= 1.0:
        raise PlanError(f"weight_fraction must lie in [0, 1], got {weight_fraction}")
    if optimizer not in OPTIMIZER_STATE:
        raise PlanError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZER_STATE)}")
    link = link or FREE_LINK
    zb = split_backward(schedule) and not forward_only
    orders = schedule_actions(schedule, pp, microbatches, virtual_stages)
    place = placement(schedule, pp, virtual_stages)
    on_rank = [[s for s in range(nstages) if place[s] == r] for r in range(pp)]
    if forward_only:
        orders = [[a for a in o if a.kind == "F"] for o in orders]
    events, tails = _timeline(orders, place, fwd, bwd, weight_fraction, boundary, link, zb,
                              schedule)
    pipeline = max(tails, default=0.0)
    busy = [sum(e.end - e.start for e in evs) for evs in events]
    bubble = 1.0 - sum(busy) / (pp * pipeline) if pipeline > 0 else 0.0
    if grad_sync not in ("ring", "ps"):
        raise PlanError(f"grad_sync must be ring or ps, got {grad_sync!r}")
    ar_link = allreduce_link or link

    def sync(nbytes, n):
        if grad_sync == "ring":
            return ring_allreduce_seconds(nbytes, n, ar_link)
        return parameter_server_seconds(nbytes, n, ar_link, servers)
    ends, ar_busy = [], []
    for r in range(pp):
        ar, secs = ([], 0.0) if dp == 1 or forward_only else _grad_sync(
            events[r], r, on_rank[r], grads, dp, sync, zb, bucket_bytes, overlap_sync)
        events[r] = sorted(events[r] + ar, key=lambda e: (e.start, e.end))
        ends.append(max([tails[r]] + [e.end for e in events[r]]))
        ar_busy.append(secs)
    step = max(ends, default=0.0)
    params = _per_stage(param_bytes_per_stage or 0, nstages, "param_bytes_per_stage")
    acts = _per_stage(act_bytes_per_stage or 0, nstages, "act_bytes_per_stage")
    peak_act = [_peak_activations(o, acts, zb) for o in orders]
    # Parameters, then (training) their gradients and the optimizer's state per parameter byte.
    per_param = 1 if forward_only else 2 + OPTIMIZER_STATE[optimizer]
    memory = [int(sum(params[s] for s in on_rank[r]) * per_param) + peak_act[r] for r in range(pp)]
    return StepEstimate(step_seconds=step, pipeline_seconds=pipeline, bubble=bubble,
                        allreduce_seconds=max(ar_busy, default=0.0),
                        exposed_sync_seconds=max(0.0, step - pipeline), compute_seconds=busy,
                        rank_seconds=ends,
                        events=events, peak_activation_bytes=peak_act, memory_bytes=memory,
                        schedule=schedule, microbatches=microbatches, pp=pp, dp=dp,
                        virtual_stages=virtual_stages)
