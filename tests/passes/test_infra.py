"""Pass infrastructure: results, invariant checks naming the pass, fixed points, instruments."""
import json

import pytest
import torch

import graphopt
from graphopt.passes import (
    DumpInstrument,
    OptionError,
    PassContext,
    PassError,
    PassManager,
    PassResult,
    TimingInstrument,
    check_invariants,
    get_pass,
)


def small_graph():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    return graphopt.capture(model, (torch.randn(3, 4),)), model


def test_builtin_passes_are_registered():
    assert get_pass("eliminate_dead_code").pass_name == "eliminate_dead_code"
    with pytest.raises(PassError, match="unknown pass 'nope'; known:"):
        get_pass("nope")


def test_invariant_violation_names_the_pass_and_its_predecessors():
    def forget_a_node(graph, ctx):
        graph.info.pop(next(iter(graph.info)))
        return PassResult(graph, True)

    g, _ = small_graph()
    pm = PassManager(["annotate_costs", forget_a_node])
    with pytest.raises(PassError, match=r"pass 'forget_a_node' \(after annotate_costs\) broke a "
                                        r"graph invariant: nodes without cost info"):
        pm.run(g, PassContext())


def test_crashing_pass_is_named():
    def boom(graph, ctx):
        raise ZeroDivisionError("nope")
    g, _ = small_graph()
    with pytest.raises(PassError, match="pass 'boom' failed: ZeroDivisionError"):
        PassManager([boom]).run(g)


def test_fixed_point_stops_when_nothing_changes():
    calls = []

    def count_down(graph, ctx):
        calls.append(1)
        return PassResult(graph, len(calls) < 3)
    g, _ = small_graph()
    PassManager([count_down], fixed_point=True, max_iterations=10).run(g)
    assert len(calls) == 3


def test_instruments_time_and_dump(tmp_path):
    g, model = small_graph()
    timing = TimingInstrument()
    ctx = PassContext(instruments=[timing, DumpInstrument(tmp_path)])
    out = PassManager(["eliminate_dead_code", "annotate_costs"]).run(g, ctx)
    assert set(timing.seconds) == {"eliminate_dead_code", "annotate_costs"}
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00_input.dot", "00_input.json", "01_eliminate_dead_code.dot",
                     "01_eliminate_dead_code.json", "02_annotate_costs.dot",
                     "02_annotate_costs.json"]
    assert json.loads((tmp_path / "02_annotate_costs.json").read_text())["nodes"]
    assert [r.name for r in ctx.history] == ["eliminate_dead_code", "annotate_costs"]
    x = torch.randn(3, 4)
    with torch.no_grad():
        assert torch.allclose(out.run(x)[0], model(x), rtol=1e-5, atol=1e-6)


def test_disabled_pass_is_skipped():
    g, _ = small_graph()
    ctx = PassContext(disabled={"annotate_costs"})
    PassManager(["eliminate_dead_code", "annotate_costs"]).run(g, ctx)
    assert [r.name for r in ctx.history] == ["eliminate_dead_code"]


def test_check_invariants_accepts_a_fresh_capture():
    g, _ = small_graph()
    check_invariants(g)
    g.nodes()[-1].part = 0  # partial partition annotations are an error
    with pytest.raises(AssertionError, match="no part"):
        check_invariants(g)


def test_graphopt_debug_env_logs_and_dumps(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("GRAPHOPT_DEBUG", "2")
    monkeypatch.setenv("GRAPHOPT_DUMP_DIR", str(tmp_path))
    g, _ = small_graph()
    with caplog.at_level("INFO", logger="graphopt"):
        PassManager(["annotate_costs"]).run(g, PassContext())
    assert any("annotate_costs" in r.getMessage() for r in caplog.records)
    dumped = list(tmp_path.rglob("01_annotate_costs.json"))
    assert len(dumped) == 1


def test_unknown_option_names_the_passes_and_their_keys():
    with pytest.raises(OptionError, match=r"unknown pass option 'fuse_max_op'.*fuse_ops: "
                                          r"fuse_max_ops, fuse_max_inputs"):
        PassContext(options={"fuse_max_op": 3})


def test_mistyped_option_names_the_pass_and_the_type():
    with pytest.raises(OptionError, match=r"pass 'partition_graph': option 'k' must be int"):
        PassContext(options={"k": "4"})
    with pytest.raises(OptionError, match=r"option 'objective' must be 'volume' \| 'time'"):
        PassContext(options={"objective": "speed"})
    with pytest.raises(OptionError, match="'fuse_max_ops'"):
        PassContext().set_options(fuse_max_ops=2.5)


def test_options_for_gives_typed_defaults_and_values():
    ctx = PassContext(options={"k": 4, "imbalance": 0.1, "split": "rows"})
    part = ctx.options_for("partition_graph")
    assert (part.k, part.imbalance, part.split, part.mode) == (4, 0.1, "rows", "pipeline")
    split = ctx.options_for("split_ops")   # shared keys are one concept: the same value
    assert (split.k, split.imbalance, split.split) == (4, 0.1, "rows")
    assert ctx.options_for("fuse_ops").fuse_max_ops == 64


def test_every_registered_pass_declares_options_and_artifacts_consistently():
    from graphopt.passes import PASSES
    made = {a for fn in PASSES.values() for a in fn.pass_info.makes}
    for name, fn in PASSES.items():
        assert fn.pass_info.name == name
        assert set(fn.pass_info.needs) <= made, f"{name} needs what no pass makes"
