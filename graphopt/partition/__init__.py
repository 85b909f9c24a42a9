"""Partitioning: METIS k-way cuts, stage-ordered pipeline plans, node cuts, and the stages they run as.

Read in this order: :mod:`.costgraph` (the arrays every algorithm works on), :mod:`.metis`,
:mod:`.acyclic`, :mod:`.refine`, :mod:`.dp`, :mod:`.milp` (exact placement), then :mod:`.search`,
which runs them side by side and keeps the plan :mod:`.choose`'s one ranking rule prefers;
:mod:`.floor` is the yardstick (the least bytes any stage-ordered plan can send); :mod:`.plan` is
``partition.json`` and :mod:`.stages` turns a plan into modules. :mod:`.rowwise` and
:mod:`.cut_plan` decide where a boundary may cut inside nodes (a node *cut* into *blocks*).
"""
