"""What the parallelism planner knows of one model: its graphs, its stage plans, its remat saving.

A configuration runs the model's training graph (model plus loss) captured at the micro-batch
size ``batch / (dp * M)``, split into ``pp * v`` stages. :class:`ModelCosts` keeps, per model:

* one capture per micro-batch size (:func:`graphopt.planner.training.prepare_model`, the
  runtime's own: the loss a model needs is added the same way);
* the device spec with its measured matmul curves made non-decreasing
  (:func:`graphopt.costmodel.target.monotone_rates`);
* one pipeline plan per stage count ``k``, made once by the runtime's partitioner
  (:func:`graphopt.planner.training.plan_training`, forward+backward weights) on the graph
  at the global batch and applied to the graph of every micro-batch size by node name (the
  graphs differ only in their shapes); a graph whose names differ is partitioned itself;
* the :class:`~graphopt.costmodel.stage_profile.StageProfile` of each (k, micro-batch size);
* with a calibrated CPU spec, the model's training step timed at each micro-batch size and
  thread count (:mod:`graphopt.planner.profile`): factors on the spec's forward and
  backward sums;
* for each memory budget (:class:`~graphopt.parallel.MemoryBudget`: a fraction ``f`` of the
  saved activations, or bytes), what the remat planner (:mod:`graphopt.memory.remat`, greedy
  solver, on the training step at the global batch) saves and recomputes: the share of saved
  activations kept and the recompute FLOPs over the forward FLOPs. Each stage's saved
  activations are scaled by the first and its backward grows by the second times its forward:
  a per-model ratio applied to every stage, which is the simplification.

Every cache is filled on first use, in a fixed order, so a plan is the same for a fixed seed.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass

import numpy as np

from graphopt.costmodel.stage_profile import StageProfile, stage_profile
from graphopt.costmodel.target import as_cost_model
from graphopt.distributed.job import TrainConfig
from graphopt.errors import GraphoptError, PlanError
from graphopt.memory.joint import capture_joint
from graphopt.op_table import OpClass
from graphopt.parallel import MemoryBudget
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.plan import Partition
from graphopt.passes import PassContext
from graphopt.passes.rematerialize import rematerialize
from graphopt.planner.profile import measured_scale, times_steps
from graphopt.planner.training import plan_training, prepare_model

__all__ = ["ModelCosts", "RematEffect"]

_IMBALANCES = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@contextlib.contextmanager
def _native_stdout_silenced():
    """METIS prints warnings ("too many parts") from C straight to file descriptor 1, which
    would break the table on stdout while the planner tries many stage counts."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:        # no real descriptor (an embedded interpreter): nothing to silence
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class RematEffect:
    """What a memory budget does to a training step (ratios of the no-remat step)."""

    budget: MemoryBudget
    kept: float          # saved activation bytes kept / without remat
    recompute: float     # recomputed FLOPs / forward FLOPs


class ModelCosts:
    """Captures, plans and stage profiles of one loaded model, each made once.

    Args:
        loaded: a :class:`~graphopt.specs.LoadedModel`.
        device: a device key of :data:`graphopt.costmodel.presets.DEVICES` (a calibrated spec registered
            there by ``--device-spec``).
        link: a link key of :data:`graphopt.costmodel.presets.LINKS` for the partitioner, or None.
        optimizer, seed, imbalance, capture_mode: as ``graphopt train`` takes them.
        captures: another ModelCosts of the same model and seed whose captures to share (the
            graphs do not depend on the device; the plans do).

    Example:
        >>> costs = ModelCosts(load_spec("zoo:mlp"), "cpu")
        >>> costs.batch, costs.layers, costs.profile(2, costs.batch // 4).fwd_s
    """

    def __init__(self, loaded, device, *, link: str | None = None, optimizer: str = "sgd",
                 seed: int = 0, imbalance: float = 0.03, capture_mode: str = "auto",
                 captures: ModelCosts | None = None, time_steps: bool | None = None) -> None:
        self.cost_model = as_cost_model(device, link)
        self.loaded, self.link = loaded, link
        self.device = self.cost_model.target.key
        self.spec = self.cost_model.spec
        self.time_steps = times_steps(self.spec) if time_steps is None else time_steps
        self._scales: dict[tuple[int, int], tuple[float, float]] = {}
        self.optimizer, self.seed, self.imbalance = optimizer, seed, imbalance
        self.capture_mode = capture_mode
        self._plans: dict[tuple[int, int], object] = {}
        self._profiles: dict[tuple[int, int], StageProfile] = {}
        self._remat: dict[MemoryBudget, RematEffect | None] = {}
        self.notes: list[str] = []
        self.imbalance_used: dict[int, float] = {}
        # world size -> the engine's measured costs (graphopt.planner.engine), if any
        self.engines: dict[int, object] = {}
        if captures is not None:
            self.batch: int = captures.batch
            self._prepared: dict[int, object] = captures._prepared
            return
        first = self._prepare(1)
        self.batch = first.batches.batch
        self._prepared = {self.batch: first}

    # -- graphs ------------------------------------------------------------------------------------
    def _prepare(self, microbatches: int):
        cfg = TrainConfig.of(pp=1, seed=self.seed, microbatches=microbatches)
        return prepare_model(self.loaded, cfg, capture_mode=self.capture_mode)

    def prepared(self, micro: int):
        """The runtime's :class:`~graphopt.planner.training.Prepared` at ``micro`` samples
        per micro-batch: the training graph captured at that size and the steps' data."""
        if micro not in self._prepared:
            if micro < 1 or self.batch % micro:
                raise PlanError(f"a micro-batch of {micro} does not divide the batch of "
                                f"{self.batch}")
            self._prepared[micro] = self._prepare(self.batch // micro)
        return self._prepared[micro]

    @property
    def graph(self):
        """The training graph at the global batch."""
        return self.prepared(self.batch).graph

    @property
    def layers(self) -> int:
        """Weight layers: matmul, convolution and attention nodes. A stage needs at least one,
        so ``pp * v`` stages are offered only up to this many."""
        heavy = (OpClass.MATMUL, OpClass.CONV, OpClass.ATTENTION)
        return sum(1 for i in self.graph.nodes() if i.op == "call_function"
                   and not i.is_param and i.op_class in heavy)

    @property
    def grad_bytes(self) -> int:
        """Bytes of the trainable weights (what one data-parallel step synchronizes)."""
        return int(sum(p.numel() * p.element_size() for p in self.graph.gm.parameters()
                       if p.requires_grad))

    # -- plans -------------------------------------------------------------------------------------
    def _partition(self, graph, k: int):
        """The runtime's partitioner; where one node outweighs a stage's share it allows the
        imbalance the graph needs (a larger one in turn), since the pipeline is only as fast
        as its slowest stage either way, and says so in a note."""
        error = None
        for imbalance in (self.imbalance,) + tuple(i for i in _IMBALANCES if i > self.imbalance):
            try:
                with _native_stdout_silenced():
                    plan = plan_training(graph, k=k, schedule="1f1b",
                                         microbatches=max(4, k),
                                         cost_model=self.cost_model,
                                         optimizer=self.optimizer, memory_cap=None,
                                         imbalance=imbalance, seed=self.seed,
                                         model=self.loaded.spec)[0]
            except PlanError as exc:
                if "imbalance" not in str(exc):
                    raise
                error = exc
                continue
            if imbalance != self.imbalance:
                self.notes.append(f"{k} stages: planned with imbalance {imbalance:g} (one node "
                                  f"outweighs a stage's share at {self.imbalance:g}); train "
                                  f"them with --imbalance {imbalance:g}")
            self.imbalance_used[k] = imbalance
            return plan
        raise error

    def plan(self, k: int, micro: int | None = None):
        """The pipeline :class:`~graphopt.partition.plan.Partition` of ``k`` stages for the graph
        at ``micro`` samples per micro-batch (the global-batch plan, renamed onto it)."""
        micro = self.batch if micro is None else micro
        if (k, micro) in self._plans:
            return self._plans[(k, micro)]
        graph = self.prepared(micro).graph
        if k == 1:
            cg = CostGraph.from_graph(graph, self.cost_model)
            plan = Partition(model=self.loaded.spec, k=1, mode="pipeline", cost_graph=cg,
                             part=np.zeros(len(cg.names), dtype=np.int64), method="single stage")
        elif micro == self.batch:
            plan = self._partition(graph, k)
        else:
            ref = self.plan(k, self.batch)
            parts = ref.parts
            if set(parts) == set(graph.info):
                cg = CostGraph.from_graph(graph, self.cost_model)
                plan = Partition(model=ref.model, k=k, mode="pipeline", cost_graph=cg,
                                 part=np.array([parts[n] for n in cg.names], dtype=np.int64),
                                 method=ref.method, options=ref.options, notes=ref.notes)
            else:
                self.notes.append(f"the graph at micro-batch {micro} names other nodes than at "
                                  f"the global batch: partitioned into {k} stages on its own")
                plan = self._partition(graph, k)
        self._plans[(k, micro)] = plan
        return plan

    def profile(self, k: int, micro: int) -> StageProfile:
        """Stage costs of the ``k``-stage plan at ``micro`` samples per micro-batch."""
        if (k, micro) not in self._profiles:
            graph = self.prepared(micro).graph
            self._profiles[(k, micro)] = stage_profile(graph, self.plan(k, micro).parts, k,
                                                       self.cost_model)
        return self._profiles[(k, micro)]

    def step_scale(self, micro: int, threads: int) -> tuple[float, float]:
        """``(forward, backward)`` factors from timing the step (1, 1 when not timed)."""
        if not self.time_steps:
            return 1.0, 1.0
        if (micro, threads) not in self._scales:
            prof = self.profile(1, micro)
            self._scales[(micro, threads)] = measured_scale(
                self.prepared(micro), sum(prof.fwd_s), sum(prof.bwd_s), threads,
                spec=self.spec)
        return self._scales[(micro, threads)]

    # -- rematerialization -------------------------------------------------------------------------
    def remat(self, budget) -> RematEffect | None:
        """What the remat planner saves under ``budget`` (a :class:`MemoryBudget`, or what
        :meth:`MemoryBudget.parse` reads: ``0.5`` is half the saved activations); None when it
        cannot plan this model (the note says why)."""
        budget = MemoryBudget.parse(budget, option="memory budget")
        if budget not in self._remat:
            self._remat[budget] = self._plan_remat(budget)
        return self._remat[budget]

    def _plan_remat(self, budget: MemoryBudget) -> RematEffect | None:
        graph = self.graph
        try:
            joint = capture_joint(graph, list(self.prepared(self.batch).batches.example))
            ctx = PassContext(options={"memory_budget": budget.value,
                                       "num_fwd_outputs": joint.num_fwd_outputs,
                                       "remat_solver": "greedy"},
                              seed=self.seed, device=self.cost_model)
            rematerialize(joint.graph, ctx)
        except (GraphoptError, RuntimeError, ValueError) as exc:
            self.notes.append(f"memory budget {budget} left out: the remat planner could not "
                              f"plan {self.loaded.spec}: {str(exc).splitlines()[0][:160]}")
            return None
        rep = ctx.artifacts.get("remat")
        if rep is None or not rep.baseline_saved_bytes:
            self.notes.append(f"memory budget {budget} left out: {self.loaded.spec} saves "
                              "nothing for its backward pass")
            return None
        kept = rep.saved_bytes / rep.baseline_saved_bytes
        recompute = rep.recompute_flops / max(graph.total_flops, 1)
        return RematEffect(budget=budget, kept=float(kept), recompute=float(recompute))
