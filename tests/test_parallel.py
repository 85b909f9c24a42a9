"""ParallelConfig's derivations and checks; MemoryBudget's forms."""
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graphopt.errors import GraphoptError, SizeError
from graphopt.parallel import MemoryBudget, ParallelConfig


def test_derived_once_from_the_mesh_and_the_schedule():
    cfg = ParallelConfig(dp=2, pp=2, schedule="interleaved", microbatches=4, microbatch_size=3)
    assert cfg.stages_per_rank == 2 and cfg.n_stages == 4 and cfg.world_size == 4
    assert cfg.placement == (0, 1, 0, 1) and cfg.stages_of(1) == [1, 3]
    assert cfg.global_batch == 3 * 4 * 2
    zbv = ParallelConfig(pp=3, schedule="zero-bubble", microbatches=6)
    assert zbv.stages_per_rank == 2 and zbv.placement == (0, 1, 2, 2, 1, 0)
    assert ParallelConfig().world_size == 1 and ParallelConfig().global_batch is None
    assert ParallelConfig(dp=2, tp=2, pp=2, microbatches=2).world_size == 8
    assert "dp 2 x pp 2, interleaved (v=2), 4 micro-batches" == cfg.label()


def test_frozen_and_round_trips_through_a_dict():
    cfg = ParallelConfig(dp=2, pp=4, schedule="gpipe", microbatches=8, dp_wrapper="fsdp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pp = 2
    assert ParallelConfig.from_dict({**cfg.to_dict(), "predicted_step_seconds": 1.0}) == cfg


def test_the_memory_budget_is_a_field_read_once():
    cfg = ParallelConfig(dp=2, pp=2, microbatches=4, memory_budget="0.5")
    assert cfg.memory_budget == MemoryBudget(fraction=0.5) and cfg.recompute == "0.5"
    assert cfg.label().endswith(", memory budget 0.5")
    d = cfg.to_dict()
    assert (d["memory_budget"], d["recompute"], d["tp"]) == (0.5, "0.5", 1)
    assert ParallelConfig.from_dict(d) == cfg
    in_bytes = ParallelConfig(memory_budget=256 * 2**20)
    assert in_bytes.recompute == "256MiB" and in_bytes.to_dict()["memory_budget"] == 256 * 2**20
    assert ParallelConfig().recompute == "none" and ParallelConfig().to_dict()["memory_budget"] is None
    with pytest.raises(SizeError, match="--memory-budget 1.5: a fraction must lie in"):
        ParallelConfig(memory_budget=1.5)


def test_split_batch():
    cfg = ParallelConfig(dp=2, pp=2, microbatches=4)
    assert cfg.split_batch(16) == 2
    with pytest.raises(GraphoptError, match="batch of 1 does not split"):
        cfg.split_batch(1)
    with pytest.raises(GraphoptError, match="multiple of 8"):
        cfg.split_batch(12)


@pytest.mark.parametrize("kwargs,message", [
    ({"pp": 0}, "--pp must be a positive integer"),
    ({"dp": 1.5}, "--dp must be a positive integer"),
    ({"tp": True}, "--tp must be a positive integer"),
    ({"microbatches": 0}, "--microbatches must be a positive integer"),
    ({"microbatch_size": 0}, "--microbatch-size must be a positive integer"),
    ({"schedule": "pipedream"}, "unknown schedule 'pipedream'"),
    ({"schedule": "1f1b", "stages_per_rank": 2}, "one stage per rank"),
    ({"schedule": "zero-bubble", "stages_per_rank": 3}, "exactly 2"),
    ({"schedule": "interleaved", "stages_per_rank": 1}, "at least 2"),
    ({"schedule": "1f1b", "pp": 4, "microbatches": 2}, "--microbatches 4 or more"),
    ({"dp_wrapper": "zero3"}, "--dp-wrapper must be one of ddp, fsdp"),
])
def test_each_bad_value_is_one_line(kwargs, message):
    with pytest.raises(GraphoptError, match=message) as err:
        ParallelConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_runnable_asks_torch():
    ParallelConfig(pp=4, schedule="interleaved", microbatches=8).check_runnable()
    with pytest.raises(GraphoptError, match="multiple of"):
        ParallelConfig(pp=4, schedule="interleaved", microbatches=9).check_runnable()


@settings(max_examples=50, deadline=None)
@given(dp=st.integers(1, 4), tp=st.integers(1, 3), pp=st.integers(1, 4), data=st.data())
def test_position_and_rank_of_are_inverse(dp, tp, pp, data):
    cfg = ParallelConfig(dp=dp, tp=tp, pp=pp, schedule="gpipe")
    rank = data.draw(st.integers(0, cfg.world_size - 1))
    d, p, t = cfg.position(rank)
    assert 0 <= d < dp and 0 <= p < pp and 0 <= t < tp
    assert cfg.rank_of(d, p, t) == rank
    with pytest.raises(GraphoptError, match="outside"):
        cfg.position(cfg.world_size)


@pytest.mark.parametrize("text,fraction,nbytes", [
    ("0.5", 0.5, None), (0.25, 0.25, None), ("1.0", 1.0, None), (1.0, 1.0, None),
    ("256MiB", None, 256 * 2**20), ("2GB", None, 2 * 10**9), ("4096", None, 4096), (4096, None, 4096),
])
def test_memory_budget_forms(text, fraction, nbytes):
    b = MemoryBudget.parse(text)
    assert (b.fraction, b.nbytes) == (fraction, nbytes)
    assert b.is_fraction == (fraction is not None)
    assert MemoryBudget.parse(str(b)) == b and MemoryBudget.parse(b) is b


def test_memory_budget_against_a_baseline():
    assert MemoryBudget.parse("0.5").bytes_of(1000) == 500
    assert MemoryBudget.parse("1KiB").bytes_of(10**6) == 1024
    assert MemoryBudget.parse("0.5").value == 0.5 and MemoryBudget.parse("1KiB").value == 1024
    assert MemoryBudget.optional(None) is None and MemoryBudget.optional("none") is None
    assert MemoryBudget.optional("0.3") == MemoryBudget(fraction=0.3)


@pytest.mark.parametrize("value,message", [
    ("1.5", "fraction must lie in"), ("0", "positive"), ("-3", "negative"), ("abc", "neither"),
    (True, "give a fraction"), (None, "give a fraction"), (1.5, "fraction must lie in"),
    ("512M", "ambiguous"),
])
def test_memory_budget_errors_name_the_option(value, message):
    with pytest.raises(SizeError, match=message) as err:
        MemoryBudget.parse(value, option="--memory-budget")
    assert "--memory-budget" in str(err.value) and "\n" not in str(err.value)


def test_memory_budget_is_one_of_the_two():
    with pytest.raises(SizeError, match="not both or none"):
        MemoryBudget()
    with pytest.raises(SizeError, match="not both or none"):
        MemoryBudget(fraction=0.5, nbytes=10)
    with pytest.raises(SizeError, match=r"\(0, 1\]"):
        MemoryBudget(fraction=0.0)
    with pytest.raises(SizeError, match="positive integer"):
        MemoryBudget(nbytes=-1)
