"""Partitioning: METIS k-way cuts, stage-ordered pipeline plans, node cuts, and the stages they run as.

Read in this order: :mod:`.costgraph` (the arrays every algorithm works on), :mod:`.metis`,
:mod:`.acyclic`, :mod:`.refine`, :mod:`.dp`, then :mod:`.search`, which runs them side by side and
keeps the best plan; :mod:`.plan` is ``partition.json`` and :mod:`.stages` turns a plan into modules.
:mod:`.rowwise` and :mod:`.split_plan` decide where a boundary may cut inside nodes.
"""
