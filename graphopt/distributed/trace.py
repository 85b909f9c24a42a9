"""Record what each rank does during a step: forward, backward, send, receive, and the bytes.

The engine's schedules run stage methods (``forward_one_chunk``, ``backward_one_chunk``,
``backward_weight_one_chunk``) and post and wait on point-to-point work through three
module-level functions of ``torch.distributed.pipelining.schedules`` (``_batch_p2p``,
``_sorted_batch_p2p``, ``_wait_batch_p2p``). :class:`Recorder` wraps the stage methods of one
process's stages and swaps those functions for timed ones (each worker is its own process, so
the swap touches no one else), so the timeline shows the engine's real order of work and the
bytes it really posted. Time blocked in a wait for a receive is the ``recv`` bar: on a pipeline
that is where the bubble shows. Events are ``(kind, stage, micro-batch, start, end)`` in seconds
from the step's start, measured after a barrier so all ranks share the origin.

``fault`` (tests and drills): ``(rank_to_fail, step, "raise" | "kill")`` makes this rank raise, or
kill itself with SIGKILL, in the forward of micro-batch 1 of that step.
"""
from __future__ import annotations

import os
import signal
import time

import torch.distributed as dist
from torch.distributed.pipelining import schedules as sch

__all__ = ["Recorder", "COMPUTE_KINDS"]

COMPUTE_KINDS = ("forward", "backward", "backward-input", "backward-weight")


class Recorder:
    """Timed events and sent bytes of the stages of one rank."""

    def __init__(self, rank: int, fault=None):
        self.rank = rank
        self.fault = fault
        self.step = -1
        self.origin = time.perf_counter()
        self.events: list[tuple[str, int, int, float, float]] = []
        self.sent_bytes = 0
        self._kinds: dict[int, str] = {}

    def start_step(self, step: int) -> None:
        self.step, self.origin = step, time.perf_counter()
        self.events, self.sent_bytes = [], 0

    def add(self, kind: str, stage: int, mb: int, t0: float, t1: float) -> None:
        self.events.append((kind, stage, mb, t0 - self.origin, t1 - self.origin))

    # -- stages -----------------------------------------------------------------------------
    def wrap_stage(self, stage) -> None:
        """Time the compute methods of a ``PipelineStage`` (instance attributes, nothing global)."""
        idx = stage.stage_index
        fwd, bwd, wgt = stage.forward_one_chunk, stage.backward_one_chunk, \
            stage.backward_weight_one_chunk

        def forward_one_chunk(chunk, *a, **kw):
            self._maybe_fail(chunk)
            t0 = time.perf_counter()
            out = fwd(chunk, *a, **kw)
            self.add("forward", idx, chunk, t0, time.perf_counter())
            return out

        def backward_one_chunk(chunk, *a, **kw):
            t0 = time.perf_counter()
            out = bwd(chunk, *a, **kw)
            full = kw.get("full_backward", a[1] if len(a) > 1 else True)
            self.add("backward" if full else "backward-input", idx, chunk, t0, time.perf_counter())
            return out

        def backward_weight_one_chunk(chunk, *a, **kw):
            t0 = time.perf_counter()
            out = wgt(chunk, *a, **kw)
            self.add("backward-weight", idx, chunk, t0, time.perf_counter())
            return out

        stage.forward_one_chunk = forward_one_chunk
        stage.backward_one_chunk = backward_one_chunk
        stage.backward_weight_one_chunk = backward_weight_one_chunk

    def _maybe_fail(self, chunk: int) -> None:
        if self.fault is None:
            return
        rank, step, how = self.fault
        if rank == self.rank and step == self.step and chunk == 1:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"injected fault in the forward of micro-batch 1 of step {step}")

    # -- point-to-point ---------------------------------------------------------------------
    def patch_p2p(self) -> None:
        """Make this recorder the one the (once) swapped p2p functions report to."""
        global _ACTIVE
        _install()
        _ACTIVE = self

    def _posted(self, ops, works, t0: float) -> None:
        sends = [op for op in ops if op.op is dist.isend]
        for op in sends:
            self.sent_bytes += op.tensor.numel() * op.tensor.element_size()
        for w in works:
            self._kinds[id(w)] = "send" if sends else "recv"
        if sends:
            self.add("send", -1, -1, t0, time.perf_counter())

    def _waited(self, works, t0: float) -> None:
        kinds = {self._kinds.pop(id(w), "recv") for w in works}
        if works:
            self.add("recv" if "recv" in kinds else "send-wait", -1, -1, t0, time.perf_counter())

    def compute_seconds(self) -> float:
        return sum(t1 - t0 for kind, _, _, t0, t1 in self.events if kind in COMPUTE_KINDS)


_ACTIVE: Recorder | None = None
_INSTALLED = False


def _install() -> None:
    """Swap the schedules module's p2p functions for timed, byte-counting ones, once per process."""
    global _INSTALLED
    if _INSTALLED:
        return
    batch, wait = sch._batch_p2p, sch._wait_batch_p2p

    def timed_batch(ops, desc=None):
        t0 = time.perf_counter()
        works = batch(ops, desc)
        if _ACTIVE is not None:
            _ACTIVE._posted(ops, works, t0)
        return works

    def timed_wait(works):
        t0 = time.perf_counter()
        wait(works)
        if _ACTIVE is not None:
            _ACTIVE._waited(works, t0)

    sch._batch_p2p = timed_batch
    sch._wait_batch_p2p = timed_wait
    _INSTALLED = True
