"""Run pipeline stages on k processes with ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

Needs: :class:`~graphopt.partition.stages.Stages` from :meth:`Partition.split
<graphopt.partition.plan.Partition.split>` and a list of micro-batches (each a tuple of the
model's flat inputs, shaped like the example inputs the graph was captured with).
Guarantees: the outputs of every micro-batch, exactly as the stages compute them in one process.

Schedule: GPipe forward. Rank ``r`` runs stage ``r`` on micro-batch 0, 1, ... in order: it posts
receives for the tensors it needs (straight from the producing stage, which may be any earlier
one, not only ``r - 1``), runs its module, and posts asynchronous sends to every consuming stage
before moving to the next micro-batch, so stage ``r`` works on micro-batch ``i`` while stage
``r + 1`` works on ``i - 1``. Every message is tagged by (micro-batch, value, tensor), so matching
never depends on arrival order. ``torch.distributed.pipelining`` is not used because its stages
pass activations only from stage ``i`` to ``i + 1``; a plan's skip transfers would have to be
forwarded through every stage in between, sending more than the plan says.

Processes start with ``torch.multiprocessing`` (spawn) and meet on a free localhost port; one
warm-up micro-batch runs before the timed run. Boolean tensors travel as bytes (gloo has no
bool type).
"""
from __future__ import annotations

import os
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from graphopt.partition.stages import Stages

__all__ = ["PipelineRun", "run_pipeline", "free_port"]


@dataclass
class PipelineRun:
    """What a multi-process run returns."""

    outputs: list[tuple]   # per micro-batch: the model's flat outputs
    seconds: float         # the timed run of all micro-batches (after one warm-up)
    world_size: int
    backend: str

    @property
    def microbatches_per_second(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds > 0 else float("inf")


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tensors(val) -> list[torch.Tensor]:
    if isinstance(val, torch.Tensor):
        return [val]
    return [t for v in val for t in _tensors(v)]


def _rebuild(layout, flat: list[torch.Tensor]):
    """Put received tensors back in a value's structure (see ``Stage.layout``)."""
    it = iter(flat)

    def go(v):
        return next(it) if v is None else tuple(go(x) for x in v)
    return go(layout)


def _wire(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(torch.uint8) if t.dtype == torch.bool else t


class _Worker:
    """One rank: its stage, its device and the message tags."""

    def __init__(self, rank: int, stages: Stages, device: torch.device):
        import torch.distributed as dist
        self.dist = dist
        self.rank, self.device = rank, device
        self.stage = stages.stages[rank]
        self.stage.module.to(device)
        names = sorted({n for st in stages.stages for n in st.sends})
        self.value_id = {n: i for i, n in enumerate(names)}
        self.width = max((len(s) for st in stages.stages for s in st.specs.values()), default=1)
        self.nvalues = max(len(names), 1)
        self.results = [(i, v) for i, (kind, v) in enumerate(stages.results)
                        if kind == "value" and stages.owner.get(v) == rank]
        self.pending: list = []

    def tag(self, mb: int, name: str, j: int) -> int:
        return (mb * self.nvalues + self.value_id[name]) * self.width + j

    def step(self, mb: int, inputs: tuple) -> dict[int, torch.Tensor]:
        st, dist = self.stage, self.dist
        bufs, reqs = {}, []
        for name, kind, src in st.inputs:
            if kind != "recv":
                continue
            ts = []
            for j, (shape, dtype) in enumerate(st.specs[name]):
                wire = torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype,
                                   device=self.device)
                reqs.append(dist.irecv(wire, src=src, tag=self.tag(mb, name, j)))
                ts.append((wire, dtype))
            bufs[name] = ts
        for r in reqs:
            r.wait()
        args = []
        for name, kind, src in st.inputs:
            if kind == "user":
                args.append(inputs[src].to(self.device))
                continue
            flat = [w.view(torch.bool) if d == torch.bool else w for w, d in bufs[name]]
            args.append(_rebuild(st.layout.get(name), flat))
        with torch.no_grad():
            outs = st.module(*args)
        values = dict(zip(st.outputs, outs))
        for name, dsts in st.sends.items():
            for j, t in enumerate(_tensors(values[name])):
                w = _wire(t)
                for dst in dsts:
                    self.pending.append((dist.isend(w, dst=dst, tag=self.tag(mb, name, j)), w))
        return {i: values[v].detach().cpu() for i, v in self.results}

    def drain(self) -> None:
        for req, _ in self.pending:
            req.wait()
        self.pending.clear()


def _worker(rank: int, world: int, port: int, job: str, out_dir: str, backend: str,
            threads: int) -> None:
    import torch.distributed as dist
    torch.set_num_threads(max(1, threads))
    device = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=300))
    try:
        data = torch.load(job, weights_only=False)
        stages, mbs = data["stages"], data["microbatches"]
        w = _Worker(rank, stages, device)
        w.step(0, mbs[0])          # warm-up: first-call overheads stay out of the timing
        w.drain()
        dist.barrier()
        start = time.perf_counter()
        results = [w.step(i, mb) for i, mb in enumerate(mbs)]
        w.drain()
        if backend == "nccl":
            torch.cuda.synchronize(device)
        dist.barrier()
        seconds = time.perf_counter() - start
        torch.save({"results": results, "seconds": seconds}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_pipeline(stages: Stages, microbatches: list[tuple], *, backend: str | None = None,
                 threads: int | None = None) -> PipelineRun:
    """Run ``stages`` on one process each; returns every micro-batch's outputs and the time.

    Args:
        stages: from ``Partition.split(graph)``.
        microbatches: tuples of flat model inputs.
        backend: ``gloo`` or ``nccl`` (default: NCCL when there is a GPU per stage, else gloo).
        threads: intra-op threads per process (default: the cores shared out evenly).

    Example:
        >>> stages = plan.split(graph)
        >>> run = run_pipeline(stages, [inputs, inputs])
        >>> run.outputs[0], run.seconds
    """
    import torch.multiprocessing as mp
    world = len(stages)
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world \
            else "gloo"
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    with tempfile.TemporaryDirectory(prefix="graphopt-pipe-") as tmp:
        job = str(Path(tmp) / "job.pt")
        torch.save({"stages": stages, "microbatches": [tuple(mb) for mb in microbatches]}, job)
        mp.start_processes(_worker, args=(world, free_port(), job, tmp, backend, threads),
                           nprocs=world, join=True, start_method="spawn")
        outputs: list[dict[int, torch.Tensor]] = [{} for _ in microbatches]
        seconds = 0.0
        for r in range(world):
            got = torch.load(Path(tmp) / f"rank{r}.pt", weights_only=False)
            seconds = max(seconds, got["seconds"])
            for i, res in enumerate(got["results"]):
                outputs[i].update(res)
    flat = [tuple(out[i] if kind == "value" else v
                  for i, (kind, v) in enumerate(stages.results)) for out in outputs]
    return PipelineRun(outputs=flat, seconds=seconds, world_size=world, backend=backend)
