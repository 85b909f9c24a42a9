"""The planner: which parallel configuration to run, and the training job that runs it.

Read in this order:

* :mod:`~graphopt.planner.predict`: every data x pipeline configuration of N devices enumerated,
  priced by :func:`graphopt.costmodel.step.predict_step` and ranked;
  :mod:`~graphopt.planner.model`: a model's captures, stage plans and profiles per configuration;
* :mod:`~graphopt.planner.engine`, :mod:`~graphopt.planner.profile`: probes of this machine (the
  engine's own costs, the model's timed step); :mod:`~graphopt.planner.measure`: training the
  best on this host; :mod:`~graphopt.planner.whatif`, :mod:`~graphopt.planner.sync_tables`: the
  what-if views;
* :mod:`~graphopt.planner.session`: what ``graphopt plan`` runs;
  :mod:`~graphopt.planner.config_file`: ``parallel.json`` read back for ``graphopt train``;
* :mod:`~graphopt.planner.training`: the training job planned and priced (capture, partition,
  memory check, job, estimate), what ``graphopt train`` runs before any process starts;
* :mod:`~graphopt.planner.memory`: a training step's memory planned (capture, joint graph, the
  remat pass list), what ``graphopt remat --train`` runs.

A configuration is a :class:`graphopt.parallel.ParallelConfig` throughout: the planner
enumerates and prices them, ``parallel.json`` stores them, ``graphopt train`` wraps one.
"""
