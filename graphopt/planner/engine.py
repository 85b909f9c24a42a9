"""What the training engine itself costs per step, per action and per message, measured.

The device spec prices the model's operators and the links; it does not know the pipeline
engine around them (``torch.distributed.pipelining`` schedules, the relay stages, DDP's hooks
and its no-sync bookkeeping, the barrier that starts a step), nor what a p2p message costs
inside a running schedule, where a rank that waits for one may lose its core on a busy host.
On small models and CPU hosts those costs are most of a step. They are measured here once per
machine and world size, by training a *probe* (a 4-layer MLP of width 16: its own compute is
negligible) through the runtime, and fitted to three numbers:

* ``action_s``: seconds added to every forward and every backward of one stage on one
  micro-batch, and ``step_s``: seconds added once per step. From ``dp = N`` (one stage per
  rank) with 1 and 8 micro-batches: the measured times, less what the cost model predicts for
  the probe's own work and gradient sync, are ``step_s + 2·M·action_s``.
* ``share``: how much faster one busy process computes than each of ``world`` busy at once
  (matmuls of 256 x 256 timed on rank 0 alone, then on every rank together, alternately). The
  device spec's rates were measured with every process busy; where the processes share cores
  (a CPU host, other tenants) a pipeline rank that computes while its peers wait in a bubble
  runs up to ``share`` times faster. 1 where each rank has its own device (NCCL) or none shows.
* ``transfer_s``: the per-message latency of a p2p send inside a schedule, found by bisection so
  that the step simulator, with the two numbers above, reproduces a ``pp = 2`` 1F1B probe with
  8 micro-batches. It replaces the link's ``alpha`` (a fit over isolated ping-pongs, which on a
  busy host scatters by an order of magnitude); the link's bandwidth stays.

Every probe configuration runs three times in one launch, interleaved with the others, and the
median over all their steps (each run's first left out) is kept: on a shared host a step now
and then takes several times as long, and the median ignores those. Results are cached
in ``<graphopt cache>/engine/``, keyed like the calibration (host, CPU, torch, device type,
world size).

Example:
    >>> eng = engine_overhead(2, device="my-calibrated-spec")      # measured, or from the cache
    >>> eng.action_s, eng.step_s, eng.transfer_s
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from graphopt.costmodel.calibrate import cache_dir, cache_path
from graphopt.costmodel.device_file import current_device_type
from graphopt.distributed.trainer import run_jobs
from graphopt.errors import GraphoptError
from graphopt.launch import WorkerError, default_backend, run_workers
from graphopt.parallel import ParallelConfig
from graphopt.planner.measure import training_job
from graphopt.planner.model import ModelCosts
from graphopt.planner.predict import links_of, predict
from graphopt.specs import LoadedModel

__all__ = ["EngineOverhead", "engine_overhead", "measure_engine", "probe_model", "cache_file"]

PROBE_BATCH = 32
REPEATS = 3
STEPS = 10


@dataclass(frozen=True)
class EngineOverhead:
    """The engine's costs (seconds) for ``world`` processes; see the module docstring."""

    world: int
    action_s: float
    step_s: float
    transfer_s: float
    share: float = 1.0
    measured: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class _Probe(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(16, 16), nn.Tanh())])

    def forward(self, x):
        return self.layers(x)


def probe_model():
    """``(model, inputs)`` of the probe: 4 layers of 16 x 16, batch 32."""
    torch.manual_seed(0)
    return _Probe(), (torch.randn(PROBE_BATCH, 16),)


def cache_file(world: int, device_type: str | None = None) -> Path:
    return cache_dir() / "engine" / cache_path(world, device=device_type).name


def _matmul_rate(seconds: float) -> float:
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 256 ** 3 * count / (time.perf_counter() - start)


def _sharing_worker(rank: int, world: int, rounds: int, seconds: float) -> list[float]:
    """Rank 0's matmul rate alone over its rate with every rank busy, per round."""
    ratios = []
    for _ in range(rounds):
        dist.barrier()
        alone = _matmul_rate(seconds) if rank == 0 else 0.0
        dist.barrier()
        together = _matmul_rate(seconds)
        dist.barrier()
        if rank == 0:
            ratios.append(alone / together)
    return ratios


def measure_share(world: int, *, rounds: int = 4, seconds: float = 0.4,
                  timeout_s: float = 120.0) -> float:
    """``share`` (module docstring): 1 with a GPU per rank, else measured on the CPU."""
    if world < 2 or default_backend(world) == "nccl":
        return 1.0
    ratios = run_workers(_sharing_worker, world, (rounds, seconds), timeout_s=timeout_s)[0]
    return max(1.0, float(statistics.median(ratios)))


def _probe_configs(world: int):
    dp_only = [ParallelConfig(dp=world, microbatches=1), ParallelConfig(dp=world, microbatches=8)]
    if world % 2:
        return dp_only, None
    return dp_only, ParallelConfig(dp=world // 2, pp=2, microbatches=8)


def _median_runs(costs, configs, steps: int, timeout_s: float) -> list[float]:
    order = list(configs) * REPEATS
    jobs = [training_job(costs, predict(costs, c), steps=steps, timeout_s=timeout_s) for c in order]
    runs = run_jobs(jobs)
    seconds: dict = {}
    for c, run in zip(order, runs):      # every step after each run's first, pooled
        seconds.setdefault(c, []).extend(run.step_seconds[1:])
    return [float(statistics.median(seconds[c])) for c in configs]


def _fit_transfer(costs, config, measured: float) -> float:
    """The per-message latency that makes the simulator match ``measured`` (bisection)."""

    world = config.world_size
    eng = costs.engines[world]

    def at(alpha):
        costs.engines[world] = EngineOverhead(world, eng.action_s, eng.step_s, alpha, eng.share)
        return predict(costs, config).predicted_step_seconds
    lo, hi = 0.0, 0.05
    if at(lo) >= measured:
        return lo
    if at(hi) <= measured:
        return hi
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if at(mid) < measured else (lo, mid)
    return 0.5 * (lo + hi)


def measure_engine(world: int, device: str, *, steps: int = STEPS, timeout_s: float = 300.0,
                   link: str | None = None) -> EngineOverhead:
    """Train the probe on ``world`` processes and fit the engine's costs (module docstring)."""
    if world < 2:
        raise GraphoptError(f"the engine probe runs on 2 or more processes, got {world}")
    model, inputs = probe_model()
    costs = ModelCosts(LoadedModel("engine probe", model, inputs), device, link=link,
                       imbalance=0.5)
    dp_only, piped = _probe_configs(world)
    configs = dp_only + ([piped] if piped else [])
    try:
        share = measure_share(world)
        measured = _median_runs(costs, configs, steps, timeout_s)
    except WorkerError as exc:
        raise GraphoptError(f"the engine probe on {world} processes failed: {exc}") from None
    pred = [predict(costs, c).predicted_step_seconds for c in dp_only]
    r1, r8 = measured[0] - pred[0], measured[1] - pred[1]
    action = max(0.0, (r8 - r1) / (2 * (8 - 1)))
    step = max(0.0, r1 - 2 * action)
    p2p, _ = links_of(costs)
    costs.engines[world] = EngineOverhead(world, action, step, p2p.alpha, share)
    transfer = _fit_transfer(costs, piped, measured[2]) if piped else p2p.alpha
    record = {str(c.label()): s for c, s in zip(configs, measured)}
    return EngineOverhead(world=world, action_s=action, step_s=step, transfer_s=transfer,
                          share=share, measured={"configs": record, "steps": steps,
                                    "device": costs.cost_model.describe(),
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def engine_overhead(world: int, device: str, *, refresh: bool = False,
                    link: str | None = None) -> EngineOverhead | None:
    """This machine's engine costs for ``world`` processes: cached, else measured and cached.
    None for one process (nothing to probe: no messages, and the step is the model's)."""
    if world < 2:
        return None
    path = cache_file(world, current_device_type())
    if path.is_file() and not refresh:
        try:
            data = json.loads(path.read_text())
            return EngineOverhead(**data)
        except (OSError, ValueError, TypeError):
            pass                        # a damaged cache entry: measure again
    eng = measure_engine(world, device, link=link)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(eng.to_dict(), indent=1) + "\n")
    return eng
