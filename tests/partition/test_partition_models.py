"""Pipeline plans of transformers models, checked from partition.json alone.

Everything asserted here is recomputed by this file from the ``nodes`` and ``edges`` of the JSON
the CLI wrote, never read from its summary: communication volume, the time imbalance (the
stages balance their predicted seconds; the FLOPs imbalance beside it), acyclicity and stage
order, the stage times of the alpha-beta model, and the equal-FLOPs contiguous baseline
(cut the node list after the node at which the running FLOPs first reach s/k of the total; the
node list is the partitioned graph's, after ``--split-ops`` cut its coarsest nodes where asked).
The baseline is the hand-made split of the model as written: the plan of ``--split off`` gives
that graph's nodes and edges. The reduced configs run by default; the default (full-size)
configs are the slow variant, and there the partitioning goals are asserted.
"""
import json
import statistics

import pytest

from graphopt.cli import cmd_partition
from graphopt.cli.main import main

pytest.importorskip("transformers")

SMALL = {
    "hf:GPT2LMHeadModel": ["n_layer=4", "n_embd=128", "n_head=4", "vocab_size=1000"],
    "hf:BertModel": ["num_hidden_layers=4", "hidden_size=128", "num_attention_heads=4",
                     "intermediate_size=512", "vocab_size=1000"],
    "hf:ViTModel": ["num_hidden_layers=4", "hidden_size=128", "num_attention_heads=4",
                    "intermediate_size=512", "patch_size=16"],
    "hf:ResNetModel": ["embedding_size=32", "hidden_sizes=[64,128,256,512]",
                       "depths=[2,2,2,2]"],
}


# -- the contract's numbers, from the JSON alone ---------------------------------------------------
def comm_bytes(nodes, edges, part):
    by = {n["name"]: n for n in nodes}
    dests: dict[str, set] = {}
    for e in edges:
        if not by[e["src"]]["is_param"] and part[e["dst"]] != part[e["src"]]:
            dests.setdefault(e["src"], set()).add(part[e["dst"]])
    return sum(by[u]["out_bytes"] * len(d) for u, d in dests.items())


def part_flops(nodes, part, k):
    out = [0] * k
    for n in nodes:
        if not n["is_param"]:
            out[part[n["name"]]] += n["flops"]
    return out


def part_time(nodes, part, k):
    """Each part's predicted compute seconds (what the imbalance tolerance bounds)."""
    out = [0.0] * k
    for n in nodes:
        if not n["is_param"]:
            out[part[n["name"]]] += n.get("seconds", 0.0)
    return out


def stage_seconds(data, part):
    """Compute over the part + one alpha-beta receive per (tensor, consuming part)."""
    k, opt = data["k"], data["options"]
    by = {n["name"]: n for n in data["nodes"]}
    secs = [0.0] * k
    for n in data["nodes"]:
        if not n["is_param"]:
            secs[part[n["name"]]] += n["seconds"]
    recv = {(e["src"], part[e["dst"]]) for e in data["edges"]
            if not by[e["src"]]["is_param"] and part[e["dst"]] != part[e["src"]]}
    for src, q in recv:
        secs[q] += opt["alpha"] + by[src]["out_bytes"] / opt["beta"]
    return secs


def equal_flops_parts(nodes, k):
    """Stage s - 1 ends right after the node at which the running FLOPs first reach s/k of the
    total, one boundary per share; each stage holds at least one node (where one node ends
    several shares, the later boundaries move right, one node each)."""
    moving = [n for n in nodes if not n["is_param"]]
    total = sum(n["flops"] for n in moving)
    prefix, run = [], 0
    for n in moving:
        run += n["flops"]
        prefix.append(run)
    cuts, prev = [], 0
    for s in range(1, k):
        c = next(i for i, x in enumerate(prefix) if x >= total * s / k) + 1
        prev = min(max(c, prev + 1), len(moving) - (k - s))
        cuts.append(prev)
    part, s = {}, 0
    for i, n in enumerate(moving):
        while s < len(cuts) and i >= cuts[s]:
            s += 1
        part[n["name"]] = s
    return part


def with_params(data, part):
    """Parameters take the lowest part among their consumers (they are never sent)."""
    users: dict[str, list] = {}
    for e in data["edges"]:
        users.setdefault(e["src"], []).append(part.get(e["dst"]))
    out = dict(part)
    for n in data["nodes"]:
        if n["is_param"]:
            out[n["name"]] = min((p for p in users.get(n["name"], []) if p is not None), default=0)
    return out


def check_plan(path, as_written=None):
    """Recompute a plan's numbers from its JSON; the baseline comes from ``as_written`` (the
    JSON of the same model partitioned with ``--split off``), or from the plan's own graph."""
    data = json.loads(path.read_text())
    k, nodes, edges = data["k"], data["nodes"], data["edges"]
    part = {n["name"]: n["part"] for n in nodes}
    # every node once, parts in range
    assert len(part) == len(nodes) and all(0 <= p < k for p in part.values())
    # acyclic and stage-ordered: data flows only to higher parts
    by = {n["name"]: n for n in nodes}
    assert all(part[e["src"]] <= part[e["dst"]] for e in edges if not by[e["src"]]["is_param"])
    # stages are balanced by predicted time: the imbalance the tolerance bounds is over the
    # nodes' seconds (the summary's time_imbalance); FLOPs are reported beside it
    flops = part_time(nodes, part, k)
    avg = sum(flops) / k
    imbalance = max(flops) / avg - 1
    assert abs(imbalance - data["summary"]["time_imbalance"]) <= 1e-6
    assert data["summary"]["imbalance"] == pytest.approx(
        max(part_flops(nodes, part, k)) / (sum(part_flops(nodes, part, k)) / k) - 1)
    ref = json.loads(as_written.read_text()) if as_written else data
    base = with_params(ref, equal_flops_parts(ref["nodes"], k))
    base_comm = comm_bytes(ref["nodes"], ref["edges"], base)
    base_imbalance = max(part_time(ref["nodes"], base, k)) / \
        (sum(part_time(ref["nodes"], base, k)) / k) - 1
    base_seconds = max(stage_seconds(ref, base))
    ours = comm_bytes(nodes, edges, part)
    assert ours == data["summary"]["comm_bytes"]
    # the balance the plan promises: its tolerance, or that tolerance around a node that alone
    # outweighs total/k
    eps = data["options"]["imbalance_used"]
    heaviest = max((n for n in nodes if not n["is_param"]), key=lambda n: n["seconds"])
    allowed = max(eps, (1 + eps) * heaviest["seconds"] / avg - 1)
    guarded = any("its slowest stage is faster" in n for n in data["notes"])
    assert imbalance <= allowed + 1e-9 or guarded
    seconds = max(stage_seconds(data, part))
    if ours > base_comm:
        # more bytes than the hand-made split only to keep the balance asked for (or past the
        # time threshold), and the plan says so with both numbers
        note = next(n for n in data["notes"] if "more than the equal-FLOPs split" in n)
        assert f"{ours:,} B" in note and f"{base_comm:,} B" in note
    if base_imbalance > allowed + 1e-9 and not guarded:
        # the hand-made split was out of balance: ours keeps the balance the user asked for
        assert imbalance < base_imbalance
    if guarded:
        pass        # a faster plan sending fewer bytes, kept outside the tolerance (noted)
    elif imbalance > 0.03 and heaviest["seconds"] > avg:
        # one node outweighs total/k: its part is the slowest, and the plan says so
        assert flops[part[heaviest["name"]]] == max(flops)
        assert any("alone holds" in note for note in data["notes"])
    elif imbalance > 0.03:
        # only when no plan within 3% exists at this node granularity, and the plan says so
        assert any("node granularity" in note for note in data["notes"])
    return {"ratio": ours / base_comm, "imbalance": imbalance, "seconds": seconds,
            "base_seconds": base_seconds, "giant": heaviest["seconds"] > avg or guarded}


@pytest.fixture(autouse=True)
def capture_once(monkeypatch):
    """Each model is built and captured once per test and partitioned from a copy of its graph:
    the plans are under test here (capture has its own tests), and building and exporting a
    full-size model takes 10-20 s, 24 times in the slow test."""
    cache = {}
    load_and_capture = cmd_partition.load_and_capture

    def cached(args, progress=None, **kw):
        key = (args.model, tuple(args.overrides or ()), args.batch, args.seq, args.image_size,
               args.seed, args.capture, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = load_and_capture(args, progress, **kw)
        loaded, graph = cache[key]
        return loaded, graph.copy()

    monkeypatch.setattr(cmd_partition, "load_and_capture", cached)


def _run(tmp_path, spec, k, overrides, split="auto"):
    out = tmp_path / f"{spec.split(':')[1]}-{k}-{split}"
    argv = ["partition", spec, "-k", str(k), "-o", str(out), "-q", "--format", "json",
            "--split", split]
    for o in overrides:
        argv += ["--set", o]
    if overrides and spec in ("hf:ViTModel", "hf:ResNetModel"):
        argv += ["--image-size", "64"]
    assert main(argv) == 0
    return out / "partition.json"


def _both(tmp_path, spec, k, overrides):
    """Check the plan as written and the default plan against the hand-made split."""
    whole = _run(tmp_path, spec, k, overrides, split="off")
    check_plan(whole)
    return check_plan(_run(tmp_path, spec, k, overrides), as_written=whole)


@pytest.mark.parametrize("spec", sorted(SMALL))
def test_small_configs(tmp_path, spec):
    for k in (2, 4):
        r = _both(tmp_path, spec, k, SMALL[spec])
        # cutting nodes where a boundary needs it: within 3% unless one node outweighs 1/k
        assert r["imbalance"] <= 0.03 + 1e-9 or r["giant"]


@pytest.mark.slow
def test_default_configs_meet_the_partitioning_goals(tmp_path):
    """GPT-2, BERT, ViT and ResNet at k = 2, 4, 8 (default configs): every plan acyclic and
    within 3% (or one node's part, said so), more bytes than the hand-made split only with a
    note saying why, and at most half its bytes at the median."""
    runs = [_both(tmp_path, spec, k, []) for spec in sorted(SMALL) for k in (2, 4, 8)]
    assert all(r["imbalance"] <= 0.03 + 1e-9 or r["giant"] for r in runs)
    assert statistics.median(r["ratio"] for r in runs) <= 0.5
