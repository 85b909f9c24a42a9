"""Pipelines on real processes: gloo on CPU, outputs equal to the single-process model."""
import torch

import graphopt
from graphopt.distributed.stage_runtime import run_pipeline
from graphopt.partition.stages import split_graph
from graphopt.passes import PassContext, get_pass
from graphopt.specs import load_spec


def test_two_stage_pipeline_on_two_processes_matches_single_process():
    loaded = load_spec("zoo:gpt")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    ctx = PassContext(options={"k": 2})
    get_pass("partition_graph")(graph, ctx)
    stages = ctx.artifacts["partition"].split(graph)
    x = loaded.inputs[0]
    mbs = [(x,)] + [(torch.randint(0, 1024, x.shape),) for _ in range(2)]
    run = run_pipeline(stages, mbs)
    assert run.world_size == 2 and run.backend == "gloo" and run.seconds > 0
    with torch.no_grad():
        for mb, out in zip(mbs, run.outputs):
            want = loaded.model(*mb)
            assert torch.equal(out[0], graph.run(*mb)[0])
            assert float((out[0] - want).abs().max() / want.abs().max()) < 1e-5


def test_skip_transfers_and_tuples_between_three_processes():
    """Stage 0 sends straight to stage 2 (a residual), and a BatchNorm tuple crosses stages."""
    loaded = load_spec("zoo:cnn")
    graph = graphopt.capture(loaded.model, loaded.inputs)
    names = [i.name for i in graph.nodes() if not i.is_param]
    bns = [n for n in names if "batch_norm" in graph[n].target]
    cut1 = names.index(bns[1]) + 1     # right after a BatchNorm: its tuple crosses
    cut2 = names.index(bns[2]) + 2
    parts = {n: (0 if i < cut1 else 1 if i < cut2 else 2) for i, n in enumerate(names)}
    users = {n.name: [u.name for u in n.users] for n in graph.fx_nodes()}
    for info in graph.nodes():
        if info.is_param:
            parts[info.name] = min((parts[u] for u in users[info.name]), default=0)
    stages = split_graph(graph, parts, 3)
    assert any(2 in dsts for dsts in stages.stages[0].sends.values())
    assert any(layout is not None for layout in stages.stages[1].layout.values())
    mbs = [(torch.randn_like(loaded.inputs[0]),) for _ in range(2)]
    run = run_pipeline(stages, mbs)
    with torch.no_grad():
        for mb, out in zip(mbs, run.outputs):
            torch.testing.assert_close(out, graph.run(*mb), rtol=0, atol=0)
