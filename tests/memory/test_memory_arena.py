"""The buffer-reuse arena: buffers alive together never overlap; the arena is at least the
max-live lower bound; best fit reuses the gaps it can."""
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt.memory.arena import plan_arena
from graphopt.memory.liveness import Buffer, profile


def _buffers(draw_list):
    return [Buffer(f"b{i}", size, start, start + length)
            for i, (size, start, length) in enumerate(draw_list)]


BUFFERS = st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 40), st.integers(0, 15)),
                   min_size=0, max_size=60).map(_buffers)


@settings(max_examples=200, deadline=None)
@given(BUFFERS, st.sampled_from([1, 64, 256]))
def test_live_together_never_overlap_and_arena_bounds_hold(buffers, alignment):
    arena = plan_arena(buffers, alignment=alignment)
    assert set(arena.offsets) == {b.name for b in buffers}
    for b in buffers:
        assert arena.offsets[b.name] % alignment == 0
        assert arena.offsets[b.name] + b.size <= arena.size
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.overlaps(b):
                lo_a, lo_b = arena.offsets[a.name], arena.offsets[b.name]
                assert lo_a + a.size <= lo_b or lo_b + b.size <= lo_a, (a, b)
    assert arena.size >= arena.lower_bound
    if buffers:
        aligned = [Buffer(b.name, -(-b.size // alignment) * alignment, b.start, b.end)
                   for b in buffers]
        assert arena.lower_bound == int(profile(aligned, max(b.end for b in buffers) + 1).max())


def test_disjoint_lifetimes_share_memory():
    bufs = [Buffer("a", 100, 0, 1), Buffer("b", 100, 1, 2), Buffer("c", 100, 2, 3)]
    arena = plan_arena(bufs)
    assert arena.size == 256 and arena.lower_bound == 256
    assert arena.offsets["a"] == arena.offsets["c"] == 0
    assert arena.offsets["b"] == 128


def test_best_fit_picks_the_smallest_gap_that_holds_the_buffer():
    import numpy as np

    from graphopt.memory.arena import _best_fit
    offs, sizes = np.array([0, 200, 1000]), np.array([100, 100, 100])
    assert _best_fit(offs, sizes, 50) == 100     # gaps: 100 bytes at 100, 700 at 300
    assert _best_fit(offs, sizes, 150) == 300
    assert _best_fit(offs, sizes, 800) == 1100   # nothing fits: on top


def test_empty():
    arena = plan_arena([])
    assert arena.size == arena.lower_bound == 0 and arena.overhead == 0.0
