"""Run pipeline stages forward (inference) on k processes, on ``torch.distributed.pipelining``.

Needs: :class:`~graphopt.partition.stages.Stages` from :meth:`Partition.split
<graphopt.partition.plan.Partition.split>` and a list of micro-batches (each a tuple of the
model's flat inputs, shaped like the example inputs the graph was captured with).
Guarantees: the outputs of every micro-batch, exactly as the stages compute them in one process.

The same lowering as training (:mod:`graphopt.distributed.lowering`): one manual
``PipelineStage`` per rank over a :class:`~graphopt.distributed.lowering.RelayStage`, static
tensor metadata, ``ScheduleGPipe`` without a loss (forward only) under ``no_grad``. One warm-up
step runs before the timed one. Processes start through :func:`graphopt.launch.run_workers`,
so a failing rank stops the others and is named in one line.

What the engine does differently from the home-made runtime it replaces: a value a stage sends
to a later, non-adjacent stage is relayed through the stages between (the manual frontend sends
only ``i -> i + 1``; it takes tuples and any dtype), so the bytes on the wire are the relay's
(:func:`~graphopt.distributed.lowering.relay_bytes`), not the plan's one send per consumer; and
the micro-batches enter as one batch that the engine splits along dimension 0, so every input
must have a batch dimension (the same across micro-batches, as they all match the captured
shapes). Nothing the old runtime did is left that the engine cannot do.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

from graphopt.distributed.lowering import Lowered, RelayStage, lower, rebuild_value
from graphopt.errors import GraphoptError
from graphopt.launch import default_backend, free_port, run_workers
from graphopt.partition.stages import Stages

__all__ = ["PipelineRun", "run_pipeline", "free_port"]


@dataclass
class PipelineRun:
    """What a multi-process run returns."""

    outputs: list[tuple]   # per micro-batch: the model's flat outputs
    seconds: float         # the timed run of all micro-batches (after one warm-up step)
    world_size: int
    backend: str

    @property
    def microbatches_per_second(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds > 0 else float("inf")


def _infer_worker(rank: int, world: int, lowered: Lowered, batch: tuple, m: int) -> dict:
    cuda = dist.get_backend() == "nccl"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    prog = lowered.programs[rank]
    module = RelayStage(prog).to(device)
    stage = PipelineStage(module, rank, world, device, input_args=prog.examples(prog.carry_in),
                          output_args=prog.examples(prog.carry_out))
    outputs: list[tuple] = []
    forward = stage.forward_one_chunk

    def keep(chunk, *a, **kw):     # the last stage's outputs, per micro-batch, in order
        out = forward(chunk, *a, **kw)
        if rank == world - 1:
            outputs.append(tuple(t.detach().cpu() for t in out))
        return out

    stage.forward_one_chunk = keep
    sched = ScheduleGPipe(stage, n_microbatches=m)
    args = tuple(t.to(device) for t in batch) if rank == 0 else ()
    with torch.no_grad():
        sched.step(*args, return_outputs=False)         # warm-up: first-call costs untimed
        outputs.clear()
        dist.barrier()
        start = time.perf_counter()
        sched.step(*args, return_outputs=False)
        if cuda:
            torch.cuda.synchronize(device)
        dist.barrier()
        seconds = time.perf_counter() - start
    return {"outputs": outputs, "seconds": seconds}


def run_pipeline(stages: Stages, microbatches: list[tuple], *, backend: str | None = None,
                 threads: int | None = None, graph=None, timeout_s: float = 600.0) -> PipelineRun:
    """Run ``stages`` on one process each; returns every micro-batch's outputs and the time.

    Args:
        stages: from ``Partition.split(graph)``.
        microbatches: tuples of flat model inputs.
        backend: ``gloo`` or ``nccl`` (default: NCCL when there is a GPU per stage, else gloo).
        threads: intra-op threads per process (default: the cores shared out evenly).
        graph: the graph the stages came from (optional: names inputs no stage uses).

    Example:
        >>> stages = plan.split(graph)
        >>> run = run_pipeline(stages, [inputs, inputs])
        >>> run.outputs[0], run.seconds
    """
    if not microbatches:
        raise GraphoptError("run_pipeline needs at least one micro-batch")
    first = tuple(microbatches[0])
    for i, t in enumerate(first):
        if not isinstance(t, torch.Tensor) or t.dim() == 0:
            raise GraphoptError(f"input {i} has no batch dimension: the pipeline engine splits "
                                "every input along dimension 0")
    world = len(stages)
    lowered = lower(stages, graph, example=first)
    batch = tuple(torch.cat([tuple(mb)[i] for mb in microbatches]) for i in range(len(first)))
    backend = backend or default_backend(world)
    results = run_workers(_infer_worker, world, (lowered, batch, len(microbatches)),
                          timeout_s=timeout_s, backend=backend, threads=threads)
    last = lowered.programs[-1]
    flat_outputs = results[-1]["outputs"]
    outputs = []
    for flat in flat_outputs:
        values, it = [], iter(flat)
        for name in last.carry_out:
            values.append(rebuild_value(last.layouts[name], it))
        by_slot = {}
        pos = 0
        for name, val in zip(last.carry_out, values):
            by_slot[pos] = val
            pos += len(last.specs[name])
        outputs.append(tuple(by_slot[s] if s is not None else c
                             for s, c in zip(lowered.result_slots, lowered.result_consts)))
    seconds = max(r["seconds"] for r in results)
    return PipelineRun(outputs=outputs, seconds=seconds, world_size=world, backend=backend)
