"""Step time of a training configuration (pipeline × data parallel), simulated rather than guessed.

Needs: per-stage forward and backward seconds (:func:`stage_costs` derives them from a partitioned
graph and a :class:`~graphopt.cost.DeviceSpec`: roofline per op plus per-op overhead), the bytes
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
    >>> from graphopt.cost import LinkSpec
    >>> est = simulate_step([1e-3] * 4, [2e-3] * 4, [1 << 20] * 3, LinkSpec("l", 1e-5, 1e9),
    ...                     "1f1b", 8, dp=2, grad_bytes_per_stage=[4 << 20] * 4)
    >>> est.step_seconds, est.bubble, est.allreduce_seconds
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from graphopt.cost import DeviceSpec, LinkSpec, OpClass
from graphopt.device_spec import node_seconds
from graphopt.errors import PlanError

__all__ = ["SCHEDULES", "Action", "Event", "StepEstimate", "StageCosts", "schedule_actions", "placement",
           "simulate_step", "ring_allreduce_seconds", "parameter_server_seconds", "ddp_buckets",
           "stage_costs", "OPTIMIZER_STATE"]

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble", "interleaved-zero-bubble")
SPLIT_BACKWARD = ("zero-bubble", "interleaved-zero-bubble")   # backward split into B and W
RENDEZVOUS = ("gpipe", "1f1b")   # receives posted right before the action that consumes them
DDP_FIRST_BUCKET, DDP_BUCKET = 1 << 20, 25 << 20   # torch DDP's defaults: 1 MiB, then 25 MiB
OPTIMIZER_STATE = {"sgd": 0, "sgd-momentum": 1, "adamw": 2, "adam": 2}   # × parameter bytes
FREE_LINK = LinkSpec("free", 0.0, float("inf"))


@dataclass(frozen=True)
class Action:
    """One unit of a rank's schedule: ``F`` forward, ``B`` backward (input gradient in
    zero-bubble), ``W`` weight gradient (zero-bubble only), of ``stage`` on ``microbatch``."""

    kind: str
    stage: int
    microbatch: int


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
        d = dataclasses.asdict(self)
        if not with_events:
            del d["events"]
        return d


# -- closed forms ----------------------------------------------------------------------------------
def ring_allreduce_seconds(nbytes: float, n: int, link: LinkSpec) -> float:
    """Ring all-reduce of ``nbytes`` over ``n`` ranks: ``2(n−1)(α + (m/n)β)`` (β = 1/bandwidth).

    Reduce-scatter then all-gather, each ``n−1`` steps of one ``m/n`` chunk per rank.
    """
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2 * (n - 1) * (link.alpha + (nbytes / n) / link.beta)


def parameter_server_seconds(nbytes: float, workers: int, link: LinkSpec, servers: int = 1) -> float:
    """Push gradients to ``servers`` parameter servers and pull the parameters back.

    Parameters are sharded evenly over the servers; every worker pushes ``m/S`` bytes to each of
    the ``S`` servers, which then send the updated shards back. An endpoint handles its messages
    one after another, so a phase lasts as long as its busiest endpoint: a worker (``S`` messages,
    ``m`` bytes) or a server (``n`` messages, ``n·m/S`` bytes). Two phases::

        T = 2 · max(S·α + m·β, n·α + (n·m/S)·β)

    One server (``S = 1``) is ``2(nα + n·m·β)``: its link carries every worker's gradients, which
    is why the ring (each rank sends ``2(n−1)m/n`` whatever ``n``) wins as ``n`` grows.
    """
    if workers <= 1 or nbytes <= 0:
        return 0.0
    if servers < 1:
        raise PlanError(f"a parameter server needs at least 1 server, got {servers}")
    inv = 1.0 / link.beta
    worker = servers * link.alpha + nbytes * inv
    server = workers * link.alpha + workers * nbytes / servers * inv
    return 2 * max(worker, server)


def ddp_buckets(nbytes: int, first: int = DDP_FIRST_BUCKET, cap: int = DDP_BUCKET) -> list[int]:
    """Bucket sizes DDP all-reduces for ``nbytes`` of gradients (in the order they fire)."""
    out, left = [], int(nbytes)
    while left > 0:
        size = min(left, first if not out else cap)
        out.append(size)
        left -= size
    return out


# -- action orders ---------------------------------------------------------------------------------
def _interleaved(pp: int, m: int, v: int, rank: int, zero_bubble: bool) -> list[Action]:
    """torch's ``_get_1f1b_rank_ops`` for ScheduleInterleaved1F1B / ScheduleInterleavedZeroBubble."""
    rounds = max(1, m // pp)
    if m % rounds:
        raise PlanError(f"{'zero-bubble' if zero_bubble else 'interleaved'} needs micro-batches a "
                        f"multiple of {rounds} (max(1, M // P)), got {m}")
    per_round = m // rounds
    factor = 1 if zero_bubble else 2
    warmup = min((v - 1) * per_round + factor * (pp - 1 - rank), m * v)
    total_mb_ops = v * m
    fwd_bwd = total_mb_ops - warmup

    def fwd_stage(step):
        return ((step // per_round) % v) * pp + rank

    def bwd_stage(step):
        return (v - 1 - ((step - warmup) // per_round) % v) * pp + rank

    next_mb = {"F": {}, "B": {}, "W": {}}

    def take(kind, stage):
        mb = next_mb[kind].get(stage, 0)
        next_mb[kind][stage] = mb + 1
        return Action(kind, stage, mb)

    ops: list[Action] = []
    backward_steps: list[int] = []
    weights_done = 0
    for step in range(warmup + fwd_bwd + warmup):
        if step < warmup:
            ops.append(take("F", fwd_stage(step)))
            continue
        if step < warmup + fwd_bwd:
            ops.append(take("F", fwd_stage(step)))
        ops.append(take("B", bwd_stage(step)))
        backward_steps.append(step)
        if zero_bubble and step - warmup >= rank:
            ops.append(take("W", bwd_stage(backward_steps[weights_done])))
            weights_done += 1
    while zero_bubble and weights_done < len(backward_steps):
        ops.append(take("W", bwd_stage(backward_steps[weights_done])))
        weights_done += 1
    return ops


def _zbv(pp: int, m: int, rank: int) -> list[Action]:
    """torch's ``ScheduleZBVZeroBubble._calculate_single_rank_operations`` (V placement)."""
    n = max(2 * pp - 1, m)          # torch plans for at least 2P-1, then drops the extra ones
    c0, c1 = rank, 2 * pp - 1 - rank
    count: dict[tuple[str, int], int] = {}
    ops: list[Action] = []

    def put(*acts):
        for kind, stage in acts:
            ops.append(Action(kind, stage, count.get((kind, stage), 0)))
            count[(kind, stage)] = count.get((kind, stage), 0) + 1
    for _ in range(2 * (pp - rank) - 1):
        put(("F", c0))
    for _ in range(rank):
        put(("F", c1), ("F", c0))
    for _ in range(pp - rank):
        put(("F", c1), ("B", c1), ("W", c1))
    while count[("F", c1)] < count[("F", c0)] or count[("F", c0)] < n:
        if count[("F", c0)] < n:
            put(("F", c0))
        put(("B", c0), ("W", c0), ("F", c1), ("B", c1), ("W", c1))
    for _ in range(rank):
        put(("B", c0), ("B", c1))
    for _ in range(pp - rank):
        put(("B", c0), ("W", c0))
    for stage in (c1, c0):
        while count[("W", stage)] < count[("B", stage)]:
            put(("W", stage))
    return [a for a in ops if a.microbatch < m]


def placement(schedule: str, pp: int, virtual_stages: int = 1) -> list[int]:
    """The rank of each of the ``pp·virtual_stages`` stages (a V for ``zero-bubble``)."""
    if schedule == "zero-bubble":
        return [s if s < pp else 2 * pp - 1 - s for s in range(2 * pp)]
    return [s % pp for s in range(pp * virtual_stages)]


def schedule_actions(schedule: str, pp: int, microbatches: int,
                     virtual_stages: int = 1) -> list[list[Action]]:
    """Each rank's ordered actions under ``schedule``, as torch's schedule classes order them.

    Example:
        >>> [f"{a.kind}{a.microbatch}" for a in schedule_actions("1f1b", 2, 3)[0]]
        ['F0', 'F1', 'B0', 'F2', 'B1', 'B2']
    """
    if schedule not in SCHEDULES:
        raise PlanError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    if pp < 1 or microbatches < 1 or virtual_stages < 1:
        raise PlanError(f"pp, micro-batches and stages per rank must be >= 1, got {pp}, "
                        f"{microbatches}, {virtual_stages}")
    m = microbatches
    if schedule in ("gpipe", "1f1b") and virtual_stages != 1:
        raise PlanError(f"{schedule} runs one stage per rank; use interleaved for {virtual_stages}")
    if schedule == "zero-bubble" and virtual_stages != 2:
        raise PlanError(f"zero-bubble (ZBV) runs exactly 2 stages per rank, got {virtual_stages}")
    orders = []
    for r in range(pp):
        if schedule == "gpipe":
            orders.append([Action("F", r, i) for i in range(m)] + [Action("B", r, i) for i in range(m)])
        elif schedule == "1f1b":
            warm = min(m, pp - r)
            ops = [Action("F", r, i) for i in range(warm)]
            for b in range(m):     # one backward, then the next forward while any is left
                ops += [Action("B", r, b)] + ([Action("F", r, warm + b)] if warm + b < m else [])
            orders.append(ops)
        elif schedule == "zero-bubble":
            orders.append(_zbv(pp, m, r))
        else:
            orders.append(_interleaved(pp, m, virtual_stages, r, schedule in SPLIT_BACKWARD))
    return orders


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
    zb = schedule in SPLIT_BACKWARD and not forward_only
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


# -- stage costs from a partitioned graph ---------------------------------------------------------
@dataclass
class StageCosts:
    """Per-stage inputs of :func:`simulate_step`, derived from a partitioned graph."""

    fwd_s: list[float]
    bwd_s: list[float]
    boundary_bytes: list[int]      # bytes stage s+1 receives from earlier stages, per micro-batch
    param_bytes: list[int]         # parameters (and buffers) each stage holds
    act_bytes: list[int]           # activations a stage keeps from forward for backward


def stage_costs(graph, spec: DeviceSpec, k: int, backward_factor: float = 2.0) -> StageCosts:
    """Stage times and bytes of a graph whose nodes carry ``part`` (a pipeline plan applied).

    A backward costs ``backward_factor`` times its forward (two matmuls per forward matmul: the
    input and the weight gradient); pass measured backward times to :func:`simulate_step`
    instead when you have them.
    """
    fwd, act = [0.0] * k, [0] * k
    for info in graph.nodes():
        if info.is_param:
            continue
        if info.part is None or not 0 <= info.part < k:
            raise PlanError(f"node {info.name} has stage {info.part}, not one of 0..{k - 1}: apply "
                            "a pipeline plan first")
        fwd[info.part] += node_seconds(info, spec)
        if info.op == "call_function" and info.op_class != OpClass.VIEW:
            act[info.part] += info.out_bytes
    held: list[set[str]] = [set() for _ in range(k)]        # parameters each stage uses
    received: list[set[str]] = [set() for _ in range(k)]    # values it gets from earlier stages
    for src, dst, _ in graph.edges():
        s, d = graph[src], graph[dst]
        if d.is_param:
            continue
        if s.is_param:
            held[d.part].add(src)
        elif s.part < d.part:
            received[d.part].add(src)
    params = [sum(graph[n].out_bytes for n in h) for h in held]
    boundary = [sum(graph[n].out_bytes for n in received[s + 1]) for s in range(k - 1)]
    return StageCosts(fwd_s=fwd, bwd_s=[backward_factor * f for f in fwd], boundary_bytes=boundary,
                      param_bytes=params, act_bytes=act)
