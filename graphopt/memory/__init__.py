"""Memory planning: liveness and peak of a schedule, buffer reuse, and rematerialization.

:mod:`.liveness` and :mod:`.arena` plan any graph; :mod:`.joint` builds and splits the joint
forward+backward graph of a training step; :mod:`.remat` decides what to save and what to
recompute under a budget; :mod:`.step` reads a training step's live and held bytes;
:mod:`.report` and :mod:`.plot` are what users read. Planning a whole step (capture, joint graph,
the remat pass list) runs passes, so it lives above them:
:func:`graphopt.planner.memory.plan_training_memory`.
"""
