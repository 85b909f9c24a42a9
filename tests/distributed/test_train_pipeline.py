"""Pipeline training on gloo matches single-process training: losses and final weights, 2 steps.

Every configuration of a world size runs in one launch (one process start-up), against the
eager model trained in this process on the same micro-batches (relative error < 1e-5).
"""
import copy

import pytest
import torch
from train_models import check, imbalance_for, job_for, plan_from_cuts, prepared

from graphopt.distributed.trainer import run_jobs

pytestmark = pytest.mark.slow
MODELS = ("gpt2", "bert", "vit", "resnet", "resmlp")


def _launch(specs, extra=None):
    """``specs``: key -> (model, job options); ``extra``: key -> a callable ``built -> (job, info,
    ref)`` made from the others. All run in one launch; returns key -> (job, info, run, ref)."""
    preps, built = {}, {}
    for key, (name, opts) in specs.items():
        if name not in preps:
            preps[name] = prepared(name)
        opts = dict(opts)
        cfg = opts["config"]
        opts.setdefault("imbalance", imbalance_for(name, cfg["pp"] * cfg.get("virtual", 1)))
        built[key] = job_for(preps[name], **opts)
    for key, make in (extra or {}).items():
        built[key] = make(built, preps)
    runs = run_jobs([b[0] for b in built.values()])
    return {key: (job, info, run, ref) for (key, (job, info, ref)), run
            in zip(built.items(), runs)}


def _untied(built, preps):
    """A negative control: the tied GPT-2 weights without their gradient sum must disagree."""
    job, info, ref = built["gpt2-1f1b"]
    untied = copy.copy(job)
    untied.tied = []
    return untied, info, ref


def _mixed(built, preps):
    """Cut after the tanh: the mask (bool) and ids % 4 (int64) go to stage 1 with it."""
    prep = prepared("mixed")
    plan = plan_from_cuts(prep.graph, 2, ["tanh"], "mixed")
    return job_for(prep, plan=plan, config={"pp": 2, "schedule": "1f1b", "microbatches": 4})


def _skip(built, preps, lowering="relay", schedule="1f1b"):
    """Stage 1 holds only block 1's LayerNorm: block 0's output feeds stages 1 and 2."""
    prep = preps["resmlp"]
    plan = plan_from_cuts(prep.graph, 3, ["add", "layer_norm_1"], "resmlp")
    return job_for(prep, plan=plan, config={"pp": 3, "schedule": schedule, "microbatches": 4,
                                            "lowering": lowering})


def _skip_direct(built, preps):
    return _skip(built, preps, "direct", "gpipe")


def _initial(job):
    return {(p.index, n): t.detach().clone() for p in job.lowered.programs
            for n, t in p.module.named_parameters()}


@pytest.fixture(scope="module")
def two_ranks():
    specs = {f"{m}-{s}": (m, {"config": {"pp": 2, "schedule": s, "microbatches": 4}})
             for m in MODELS for s in ("gpipe", "1f1b")}
    specs["resmlp-interleaved"] = ("resmlp", {"config": {"pp": 2, "schedule": "interleaved",
                                                         "virtual": 2, "microbatches": 4}})
    specs["resmlp-zero-bubble"] = ("resmlp", {"config": {"pp": 2, "schedule": "zero-bubble",
                                                         "virtual": 2, "microbatches": 4}})
    specs["resmlp-dp2"] = ("resmlp", {"config": {"pp": 1, "dp": 2, "schedule": "gpipe",
                                                 "microbatches": 2}})
    return _launch(specs, {"gpt2-untied": _untied, "mixed-1f1b": _mixed})


@pytest.fixture(scope="module")
def three_ranks():
    specs = {f"{m}-{s}": (m, {"config": {"pp": 3, "schedule": s, "microbatches": 4}})
             for m in MODELS for s in ("gpipe", "1f1b")}
    # the direct lowering: stage 0 sends GPT-2's labels straight to stage 2
    specs["gpt2-gpipe-direct"] = ("gpt2", {"config": {"pp": 3, "schedule": "gpipe",
                                                      "microbatches": 4, "lowering": "direct"}})
    return _launch(specs, {"skip-1f1b": _skip, "skip-gpipe-direct": _skip_direct})


@pytest.mark.parametrize("key", [f"{m}-{s}" for m in MODELS for s in ("gpipe", "1f1b")]
                         + ["resmlp-interleaved", "resmlp-zero-bubble", "mixed-1f1b", "resmlp-dp2"])
def test_two_stages_match_single_process(two_ranks, key):
    job, info, run, ref = two_ranks[key]
    result = check(run, ref)
    assert result["ok"], result
    assert len(run.losses) == 2 and all(torch.isfinite(torch.tensor(run.losses)))
    first = _initial(job)
    moved = max(float((run.params[s][n] - t).abs().max()) for (s, n), t in first.items())
    assert moved > 1e-6          # the weights really trained
    assert run.sent_bytes[run.timed_step] == (info.relay["forward"] + info.relay["backward"]) \
        * job.config.microbatches * job.config.dp
    assert [r["rank"] for r in run.ranks] == list(range(job.config.world_size))


@pytest.mark.parametrize("key", [f"{m}-{s}" for m in MODELS for s in ("gpipe", "1f1b")]
                         + ["skip-1f1b", "skip-gpipe-direct", "gpt2-gpipe-direct"])
def test_three_stages_match_single_process(three_ranks, key):
    job, info, run, ref = three_ranks[key]
    result = check(run, ref)
    assert result["ok"], result
    assert run.sent_bytes[run.timed_step] == \
        (info.relay["forward"] + info.relay["backward"]) * job.config.microbatches


def test_tied_embedding_gradients_are_summed_over_stages(two_ranks):
    job, _, run, ref = two_ranks["gpt2-1f1b"]
    assert job.tied and {s for s, _ in job.tied[0]} == {0, 1}
    assert check(run, ref)["ok"]
    _, _, untied_run, _ = two_ranks["gpt2-untied"]
    bad = check(untied_run, ref)
    assert not bad["ok"] and bad["max_param_rel_err"] > 1e-3


def test_interleaved_places_two_stages_per_rank(two_ranks):
    job, _, run, _ = two_ranks["resmlp-interleaved"]
    assert job.placement == [0, 1, 0, 1] and len(job.lowered) == 4
    zb, _, _, _ = two_ranks["resmlp-zero-bubble"]
    assert zb.placement == [0, 1, 1, 0]
    kinds = {e[0] for events in two_ranks["resmlp-zero-bubble"][2].events.values()
             for e in events}
    assert {"backward-input", "backward-weight"} <= kinds


def test_bool_and_int_tensors_cross_a_stage(two_ranks):
    job, _, _, _ = two_ranks["mixed-1f1b"]
    crossing = job.lowered.programs[1]
    dtypes = {d for name in crossing.carry_in for _, d in crossing.specs[name]}
    assert torch.bool in dtypes and torch.int64 in dtypes


def test_a_stage_feeding_two_later_stages_is_relayed(three_ranks):
    job, info, run, ref = three_ranks["skip-1f1b"]
    p = job.lowered.programs
    assert "add" in p[1].carry_in and "add" in p[2].carry_in and "add" in p[1].carry_out
    # relayed: block 0's output crosses both boundaries, one send each (bytes x hops)
    per = {s: f for s, f, _ in info.relay["per_boundary"]}
    assert per[0] == p[0].wire_bytes(["add"])
    assert per[1] == p[1].wire_bytes(["add"]) + p[1].wire_bytes(["layer_norm_1"])
    assert check(run, ref)["ok"]


def test_the_direct_lowering_sends_each_value_once_per_consumer(three_ranks):
    job, info, _, _ = three_ranks["gpt2-gpipe-direct"]
    p = job.lowered.programs
    assert job.lowered.lowering == "direct"
    made = {v: 0 for v in p[0].carry_in}
    for q in p:
        for v in q.produces:
            made.setdefault(v, q.index)
    for q in p[1:-1]:
        assert set(q.carry_out) <= set(q.produces)           # nothing passes through a stage
    for q in p[1:]:
        for v in q.carry_in:                                  # each comes from where it is made
            assert v in p[made[v]].carry_out and made[v] < q.index
    # the resmlp skip plan: block 0's output goes to stages 1 and 2, one send each; relayed,
    # stage 1 passes it on
    skip = three_ranks["skip-gpipe-direct"][0].lowered.programs
    assert "add" in skip[0].carry_out and "add" in skip[1].carry_in and "add" in skip[2].carry_in
    assert "add" not in skip[1].carry_out
    assert "add" in three_ranks["skip-1f1b"][0].lowered.programs[1].carry_out
