"""`graphopt fuse MODEL -o DIR`: fusion.json in the contract's schema, one standalone Triton
module per kernel, and one clear line (exit 2) on bad input."""
import ast
import json

import pytest

from graphopt.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_fuse_writes_the_plan_and_the_kernels(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "fuse", "zoo:mlp", "-o", str(tmp_path), "--format", "json",
                           "-q")
    assert code == 0
    data = json.loads((tmp_path / "fusion.json").read_text())
    assert data == json.loads(out)
    assert data["schema"] == "graphopt.fusion/1" and data["model"] == "zoo:mlp"
    s = data["summary"]
    assert set(s) >= {"graph_ops", "kernels", "bytes_unfused", "bytes_fused"}
    assert s["kernels"] == len(data["kernels"]) == 3  # one GELU per hidden layer
    assert 0 < s["bytes_fused"] < s["bytes_unfused"]
    fused_nodes = [n for k in data["kernels"] for n in k["nodes"]]
    assert len(fused_nodes) == len(set(fused_nodes))  # a node is in one kernel at most
    assert not set(fused_nodes) & set(data["unfused"])
    for k in data["kernels"]:
        assert k["kind"] in ("pointwise", "reduction") and k["bytes_read"] > 0
        src = (tmp_path / k["source"]).read_text()
        ast.parse(src)
        assert "@triton.jit" in src and all(n in src for n in k["nodes"])


def test_fuse_table_and_hopper_compile(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "fuse", "zoo:cnn", "-o", str(tmp_path), "--check-compile")
    assert code == 0 and "bytes fused / unfused" in out and "kernels" in out
    assert list((tmp_path / "kernels").glob("fused_*.py"))


def test_fuse_hf_model(capsys, tmp_path):
    pytest.importorskip("transformers")
    code, out, _ = run_cli(capsys, "fuse", "hf:BertModel", "--set", "num_hidden_layers=1",
                           "--set", "hidden_size=64", "--set", "num_attention_heads=2",
                           "--set", "intermediate_size=128", "--seq", "16", "-o",
                           str(tmp_path), "--format", "json", "-q")
    assert code == 0
    kinds = {k["kind"] for k in json.loads(out)["kernels"]}
    assert kinds == {"pointwise", "reduction"}  # GELU; layer norms


@pytest.mark.parametrize("argv", [["fuse", "zoo:nope"], ["fuse", "zoo:mlp", "--max-ops", "0"]])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv):
    code, out, err = run_cli(capsys, *argv, "-o", str(tmp_path))
    assert code == 2 and err.count("\n") == 1 and "graphopt: error:" in err
    assert not (tmp_path / "fusion.json").exists()
