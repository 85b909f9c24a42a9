"""graphopt remat: memory.json per the contract, the plot, one-line errors with exit code 2."""
import json
import subprocess
import sys

import pytest

from graphopt.cli.cmd_remat import parse_budget
from graphopt.cli.main import main
from graphopt.errors import GraphoptError

CONTRACT = {"schema", "model", "train", "budget_bytes", "baseline", "plan", "arena"}


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_plan_writes_memory_json_and_plots(tmp_path, capsys):
    code, out, err = _run(["remat", "zoo:mlp", "--budget", "0.8", "--train", "-o", str(tmp_path),
                           "--plot", "png,svg", "-q"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "memory.json").read_text())
    assert CONTRACT <= set(data)
    assert data["schema"] == "graphopt.memory/1" and data["model"] == "zoo:mlp" and data["train"]
    assert {"peak_bytes", "saved_bytes"} <= set(data["baseline"])
    assert {"peak_bytes", "saved_bytes", "recompute_flops", "total_flops",
            "recomputed"} <= set(data["plan"])
    assert {"bytes", "lower_bound"} <= set(data["arena"])
    plan, base = data["plan"], data["baseline"]
    assert data["budget_bytes"] == int(0.8 * base["held_bytes"])
    assert plan["held_peak_bytes"] <= data["budget_bytes"] < base["held_bytes"] <= base["saved_bytes"]
    assert plan["saved_bytes"] < base["saved_bytes"] and plan["recomputed"]
    assert 0 < plan["recompute_flops"] < plan["total_flops"]
    assert data["arena"]["bytes"] >= data["arena"]["lower_bound"] >= plan["peak_bytes"]
    assert (tmp_path / "memory.png").read_bytes()[:4] == b"\x89PNG"
    assert "<svg" in (tmp_path / "memory.svg").read_text()
    assert "memory.json" in out


def test_json_summary_and_inference(tmp_path, capsys):
    code, out, err = _run(["remat", "zoo:cnn", "--budget", "64MiB", "-o", str(tmp_path),
                           "--format", "json", "--plot", "none", "-q"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data == json.loads((tmp_path / "memory.json").read_text())
    assert data["train"] is False and data["budget_bytes"] == 64 * 2**20
    assert data["plan"]["recomputed"] == [] and data["plan"]["peak_bytes"] > 0
    assert not (tmp_path / "memory.png").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "1.5"], "fraction must lie in (0, 1]"),
    (["--budget", "lots"], "neither a fraction"),
    (["--budget", "0.5", "--plot", "gif"], "unknown format"),
    (["--budget", "100", "--train"], "feasible minimum"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, needle):
    code, out, err = _run(["remat", "zoo:mlp", *argv, "-o", str(tmp_path), "-q"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "memory.json").exists()


def test_parse_budget():
    assert parse_budget("0.25") == 0.25 and parse_budget("1.0") == 1.0
    assert parse_budget("4096") == 4096 and parse_budget("2KiB") == 2048
    assert parse_budget("1.5GB") == 1_500_000_000
    with pytest.raises(GraphoptError):
        parse_budget("0")


def test_console_script_help_lists_remat():
    out = subprocess.run([sys.executable, "-m", "graphopt", "remat", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "--budget" in out.stdout and "--train" in out.stdout


def test_training_memory_library_and_its_picture(tmp_path):
    """plan_training_memory (what `remat --train` runs): the held curve it draws peaks where
    the report's held peak is, under the budget; the baseline's goes over it."""
    from graphopt import zoo
    from graphopt.memory.plot import plot_step_memory
    from graphopt.planner.memory import plan_training_memory
    model, inputs = zoo.build("resmlp")
    res = plan_training_memory(model, inputs, 0.5, name="zoo:resmlp")
    assert res.plan.held.max() == res.report["plan"]["held_peak_bytes"] <= res.budget_bytes
    assert res.baseline.held.max() > res.budget_bytes
    assert res.plan.backward_start == res.baseline.backward_start
    assert len(res.plan.liveness.steps) > len(res.baseline.liveness.steps)  # recomputation
    path = plot_step_memory({"no recomputation": res.baseline, "plan": res.plan},
                            tmp_path / "m.png", budget_bytes=res.budget_bytes)
    assert path.read_bytes()[:4] == b"\x89PNG"
