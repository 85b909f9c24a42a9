"""`graphopt partition` and `graphopt pipeline`: files as the contract says, bad input exits 2."""
import json
import shutil
import textwrap

import pytest
from checks import one_line_error as _one_line_error
from checks import run_cli

from graphopt.cli.main import main


def test_partition_writes_json_and_pictures(capsys, tmp_path, monkeypatch):
    # no Graphviz needed: the HTML page lays the graph out in the browser
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name == "dot"
                        else real_which(name, *a, **kw))
    code, out, _ = run_cli(capsys, "partition", "zoo:gpt", "-k", 2, "-o", tmp_path, "-q",
                           "--format", "json,dot,html")
    assert code == 0
    assert "equal_flops" in out and "contiguous_dp" in out
    data = json.loads((tmp_path / "partition.json").read_text())
    assert data["schema"] == "graphopt.partition/1" and data["k"] == 2
    # the picture: one colour per part, parts boxed, cut edges red with their bytes
    dot = (tmp_path / "partition.dot").read_text()
    assert 'subgraph "cluster_0"' in dot and 'subgraph "cluster_1"' in dot
    assert 'color="#D62728"' in dot
    page = (tmp_path / "partition.html").read_text()
    assert "<svg" in page and "<script src" not in page and "hover" in page.lower()
    assert '"flops":' in page and '"sends":' in page  # node costs and the bytes sent, inlined
    assert not (tmp_path / "partition.svg").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed "
                    "(apt-get install graphviz); --format svg needs it")
def test_partition_writes_svg_with_graphviz(capsys, tmp_path):
    code, _, _ = run_cli(capsys, "partition", "zoo:gpt", "-k", 2, "-o", tmp_path, "-q",
                         "--format", "svg")
    assert code == 0
    assert (tmp_path / "partition.svg").read_text().lstrip().startswith("<?xml")


def test_partition_svg_without_graphviz_is_bad_input(capsys, tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name == "dot"
                        else real_which(name, *a, **kw))
    code, _, err = run_cli(capsys, "partition", "zoo:mlp", "-k", 2, "-o", tmp_path, "-q",
                           "--format", "svg")
    _one_line_error(code, err, "apt-get install graphviz")
    assert not tmp_path.joinpath("partition.json").exists()


def test_partition_svg_beside_other_formats_without_graphviz_writes_the_rest(
        capsys, tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **kw: None if name == "dot"
                        else real_which(name, *a, **kw))
    code, out, err = run_cli(capsys, "partition", "zoo:mlp", "-k", 2, "-o", tmp_path, "-q",
                             "--format", "json,svg,html")
    assert code == 0, err
    assert err.count("\n") == 1 and "skipping svg" in err and "dot" in err, err
    assert {p.name for p in tmp_path.iterdir()} == {"partition.json", "partition.html"}
    # the table's plan names are explained under it
    assert "plan names:" in out and "equal_flops " in out and "contiguous_dp " in out


def test_argument_choices_are_the_library_s():
    from graphopt.cli import cmd_partition
    from graphopt.partition.choose import OBJECTIVES
    from graphopt.partition.search import MODES
    from graphopt.passes.partition_graph import SPLITS
    assert cmd_partition.MODES == MODES and cmd_partition.OBJECTIVES == OBJECTIVES
    assert cmd_partition.SPLITS == SPLITS


def test_legend_names_only_the_families_in_the_table():
    from graphopt.cli.cmd_partition import legend
    lines = legend(["dp:metis-order[0]+bytes", "equal_flops", "contiguous_dp"])
    assert [ln.split()[0] for ln in lines] == ["equal_flops", "contiguous_dp", "dp:ORDER"]
    assert any("metis-order[i]" in ln for ln in lines)
    assert [ln.split()[0] for ln in legend(["milp:near(metis+repair[1])"])] == ["milp"]


@pytest.mark.parametrize("argv,match", [
    (["-k", "0"], "expected a positive integer"),
    (["-k", "100000"], "more than the"),
    (["-k", "2", "--imbalance", "-0.5"], "expected a number >= 0"),
    (["-k", "2", "--imbalance", "3"], "imbalance must be in"),
    (["-k", "2", "--format", "pdf"], "--format"),
    (["-k", "2", "--speeds", "1,2,3"], "speeds needs 2"),
    (["-k", "2", "--memory-cap", "lots"], "as bytes"),
])
def test_partition_bad_input(capsys, tmp_path, argv, match):
    code, _, err = run_cli(capsys, "partition", "zoo:mlp", "-o", tmp_path, "-q", *argv)
    _one_line_error(code, err, match)
    assert not (tmp_path / "partition.json").exists()


def test_partition_memory_cap_too_small(capsys, tmp_path):
    code, _, err = run_cli(capsys, "partition", "zoo:gpt", "-k", 2, "-o", tmp_path, "-q",
                           "--memory-cap", "64KiB")
    _one_line_error(code, err, "memory cap")


def _giant_factory(tmp_path):
    path = tmp_path / "giant.py"
    path.write_text(textwrap.dedent("""
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(4096, 4096))
            def forward(self, x):
                return torch.relu(x @ self.w).sum(-1) + 1
        def make():
            # One row: no cut can split the matmul, and reading its 64 MiB weight takes longer than
            # every other op together, so no stage boundary balances the stages' time.
            return M(), (torch.randn(1, 4096),)
    """))
    return f"{path}:make"


def test_single_giant_node_is_bad_input_with_best_achievable(capsys, tmp_path):
    code, _, err = run_cli(capsys, "partition", _giant_factory(tmp_path), "-k", 2,
                           "-o", tmp_path, "-q")
    _one_line_error(code, err, "best achievable imbalance is")


@pytest.fixture(scope="module")
def gpt_plan(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    assert main(["partition", "zoo:gpt", "-k", "2", "-o", str(out), "-q", "--format",
                 "json"]) == 0
    return out / "partition.json"


def test_pipeline_check_matches(capsys, gpt_plan):
    code, out, _ = run_cli(capsys, "pipeline", "zoo:gpt", "--plan", gpt_plan, "--microbatches",
                           3, "--check", "-q")
    assert code == 0, out
    assert "2 stages on 2 processes (gloo)" in out
    assert "measured:" in out and "estimated (" in out
    assert "match" in out and "MISMATCH" not in out


def test_pipeline_check_reports_a_mismatch(capsys, tmp_path):
    # a model that draws fresh noise on every call cannot match itself: --check exits 1
    path = tmp_path / "noisy.py"
    path.write_text(textwrap.dedent("""
        import torch
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a = torch.nn.Linear(64, 64)
                self.b = torch.nn.Linear(64, 64)
            def forward(self, x):
                return self.b(torch.relu(self.a(x)) + torch.rand_like(x))
        def make():
            return M(), (torch.randn(16, 64),)
    """))
    code, out, _ = run_cli(capsys, "pipeline", f"{path}:make", "-k", 2, "--microbatches", 2,
                           "--check", "-q", "--imbalance", "0.5")
    assert code == 1 and "MISMATCH" in out


@pytest.mark.parametrize("edit,match", [
    (lambda p: p.write_text("{broken"), "not valid JSON"),
    (lambda p: p.write_text(p.read_text().replace('"part": 1', '"part": 7')), "outside 0..1"),
])
def test_pipeline_malformed_plan(capsys, tmp_path, gpt_plan, edit, match):
    bad = tmp_path / "partition.json"
    bad.write_text(gpt_plan.read_text())
    edit(bad)
    code, _, err = run_cli(capsys, "pipeline", "zoo:gpt", "--plan", bad, "-q")
    _one_line_error(code, err, match)


def test_pipeline_plan_for_another_model(capsys, gpt_plan):
    code, _, err = run_cli(capsys, "pipeline", "zoo:mlp", "--plan", gpt_plan, "-q")
    # the plan's cuts are replayed first, so the first mismatch found may be a cut's node
    assert "does not match" in err or "was the plan made for this model" in err, err
    _one_line_error(code, err, "zoo:mlp")


def test_pipeline_needs_k_or_plan(capsys):
    code, _, err = run_cli(capsys, "pipeline", "zoo:mlp", "-q")
    _one_line_error(code, err, "give -k")
