"""Which plan to keep: the one ranking rule every comparison of plans goes through.

Plans are compared by the bytes they send. Time overrides that only where the slowest stage's
*work* (roofline compute plus transfer bytes over bandwidth, :attr:`Metrics.bottleneck_work`)
exceeds the least by more than ``time_slack`` (10% by default) of the fastest plan's stage time.
The fixed costs, each kernel's launch and each message's latency, count in that stage time but
not in the difference: they measure how kernels are launched (fusion and CUDA graphs remove most
of them), not the plan's work, and on a small model they would decide every comparison: a plan
that sends 4.4x fewer bytes must not lose over a 4% difference made of launches, nor an FFN block
cut into token blocks over the kernels each block launches again. On a large model work is
nearly all of the time and the rule is a plain 10% threshold. Bytes are exact.

Fixed costs are left out of that difference, not ignored without bound: a plan whose full
estimate is more than ``1 + FIXED_SLACK`` (2x) another's, where the other sends at most
``BYTES_SLACK`` (10%) more bytes, gives way to it. A decoder layer cut into six token blocks
launches each of its kernels six times; saving 6% of the bytes that way is not worth a stage
three times slower. So, among the plans that meet the balance asked for (all of them when none
does):

* ``volume`` (the default): the plans within the threshold count as equally fast; those that
  give way as above drop out; among the rest, fewest bytes, then the simpler plan (fewer cut
  blocks), then the faster by the full estimate;
* ``time``: the fastest plan by the full estimate (fixed costs included); bytes, then
  simplicity, break exact ties.

Last, a guard no ranking can get past: the plan kept is never *dominated*, that is worse on
both printed axes (more bytes and a slower slowest stage by the full estimate) than another plan
the search made, the baselines it prints included (:func:`undominated`). Balance is a means to
a fast slowest stage, not an end: a plan that sends fewer bytes and is faster replaces the
choice even when it is outside the balance tolerance (the plan's notes say so).

The search ranks its candidates with it, and :mod:`graphopt.partition.variants` ranks the plans
of the graph as written and of each way of cutting it with it too. :func:`choice_notes` says in
the plan's notes when the rule kept a plan that sends more than another one, with both plans' numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from graphopt.partition.metrics import Metrics

__all__ = ["TIME_SLACK", "FIXED_SLACK", "BYTES_SLACK", "OBJECTIVES", "best_plan",
           "gives_way", "choice_notes", "dominates", "undominated"]

T = TypeVar("T")

TIME_SLACK = 0.10
FIXED_SLACK = 1.0     # a full estimate more than 2x another's ...
BYTES_SLACK = 0.10    # ... that sends at most 10% more bytes: the slower plan gives way
OBJECTIVES = ("volume", "time")


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


def best_plan(pool: Sequence[T], metrics_of: Callable[[T], Metrics], objective: str = "volume",
              time_slack: float = TIME_SLACK, *, admissible: Callable[[T], bool] | None = None,
              simplicity: Callable[[T], float] | None = None) -> T:
    """The plan the rule keeps from ``pool`` (see the module docstring).

    Args:
        metrics_of: a plan's recomputed metrics (bytes and slowest stage).
        admissible: whether a plan meets the balance asked for; when some do, only they compete.
        simplicity: lower is simpler (e.g. the number of cut blocks); breaks ties on bytes.

    Example:
        >>> best = best_plan(candidates, lambda c: c.metrics, "volume", 0.10)
    """
    if not pool:
        raise ValueError("no plan to choose from")
    if admissible is not None and any(admissible(c) for c in pool):
        pool = [c for c in pool if admissible(c)]
    simple = simplicity or (lambda c: 0.0)
    if objective == "volume":
        least = min(metrics_of(c).bottleneck_work for c in pool)
        scale = min(metrics_of(c).bottleneck_seconds for c in pool)
        near = [c for c in pool if metrics_of(c).bottleneck_work - least <=
                time_slack * max(scale, least) * (1 + 1e-12) + 1e-15]
        ms = [metrics_of(c) for c in near]
        # the plan with the least full estimate never gives way, so one always stays
        near = [c for c, m in zip(near, ms) if not any(gives_way(m, o) for o in ms)]
        return min(near, key=lambda c: (metrics_of(c).comm_bytes, simple(c),
                                        metrics_of(c).bottleneck_seconds))
    return min(pool, key=lambda c: (metrics_of(c).bottleneck_seconds, metrics_of(c).comm_bytes,
                                    simple(c)))


def dominates(a: Metrics, b: Metrics) -> bool:
    """Whether plan ``a`` is better than ``b`` on both printed axes: fewer bytes and a faster
    slowest stage (full estimate; a relative 1e-9 absorbs rounding)."""
    return a.comm_bytes < b.comm_bytes and \
        a.bottleneck_seconds < b.bottleneck_seconds * (1 - 1e-9)


def undominated(choice: T, pool: Sequence[T], metrics_of: Callable[[T], Metrics]) -> T:
    """``choice``, or where plans of ``pool`` dominate it (:func:`dominates`), the one of them
    that sends the fewest bytes (then the fastest). That one is dominated by nothing in
    ``pool``: a plan dominating it would dominate ``choice`` too, with fewer bytes still."""
    mc = metrics_of(choice)
    better = [c for c in pool if dominates(metrics_of(c), mc)]
    if not better:
        return choice
    return min(better, key=lambda c: (metrics_of(c).comm_bytes,
                                      metrics_of(c).bottleneck_seconds))


def gives_way(m: Metrics, other: Metrics) -> bool:
    """Whether plan ``m`` loses to ``other`` on fixed costs (module docstring): its full
    estimate more than ``1 + FIXED_SLACK`` times the other's, for at most ``BYTES_SLACK`` fewer
    bytes than the other sends."""
    return other.comm_bytes <= m.comm_bytes * (1 + BYTES_SLACK) and \
        m.bottleneck_seconds > (1 + FIXED_SLACK) * other.bottleneck_seconds


def _times(m: Metrics) -> str:
    return f"slowest stage {_us(m.bottleneck_seconds)}, work {_us(m.bottleneck_work)}"


def choice_notes(kept: Metrics, fewest: Metrics | None, equal: Metrics | None, *,
                 objective: str, time_slack: float, imbalance: float,
                 equal_admissible: bool, fastest: Metrics | None = None,
                 balance: str = "time") -> list[str]:
    """What the plan's notes say about the choice.

    Args:
        kept: the chosen plan.
        fewest: the admissible plan that sends the fewest bytes (``None``: not known).
        fastest: the admissible plan with the fastest full estimate (``None``: not known).
        equal: the equal-FLOPs contiguous split of the model as written.
        imbalance: the balance tolerance the plan was held to.
        balance: what it bounds, ``time`` (the stages' predicted seconds) or ``flops``.
        equal_admissible: whether the equal split meets that tolerance (and the memory cap).
    """
    notes = []
    if fewest is not None and fewest.comm_bytes < kept.comm_bytes:
        if objective != "volume":
            why = "slower (objective time keeps the fastest)"
        elif gives_way(fewest, kept):
            why = (f"its slowest stage is more than {1 + FIXED_SLACK:.0f}x this plan's by the "
                   f"full estimate (kernel launches of its cut blocks) for at most "
                   f"{BYTES_SLACK:.0%} fewer bytes")
        else:
            why = (f"its work exceeds the least by more than {time_slack:.0%} of the fastest "
                   "plan's stage time")
        notes.append(f"a plan sending {fewest.comm_bytes:,} B ({_times(fewest)}) exists but "
                     f"{why}; kept {kept.comm_bytes:,} B ({_times(kept)})")
    if equal is not None and kept.comm_bytes > equal.comm_bytes:
        if not equal_admissible:
            what, eq_imb, kept_imb = ("time imbalance", equal.time_imbalance,
                                      kept.time_imbalance) if balance == "time" else \
                ("FLOPs imbalance", equal.imbalance, kept.imbalance)
            why = (f"that split's {what} is {eq_imb:.1%} (tolerance {imbalance:.1%}); this "
                   f"plan's is {kept_imb:.1%}, bought with the extra bytes")
        elif objective == "volume":
            why = (f"that split's work exceeds this plan's by more than {time_slack:.0%} of "
                   f"its stage time ({_times(equal)} vs {_times(kept)})")
        else:
            why = f"this plan is faster ({_times(kept)} vs {_times(equal)}; objective time)"
        notes.append(f"sends {kept.comm_bytes:,} B, more than the equal-FLOPs split's "
                     f"{equal.comm_bytes:,} B: {why}")
    if fastest is not None and objective == "volume" and \
            kept.bottleneck_seconds > fastest.bottleneck_seconds * (1 + time_slack):
        notes.append(f"the fastest plan by the full estimate sends {fastest.comm_bytes:,} B "
                     f"({_times(fastest)}); this one's {_times(kept)} differs in fixed costs "
                     "(kernel launches, message latency), which fusion and CUDA graphs "
                     "amortize, so its bytes decide")
    return notes
