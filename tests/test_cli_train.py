"""`graphopt train`: trains and checks itself, writes the contract's files; bad input exits 2."""
import json
from pathlib import Path

import pytest

from graphopt.cli.main import main

MODELS = Path(__file__).resolve().parent / "distributed" / "train_models.py"
RESMLP = f"{MODELS}:resmlp"
CONTRACT = {"schema": str, "model": str, "pp": int, "dp": int, "schedule": str,
            "microbatches": int, "steps": list, "measured": dict, "estimated": dict,
            "check": dict, "comm_bytes_per_step": int}


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code, err, match):
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("graphopt: error:"), err
    assert match in lines[0], lines[0]


@pytest.mark.slow
def test_train_from_a_parallel_config_checks_and_writes_its_files(capsys, tmp_path):
    config = tmp_path / "parallel.json"
    config.write_text(json.dumps({"schema": "graphopt.parallel/1", "candidates": [],
                                  "chosen": {"dp": 1, "pp": 2, "schedule": "gpipe",
                                             "microbatches": 4, "memory_budget": None}}))
    out_dir = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", RESMLP, "--config", config, "--steps", 3,
                             "--check", "-q", "-o", out_dir)
    assert code == 0, err
    doc = json.loads((out_dir / "train.json").read_text())
    for key, kind in CONTRACT.items():
        assert isinstance(doc[key], kind), key
    assert doc["schema"] == "graphopt.train/1" and (doc["pp"], doc["dp"]) == (2, 1)
    assert doc["schedule"] == "gpipe" and doc["microbatches"] == 4
    assert [s["step"] for s in doc["steps"]] == [0, 1, 2]
    assert all(s["seconds"] > 0 and s["loss"] > 0 for s in doc["steps"])
    later = sorted(s["seconds"] for s in doc["steps"][1:])
    assert doc["measured"]["step_seconds"] == pytest.approx(sum(later) / 2)   # the median
    assert 0 <= doc["measured"]["bubble"] < 1 and doc["estimated"]["step_seconds"] > 0
    assert doc["check"]["ok"] and doc["check"]["max_loss_rel_err"] < 1e-5
    assert doc["comm_bytes_per_step"] == doc["comm"]["measured_p2p_bytes_per_step"] > 0
    trace = json.loads((out_dir / "train_trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in slices} == {0, 1}
    assert {"forward", "backward", "idle"} <= {e["cat"] for e in slices}
    assert (out_dir / "train_timeline.svg").read_text().lstrip().startswith("<?xml")
    assert "measured:" in out and "estimated" in out and "match" in out


def test_a_batch_that_does_not_split_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", RESMLP, "--pp", 2, "--microbatches", 3, "-q",
                           "-o", tmp_path)
    _one_line_error(code, err, "does not split into 3 micro-batches")


def test_1f1b_with_fewer_micro_batches_than_stages_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", RESMLP, "--pp", 3, "--microbatches", 2, "-q",
                           "-o", tmp_path)
    _one_line_error(code, err, "at least as many micro-batches as stages")


def test_a_plan_for_another_model_is_refused(capsys, tmp_path):
    import numpy as np
    import torch

    import graphopt
    from graphopt.partition.costgraph import CostGraph
    from graphopt.partition.plan import Partition
    other = graphopt.capture(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(),
                                                 torch.nn.Linear(4, 4)), (torch.randn(2, 4),))
    cg = CostGraph.from_graph(other, "cpu")
    part = cg.param_parts((np.arange(cg.n) >= cg.n // 2).astype(np.int64), 2)
    plan = tmp_path / "partition.json"
    plan.write_text(Partition(model="mlp", k=2, mode="pipeline", cost_graph=cg, part=part).to_json())
    code, _, err = run_cli(capsys, "train", RESMLP, "--plan", plan, "-q", "-o", tmp_path)
    _one_line_error(code, err, "the plan does not match")


def test_a_plan_over_the_memory_cap_is_refused_before_any_process(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", RESMLP, "--pp", 2, "--memory-cap", "2KB", "-q",
                           "-o", tmp_path)
    _one_line_error(code, err, "memory cap")


def test_bad_schedule_options_are_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", RESMLP, "--pp", 2, "--schedule", "zero-bubble",
                           "--stages-per-rank", 3, "-q", "-o", tmp_path)
    _one_line_error(code, err, "exactly 2 stages per rank")
    bad = tmp_path / "parallel.json"
    bad.write_text(json.dumps({"schema": "graphopt.partition/1"}))
    code, _, err = run_cli(capsys, "train", RESMLP, "--config", bad, "-q", "-o", tmp_path)
    _one_line_error(code, err, "expected 'graphopt.parallel/1'")


def _parallel_json(tmp_path, **extra):
    path = tmp_path / "parallel.json"
    doc = {"schema": "graphopt.parallel/1", "candidates": [],
           "chosen": {"dp": 1, "pp": 2, "schedule": "gpipe", "microbatches": 4,
                      "memory_budget": None, "micro_batch": 2}, "batch": 8}
    doc.update(extra)
    path.write_text(json.dumps(doc))
    return path


def test_a_parallel_config_for_another_model_is_refused(capsys, tmp_path):
    config = _parallel_json(tmp_path, model="zoo:gpt")
    code, _, err = run_cli(capsys, "train", RESMLP, "--config", config, "-q", "-o", tmp_path)
    _one_line_error(code, err, "planned for zoo:gpt")


def test_a_parallel_config_fixes_the_batch_it_was_priced_at(capsys, tmp_path):
    from graphopt.planner.config_file import read_parallel_config
    config = _parallel_json(tmp_path, model=RESMLP)
    chosen = read_parallel_config(config, model=RESMLP)
    assert (chosen.micro_batch, chosen.batch) == (2, 8)
    code, _, err = run_cli(capsys, "train", RESMLP, "--config", config, "--batch", 16, "-q",
                           "-o", tmp_path)
    _one_line_error(code, err, "planned for a batch of 8")


def test_a_parallel_config_is_read_into_the_one_configuration_type(tmp_path):
    """Without --batch the run takes the file's batch; the chosen fields (micro-batch size,
    wrapper, memory budget) reach the job's ParallelConfig."""
    from graphopt.cli.cmd_train import _config
    from graphopt.cli.main import build_parser
    from graphopt.parallel import MemoryBudget
    config = _parallel_json(tmp_path, model=RESMLP)
    doc = json.loads(config.read_text())
    doc["chosen"].update(dp_wrapper="fsdp", memory_budget=0.5)
    config.write_text(json.dumps(doc))
    args = build_parser().parse_args(["train", RESMLP, "--config", str(config), "-q"])
    cfg, plan = _config(args)
    assert plan is None and args.batch == 8
    par = cfg.parallel
    assert (par.pp, par.dp, par.schedule, par.microbatches, par.microbatch_size) == \
        (2, 1, "gpipe", 4, 2)
    assert par.dp_wrapper == "fsdp" and par.memory_budget == MemoryBudget(fraction=0.5)
    args = build_parser().parse_args(["train", RESMLP, "--config", str(config),
                                      "--dp-wrapper", "ddp", "-q"])
    with pytest.raises(Exception, match="--dp-wrapper ddp disagrees"):
        _config(args)
