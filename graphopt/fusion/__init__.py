"""Fusion: which ATen ops a kernel may hold (:mod:`.ops`), the index space a group walks
(:mod:`.domain`), and the plan of kernels (:mod:`.plan`)."""
