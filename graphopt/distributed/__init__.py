"""The multi-process runtime: a plan's stages train (and infer) on torch.distributed.pipelining.

It reads the schedules (:mod:`graphopt.schedules`), the parallel configuration
(:mod:`graphopt.parallel`) and the process launcher (:mod:`graphopt.launch`) from the core, and
imports neither the cost model nor the planner. Read in this order:

* :mod:`~graphopt.distributed.lowering` (relay) and :mod:`~graphopt.distributed.direct`: a
  plan's stages as the modules the engine runs;
* :mod:`~graphopt.distributed.batches`, :mod:`~graphopt.distributed.job`: data, loss, the job;
* :mod:`~graphopt.distributed.worker`, :mod:`~graphopt.distributed.trace`: one rank's loop,
  what it records;
* :mod:`~graphopt.distributed.trainer`: the whole run (what ``graphopt train`` calls), with
  :mod:`~graphopt.distributed.reference` (``--check``) and :mod:`~graphopt.distributed.timeline`;
* :mod:`~graphopt.distributed.stage_runtime`: forward-only pipelines (``graphopt pipeline``).
"""
