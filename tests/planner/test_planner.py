"""The parallelism planner: enumeration, stage costs, prediction, memory filter, ranking, the
parallel.json document, the scalability fit and the gradient-sync formulas."""
import math

import pytest
import torch
from torch import nn

from graphopt import schemas
from graphopt.capture import capture
from graphopt.costmodel.collectives import parameter_server_seconds, ring_allreduce_seconds
from graphopt.costmodel.device import LinkSpec
from graphopt.costmodel.node_time import node_seconds
from graphopt.costmodel.optimizer import OPTIMIZER_COST, optimizer_seconds
from graphopt.costmodel.presets import get_device
from graphopt.costmodel.simulate import simulate_step
from graphopt.costmodel.stage_profile import stage_profile
from graphopt.errors import GraphoptError, PlanError
from graphopt.launch import rank_threads
from graphopt.parallel import MemoryBudget, ParallelConfig
from graphopt.planner.model import ModelCosts
from graphopt.planner.predict import (
    NoConfigurationFits,
    enumerate_configs,
    links_of,
    plan_parallel,
    predict,
    to_document,
)
from graphopt.planner.sync_tables import (
    fit_linear_scalability,
    sync_bytes,
    sync_summary,
    sync_table,
)
from graphopt.specs import LoadedModel


class Tiny(nn.Module):
    """Four weight layers, batch 8: small enough to plan in a few seconds."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                    nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 8))

    def forward(self, x):
        return self.layers(x)


def tiny():
    torch.manual_seed(0)
    return Tiny(), (torch.randn(8, 16),)


class Skip(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.l1(x)
        g = self.l2(torch.relu(h))
        return self.l3(g + h)


@pytest.fixture(scope="module")
def costs():
    model, inputs = tiny()
    return ModelCosts(LoadedModel("tiny", model, inputs), "cpu")


# -- enumeration -----------------------------------------------------------------------------------
def test_enumeration_counts_by_hand():
    # N=4, batch 8, 4 weight layers, up to 8 micro-batches:
    # pp 1 (dp 4, 2 samples each): M in {1, 2}, one schedule                       -> 2
    # pp 2 (dp 2, 4 each): M in {1, 2, 4}: gpipe 3, 1f1b (M >= 2) 2, interleaved 3  -> 8
    # pp 4 (dp 1, 8): M in {1, 2, 4, 8}: gpipe 4, 1f1b (M >= 4) 2, interleaved needs 8 stages -> 6
    configs = enumerate_configs(4, 8, 4, max_microbatches=8)
    assert len(configs) == 16
    assert len(set(configs)) == 16
    by_pp = {pp: [c for c in configs if c.pp == pp] for pp in (1, 2, 4)}
    assert [len(by_pp[p]) for p in (1, 2, 4)] == [2, 8, 6]
    assert all(c.schedule == "1f1b" and c.dp == 4 for c in by_pp[1])
    assert all(c.dp * c.pp == 4 and (8 // c.dp) % c.microbatches == 0 for c in configs)
    assert not any(c.schedule == "1f1b" and c.microbatches < c.pp for c in configs)
    # every remat budget doubles the list; one layer allows no pipeline at all
    assert len(enumerate_configs(4, 8, 4, max_microbatches=8, budgets=(None, 0.5))) == 32
    assert {c.pp for c in enumerate_configs(4, 8, 1)} == {1}
    # a batch dp does not divide rules dp out: batch 6 on 4 devices leaves dp 1 and 2
    assert {(c.dp, c.pp) for c in enumerate_configs(4, 6, 8)} == {(1, 4), (2, 2)}


def test_enumeration_follows_torchs_schedule_rules():
    configs = enumerate_configs(2, 840, 8, schedules=("interleaved",), max_microbatches=8)
    # 840 divides by 1..8; ScheduleInterleaved1F1B needs M a multiple of max(1, M // P): 5
    # and 7 are refused
    assert sorted(c.microbatches for c in configs if c.pp == 2) == [1, 2, 3, 4, 6, 8]
    with pytest.raises(PlanError, match="unknown schedule"):
        enumerate_configs(2, 4, 4, schedules=("looped",))


# -- stage costs -----------------------------------------------------------------------------------
def test_stage_profile_counts_relays_weights_and_time():
    g = capture(Skip(), (torch.randn(4, 8),))
    spec = get_device("cpu")
    part = {"linear": 0, "relu": 1, "linear_1": 1, "add": 2, "linear_2": 2}
    part.update({n.name: 0 for n in g.nodes() if n.name not in part})
    prof = stage_profile(g, part, 3, spec)
    h = g["linear"].out_bytes                   # 4 x 8 floats
    # h is made on stage 0 and used on stage 2: it is relayed across both boundaries
    assert prof.boundary_bytes == [h, h + g["linear_1"].out_bytes]
    assert prof.grad_bytes == [(64 + 8) * 4, (64 + 8) * 4, (32 + 4) * 4]
    assert prof.param_tensors == [2, 2, 2]
    total = sum(node_seconds(i, spec) for i in g.nodes() if i.op == "call_function")
    assert sum(prof.fwd_s) == pytest.approx(total)
    # stage 1 keeps relu and linear_1 for its backward and holds the h it received
    assert prof.act_bytes[1] == g["relu"].out_bytes + g["linear_1"].out_bytes + h
    assert all(b > 0 for b in prof.bwd_s)
    with pytest.raises(PlanError, match="no stage"):
        stage_profile(g, {"linear": 0}, 3, spec)


def test_optimizer_seconds_formula():
    g = capture(Skip(), (torch.randn(4, 8),))
    spec = get_device("cpu")
    prof = stage_profile(g, {n.name: 0 for n in g.nodes()}, 1, spec)
    ops, per_byte = OPTIMIZER_COST["adamw"]
    want = 6 * ops * spec.launch_seconds + per_byte * prof.grad_bytes[0] / spec.bandwidth
    assert optimizer_seconds(prof, [0], spec, "adamw") == pytest.approx(want)


# -- prediction ------------------------------------------------------------------------------------
def test_single_device_prediction_is_the_sum_of_the_step(costs):
    c = predict(costs, ParallelConfig(dp=1, pp=1, schedule="1f1b", microbatches=2))
    prof = costs.profile(1, 4)
    opt = optimizer_seconds(prof, [0], costs.spec, "sgd")
    assert c.predicted_step_seconds == pytest.approx(2 * (prof.fwd_s[0] + prof.bwd_s[0]) + opt)
    # SGD: weights and gradients, no state; one micro-batch's activations in flight under 1F1B
    assert c.memory_per_device_bytes == 2 * prof.grad_bytes[0] + prof.buffer_bytes[0] + \
        prof.act_bytes[0]


def test_data_parallel_prediction_adds_the_ring_all_reduce(costs):
    c = predict(costs, ParallelConfig(dp=2, pp=1, schedule="1f1b", microbatches=1))
    prof = costs.profile(1, 4)
    _, ring = links_of(costs)
    grads = prof.grad_bytes[0]
    assert grads < 1 << 20                     # one DDP bucket
    assert c.detail["allreduce_seconds"] == pytest.approx(ring_allreduce_seconds(grads, 2, ring))
    opt = optimizer_seconds(prof, [0], costs.spec, "sgd")
    # one bucket, ready when the backward ends: nothing left to overlap it with
    assert c.predicted_step_seconds == pytest.approx(prof.fwd_s[0] + prof.bwd_s[0] +
                                                     c.detail["allreduce_seconds"] + opt)
    # weights, gradients and DDP's bucket copy of them; one micro-batch of 4 in flight
    assert c.memory_per_device_bytes == 3 * grads + prof.buffer_bytes[0] + prof.act_bytes[0]


def test_pipeline_prediction_matches_the_simulator(costs):
    cfg = ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=4)
    c = predict(costs, cfg)
    prof = costs.profile(2, 2)
    p2p, _ = links_of(costs)
    est = simulate_step(prof.fwd_s, prof.bwd_s, prof.boundary_bytes, p2p, "gpipe", 4,
                        param_bytes_per_stage=prof.grad_bytes, act_bytes_per_stage=prof.act_bytes,
                        optimizer="sgd")
    opt = [optimizer_seconds(prof, [s], costs.spec, "sgd") for s in (0, 1)]
    ends = [evs[-1].end for evs in est.events]
    assert c.predicted_step_seconds == pytest.approx(max(e + o for e, o in zip(ends, opt)))
    # GPipe holds all 4 micro-batches' activations on each stage
    assert c.detail["memory_per_rank_bytes"][0] == 2 * prof.grad_bytes[0] + \
        prof.buffer_bytes[0] + 4 * prof.act_bytes[0]


def test_engine_overhead_adds_per_action_step_and_message_costs(costs):
    from graphopt.planner.engine import EngineOverhead
    single = ParallelConfig(dp=2, pp=1, schedule="1f1b", microbatches=2)
    piped = ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=1)
    before = [predict(costs, c).predicted_step_seconds for c in (single, piped)]
    costs.engines[2] = EngineOverhead(world=2, action_s=1e-3, step_s=5e-3, transfer_s=0.0)
    try:
        after = [predict(costs, c).predicted_step_seconds for c in (single, piped)]
        # 2 micro-batches x (forward + backward) actions on the one stage, plus the step
        assert after[0] - before[0] == pytest.approx(4e-3 + 5e-3, rel=1e-6, abs=1e-9)
        # one micro-batch through 2 stages: 4 actions in a row, plus the step; the message
        # latency is now 0 instead of the link's
        p2p, _ = links_of(costs)
        boundary = costs.profile(2, 8).boundary_bytes[0]
        link_part = 2 * (p2p.alpha + boundary / p2p.beta) - 2 * boundary / p2p.beta
        assert after[1] - before[1] == pytest.approx(4e-3 + 5e-3 - link_part, rel=1e-6)
    finally:
        del costs.engines[2]


def test_shared_cores_speed_up_ranks_a_bubble_leaves_alone(costs, monkeypatch):
    from graphopt.costmodel.device import DeviceSpec
    from graphopt.costmodel.presets import DEVICES
    from graphopt.planner.engine import EngineOverhead
    # a slow device, so that compute, not the link, fills the timeline
    monkeypatch.setitem(DEVICES, "slow test cpu", DeviceSpec("slow", {"float32": 1e9},
                                                            vector_flops=1e9, bandwidth=1e9,
                                                            launch_seconds=1e-5))
    costs = ModelCosts(costs.loaded, "slow test cpu", captures=costs)
    piped = ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=1)
    dp_only = ParallelConfig(dp=2, pp=1, schedule="1f1b", microbatches=1)

    def with_share(share):
        costs.engines[2] = EngineOverhead(world=2, action_s=0.0, step_s=0.0, transfer_s=0.0,
                                          share=share)
        try:
            return [predict(costs, c) for c in (piped, dp_only)]
        finally:
            del costs.engines[2]
    alone, free, capped = with_share(1.0), with_share(100.0), with_share(1.5)
    # one micro-batch through 2 stages: a rank computes while the other waits, so it runs as
    # many times faster as the timeline leaves ranks idle (processor sharing) ...
    factor = free[0].detail["engine"]["compute_time_factor"]
    assert factor == pytest.approx(1.0 - free[0].detail["bubble"], rel=1e-2)
    assert 0.45 < factor < 0.55
    assert free[0].predicted_step_seconds < 0.6 * alone[0].predicted_step_seconds
    # ... but never more than the measured share
    assert capped[0].detail["engine"]["compute_time_factor"] == pytest.approx(1 / 1.5)
    # data parallel keeps both ranks busy: no speed-up
    assert free[1].detail["engine"]["compute_time_factor"] == 1.0
    assert free[1].predicted_step_seconds == pytest.approx(alone[1].predicted_step_seconds)


def test_remat_budget_trades_memory_for_time(costs):
    base = predict(costs, ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=4))
    remat = predict(costs, ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=4,
                                          memory_budget=0.75))
    assert remat.config.memory_budget == MemoryBudget(fraction=0.75)
    assert remat.config.recompute == "0.75" and base.config.recompute == "none"
    effect = costs.remat(0.75)
    assert effect is not None and 0 <= effect.kept <= 0.75 + 1e-9 and effect.recompute > 0
    assert remat.memory_per_device_bytes < base.memory_per_device_bytes
    assert remat.predicted_step_seconds > base.predicted_step_seconds
    # below what the remat planner can reach, the budget is left out with a note
    assert costs.remat(0.1) is None
    assert any("memory budget 0.1 left out" in n for n in costs.notes)
    with pytest.raises(PlanError, match="no remat plan"):
        predict(costs, ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=4,
                                      memory_budget=0.1))


# -- memory filter, ranking, document --------------------------------------------------------------
def test_memory_filter_and_ranking(costs):
    every = plan_parallel(costs, 4, 1 << 40, max_microbatches=4)
    assert not every.rejected
    mems = sorted(c.memory_per_device_bytes for c in every.ranked)
    cap = mems[len(mems) // 2]
    half = plan_parallel(costs, 4, cap, max_microbatches=4)
    assert half.ranked and half.rejected
    assert all(c.memory_per_device_bytes <= cap for c in half.ranked)
    assert all(c.memory_per_device_bytes > cap for c in half.rejected)
    times = [c.predicted_step_seconds for c in half.ranked]
    assert times == sorted(times)
    assert len(half.ranked) + len(half.rejected) == len(every.ranked)
    again = plan_parallel(costs, 4, cap, max_microbatches=4)
    assert [c.config for c in again.ranked] == [c.config for c in half.ranked]


def test_no_configuration_fits_names_the_least_memory(costs):
    every = plan_parallel(costs, 2, 1 << 40, max_microbatches=4)
    least = min(c.memory_per_device_bytes for c in every.ranked)
    with pytest.raises(NoConfigurationFits, match=f"least memory per device that works is "
                       f"{least:,} bytes"):
        plan_parallel(costs, 2, least - 1, max_microbatches=4)
    assert plan_parallel(costs, 2, least, max_microbatches=4).chosen.memory_per_device_bytes \
        == least


def test_parallel_json_validates_against_the_schema(costs):
    result = plan_parallel(costs, 2, 1 << 40, max_microbatches=4, budgets=(None, 0.75))
    doc = to_document(result, model="tiny", device={"key": "cpu"})
    schemas.validate(doc)
    assert doc["chosen"] == {k: v for k, v in doc["candidates"][0].items() if k != "rank"}
    assert {c["memory_budget"] for c in doc["candidates"]} == {None, 0.75}
    assert all(c["dp"] * c["pp"] == 2 for c in doc["candidates"])
    # the contract's field names, with honest values; each entry reads back as the one type
    for c in doc["candidates"]:
        assert c["tp"] == 1 and c["dp_wrapper"] == "ddp"
        assert c["recompute"] == ("none" if c["memory_budget"] is None else "0.75")
        assert c["microbatch_size"] * c["microbatches"] * c["dp"] == costs.batch
    chosen = ParallelConfig.from_dict(doc["chosen"])
    assert chosen == result.chosen.config and chosen.to_dict()["recompute"] == \
        doc["chosen"]["recompute"]


def test_the_planner_enumerates_the_one_configuration_type():
    configs = enumerate_configs(4, 8, 8, schedules=("1f1b", "interleaved", "zero-bubble"),
                                max_microbatches=4, budgets=(None, 0.5))
    assert all(isinstance(c, ParallelConfig) for c in configs)
    assert all(c.world_size == 4 and c.microbatch_size * c.microbatches * c.dp == 8
               for c in configs)
    # stages per rank and placement come from the schedule registry, through the config
    zb = [c for c in configs if c.schedule == "zero-bubble"]
    assert zb and all(c.n_stages == 2 * c.pp and c.placement[-1] == 0 for c in zb)
    # zero-bubble with dp > 1 runs (the runtime averages its gradients itself)
    assert any(c.dp > 1 for c in zb)
    assert {c.memory_budget for c in configs} == {None, MemoryBudget(fraction=0.5)}


# -- what-if ---------------------------------------------------------------------------------------
def test_scalability_fit_recovers_synthetic_lines():
    exact = fit_linear_scalability([1, 2, 4, 8], [100.0, 180.0, 340.0, 660.0])
    assert exact["c1"] == pytest.approx(100.0) and exact["k"] == pytest.approx(80.0)
    assert exact["efficiency"] == pytest.approx(0.8) and exact["rel_err_max"] < 1e-12
    gen = torch.Generator().manual_seed(0)
    ns = [1, 2, 3, 4, 6, 8]
    noisy = [(50.0 + 20.0 * (n - 1)) * (1 + 0.02 * float(torch.randn(1, generator=gen)))
             for n in ns]
    fit = fit_linear_scalability(ns, noisy)
    assert fit["k"] == pytest.approx(20.0, rel=0.1) and fit["rel_err_max"] < 0.1
    flat = fit_linear_scalability([1, 2, 4], [10.0, 10.0, 10.0])
    assert flat["k"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(GraphoptError, match="two or more"):
        fit_linear_scalability([2, 2], [1.0, 2.0])
    with pytest.raises(GraphoptError, match="positive"):
        fit_linear_scalability([1, 2], [1.0, math.nan])


def test_sync_table_follows_the_closed_forms():
    link = LinkSpec("l", alpha=1e-4, beta=1e9)        # beta in bytes per second
    rows = sync_table(8 << 20, {"l": link}, ns=(2, 4, 16), scales=(1.0,))
    beta = 1.0 / link.beta
    for r in rows:
        n, m = r["n"], r["model_bytes"]
        assert r["ring_s"] == pytest.approx(2 * (n - 1) * (link.alpha + m / n * beta))
        assert r["ps_s"] == pytest.approx(2 * (n * link.alpha + n * m * beta))
        assert r["ps_sharded_s"] == pytest.approx(2 * (n * link.alpha + m * beta))
        assert r["ring_worker_bytes"] == pytest.approx(4 * (n - 1) * m / n)
        assert r["ps_worker_bytes"] == 2 * m and r["ps_server_bytes"] == 2 * n * m
        assert r["ring_s"] < r["ps_sharded_s"] < r["ps_s"]
    assert rows[0]["ps_s"] == pytest.approx(parameter_server_seconds(8 << 20, 2, link))
    summary = sync_summary(rows)
    assert len(summary) == 1 and summary[0]["ring_always_faster"]
    # 8 MiB on 1 GB/s: the bytes dominate, so one server's time over the ring's grows like n
    assert summary[0]["ps_over_ring_at_n_max"] > summary[0]["ps_over_ring_at_n_min"] > 1.9
    assert sync_bytes("ring", 100, 1) == {"worker": 0.0, "busiest": 0.0}
    with pytest.raises(GraphoptError, match="unknown"):
        sync_bytes("tree", 1, 2)


def test_a_timed_step_scales_the_stages_by_measured_over_predicted(costs):
    """With a calibrated CPU spec the planner times the model's own step (alone, at the rank's
    thread count) and scales every stage's forward and backward by measured / predicted."""
    from graphopt.planner import profile as plan_profile
    assert costs.time_steps is False          # a preset: nothing is timed
    assert costs.step_scale(4, 1) == (1.0, 1.0)
    fwd, bwd = plan_profile.time_step(costs.prepared(4), threads=1)
    assert 0 < fwd < 1 and 0 < bwd < 1
    model, inputs = tiny()
    timed = ModelCosts(LoadedModel("tiny", model, inputs), "cpu", time_steps=True)
    prof = timed.profile(2, 4)
    fs, bs = timed.step_scale(4, 1)
    assert fs > 0 and bs > 0 and math.isfinite(fs) and math.isfinite(bs)
    c = predict(timed, ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=2))
    factors = c.detail["timed_step_factors"]
    assert factors["forward"] == fs and factors["backward"] == bs
    # One stage, no engine: the step is the scaled forward and backward of both micro-batches
    # (timed with the threads one process on this host gets).
    one = predict(timed, ParallelConfig(dp=1, pp=1, schedule="1f1b", microbatches=2))
    fs, bs = timed.step_scale(4, rank_threads(1))
    p1 = timed.profile(1, 4)
    opt = optimizer_seconds(p1, [0], timed.spec, "sgd")
    assert one.predicted_step_seconds == pytest.approx(
        2 * (fs * p1.fwd_s[0] + bs * p1.bwd_s[0]) + opt)
    assert sum(prof.fwd_s) == pytest.approx(sum(p1.fwd_s), rel=0.05)


class TiedEnds(nn.Module):
    """An embedding whose weight is also the output layer's, as in GPT-2's LM head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 16)
        self.body = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())

    def forward(self, ids):
        return self.body(self.emb(ids)) @ self.emb.weight.t()


def test_tied_weights_across_ranks_pay_one_all_reduce_before_the_optimizer():
    from graphopt.costmodel.collectives import tied_sync_seconds
    torch.manual_seed(0)
    costs = ModelCosts(LoadedModel("tied", TiedEnds(), (torch.randint(0, 64, (8, 4)),)), "cpu")
    one = costs.profile(1, 8)
    assert one.shared == []                      # one stage holds both uses
    two = costs.profile(2, 8)
    assert two.shared == [(64 * 16 * 4, (0, 1))]
    _, ring = links_of(costs)
    c = predict(costs, ParallelConfig(dp=1, pp=2, schedule="gpipe", microbatches=2))
    want = ring_allreduce_seconds(64 * 16 * 4, 2, ring)
    assert c.detail["tied_sync_seconds"] == pytest.approx(want) and want > 0
    # Both stages on one rank (no second rank holds a copy): nothing to sum across ranks.
    assert tied_sync_seconds(two, [0, 0], ring) == 0.0


def test_step_timings_are_cached_per_machine_so_plans_repeat(tmp_path, monkeypatch, costs):
    from graphopt.planner import profile as plan_profile
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path))
    prepared = costs.prepared(4)
    first = plan_profile.cached_step(prepared, 1)
    path = plan_profile.cache_file(prepared, 1)
    assert path.exists() and path.is_relative_to(tmp_path)
    monkeypatch.setattr(plan_profile, "time_step", lambda *a, **k: pytest.fail("re-measured"))
    assert plan_profile.cached_step(prepared, 1) == first
    assert plan_profile.cache_file(prepared, 2) != path     # another thread count, another key
    # timed again for another calibration: the factors divide one by the other
    assert plan_profile.cache_file(prepared, 1, spec=get_device("cpu")) != path
