"""The multi-process runtime: a plan's stages train (and infer) on torch.distributed.pipelining.

Read in this order:

* :mod:`~graphopt.distributed.lowering` (relay) and :mod:`~graphopt.distributed.direct`: a
  plan's stages as the modules the engine runs;
* :mod:`~graphopt.distributed.schedule`: the schedules, where stages sit, what they hold;
* :mod:`~graphopt.distributed.train_cost`: forward+backward weights and training memory for the
  partitioner, and the step estimate;
* :mod:`~graphopt.distributed.batches`, :mod:`~graphopt.distributed.job`: data, loss, the job;
* :mod:`~graphopt.distributed.launch`, :mod:`~graphopt.distributed.worker`,
  :mod:`~graphopt.distributed.trace`: processes, one rank's loop, what it records;
* :mod:`~graphopt.distributed.trainer`: the whole run (what ``graphopt train`` calls), with
  :mod:`~graphopt.distributed.reference` (``--check``) and :mod:`~graphopt.distributed.timeline`;
* :mod:`~graphopt.distributed.stage_runtime`: forward-only pipelines (``graphopt pipeline``).
"""
