"""Buffer reuse: one arena, an offset for every buffer, buffers alive together never overlap.

Greedy by size with best-fit gaps (the strategy of TFLite's and PyTorch's static memory
planners): buffers are placed largest first; each goes into the smallest free gap, among the
buffers already placed that are alive at the same time, that holds it, or on top of them. Sizes
are rounded up to ``alignment`` bytes.

Guarantees: two buffers whose lifetimes intersect get disjoint ``[offset, offset + size)``
ranges; ``size >= lower_bound``, where the lower bound is the most bytes alive at any one step.
Complexity: O(n^2) in the worst case (n buffers), vectorized with numpy; sorting O(n log n).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from graphopt.memory.liveness import Buffer, profile

__all__ = ["Arena", "plan_arena"]


@dataclass
class Arena:
    """An arena plan: ``offsets[name]`` for every buffer, the arena ``size`` and its lower bound.

    Example:
        >>> arena = plan_arena(analyze(graph).buffers)
        >>> arena.size, arena.lower_bound, arena.offsets["addmm"]
    """

    size: int
    lower_bound: int
    offsets: dict[str, int] = field(default_factory=dict)
    alignment: int = 64

    @property
    def overhead(self) -> float:
        """Fraction above the lower bound (0.0 means optimal)."""
        return self.size / self.lower_bound - 1.0 if self.lower_bound else 0.0

    def to_dict(self) -> dict:
        return {"bytes": self.size, "lower_bound": self.lower_bound,
                "alignment": self.alignment, "buffers": len(self.offsets)}


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def plan_arena(buffers: list[Buffer], alignment: int = 64) -> Arena:
    """Assign arena offsets to buffers; see the module docstring for the strategy.

    Example:
        >>> bufs = [Buffer("a", 100, 0, 1), Buffer("b", 100, 1, 2), Buffer("c", 100, 2, 3)]
        >>> plan_arena(bufs).size           # a and c share memory; b sits beside both
        256
    """
    if not buffers:
        return Arena(0, 0, {}, alignment)
    n = len(buffers)
    sizes = np.array([_align(b.size, alignment) for b in buffers], dtype=np.int64)
    starts = np.array([b.start for b in buffers], dtype=np.int64)
    ends = np.array([b.end for b in buffers], dtype=np.int64)
    steps = int(ends.max()) + 1
    aligned = [Buffer(b.name, int(s), b.start, b.end) for b, s in zip(buffers, sizes)]
    lower = int(profile(aligned, steps).max())

    order = sorted(range(n), key=lambda i: (-sizes[i], starts[i], buffers[i].name))
    offsets = np.full(n, -1, dtype=np.int64)
    placed = np.zeros(n, dtype=bool)
    top = 0
    for i in order:
        mask = placed & (starts <= ends[i]) & (ends >= starts[i])
        idx = np.nonzero(mask)[0]
        offset = _best_fit(offsets[idx], sizes[idx], int(sizes[i]))
        offsets[i] = offset
        placed[i] = True
        top = max(top, offset + int(sizes[i]))
    return Arena(top, lower, {b.name: int(o) for b, o in zip(buffers, offsets)}, alignment)


def _best_fit(offs: np.ndarray, sizes: np.ndarray, need: int) -> int:
    """The start of the smallest gap between the given ranges that holds ``need`` bytes (the
    lowest such gap on ties), or the top of the ranges when none does."""
    if len(offs) == 0:
        return 0
    order = np.argsort(offs, kind="stable")
    starts = offs[order]
    tops = np.maximum.accumulate(starts + sizes[order])
    below = np.concatenate(([0], tops[:-1]))  # where free space before each range begins
    gaps = starts - below
    fits = gaps >= need
    if not fits.any():
        return int(tops[-1])
    return int(below[np.argmin(np.where(fits, gaps, np.iinfo(np.int64).max))])
