"""Collectives: the ring all-reduce, a parameter server for comparison, DDP's buckets, and the
sum of tied weights' gradients over the ranks that hold them.
"""
from __future__ import annotations

from graphopt.costmodel.device import LinkSpec
from graphopt.errors import PlanError

__all__ = ["ring_allreduce_seconds", "parameter_server_seconds", "ddp_buckets", "tied_sync_seconds",
           "DDP_FIRST_BUCKET", "DDP_BUCKET"]

DDP_FIRST_BUCKET, DDP_BUCKET = 1 << 20, 25 << 20   # torch DDP's defaults: 1 MiB, then 25 MiB


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


def tied_sync_seconds(prof, place: list[int], ring: LinkSpec) -> float:
    """The runtime's sum of tied weights' gradients over the ranks whose stages hold them (a
    tied embedding and LM head at the two ends of a pipeline): one ring all-reduce per group of
    ranks, after the last backward and before the optimizer, as the worker runs it."""
    groups: dict[tuple[int, ...], int] = {}
    for nbytes, stages in prof.shared:
        ranks = tuple(sorted({place[s] for s in stages}))
        if len(ranks) > 1:
            groups[ranks] = groups.get(ranks, 0) + nbytes
    return sum(ring_allreduce_seconds(b, len(r), ring) for r, b in sorted(groups.items()))
