"""`graphopt plan`: parallel.json as the contract says, the what-if view, bad input exits 2."""
import json

import pytest
import torch
from checks import one_line_error as _one_line_error
from checks import run_cli
from torch import nn

from graphopt import schemas


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                    nn.Linear(32, 8))

    def forward(self, x):
        return self.layers(x)


def tiny():
    torch.manual_seed(0)
    return Tiny(), (torch.randn(8, 16),)


MODEL = f"{__file__}:tiny"
FAST = ("--memory-budgets", "none", "--max-microbatches", "4", "-q")




def _device_doc(device_type="cpu"):
    link = {"backend": "gloo", "world_size": 2, "alpha_s": 2e-4, "beta_s_per_byte": 2e-9,
            "samples": []}
    return {"schema": "graphopt.device/1", "device_type": device_type, "name": "test host",
            "machine": {"memory_bytes": 8 << 30},
            "compute": {"matmul": {"float32": {"best_flops_per_s": 2e10, "sizes": [
                {"n": 128, "flops": 2 * 128 ** 3, "seconds": 2 * 128 ** 3 / 1e10,
                 "flops_per_s": 1e10}]}}, "vector_flops_per_s": 2e9},
            "memory": {"bandwidth_bytes_per_s": 5e9}, "overhead": {"op_seconds": 5e-6,
                                                                   "view_seconds": 2e-6},
            "links": {"p2p": link, "allreduce": dict(link, ring_alpha_s=1e-4,
                                                     ring_beta_s_per_byte=1e-9)}}


def test_plan_writes_a_valid_parallel_json(capsys, tmp_path):
    spec = tmp_path / "device.json"
    spec.write_text(json.dumps(_device_doc()))
    code, out, _ = run_cli(capsys, "plan", MODEL, "--devices", 2, "--device-spec", spec,
                           "--engine-overhead", "off", "-o", tmp_path, *FAST)
    assert code == 0
    doc = json.loads((tmp_path / "parallel.json").read_text())
    schemas.validate(doc)
    assert doc["schema"] == "graphopt.parallel/1" and doc["model"] == MODEL
    assert all(c["dp"] * c["pp"] == 2 for c in doc["candidates"])
    times = [c["predicted_step_seconds"] for c in doc["candidates"]]
    assert times == sorted(times) and times[0] > 0
    assert doc["chosen"]["predicted_step_seconds"] == times[0]
    assert {(c["dp"], c["pp"]) for c in doc["candidates"]} == {(1, 2), (2, 1)}
    # the calibrated links priced the transfers and the all-reduce
    assert doc["device"]["p2p_link"]["alpha_s"] == pytest.approx(2e-4)
    assert doc["device"]["allreduce_link"]["beta_s_per_byte"] == pytest.approx(1e-9)
    assert doc["engine_overhead"] == {}
    assert "chosen:" in out and "predicted ms" in out


def test_what_if_tables_and_pictures(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "plan", MODEL, "--devices", 4, "--what-if", "-o", tmp_path,
                           *FAST)
    assert code == 0
    view = json.loads((tmp_path / "parallel.json").read_text())["what_if"]
    m = view["grad_bytes"]
    assert m == 4 * (16 * 32 + 32 + 32 * 32 + 32 + 32 * 8 + 8)
    at_size = [r for r in view["sync"] if r["scale"] == 1.0]
    for r in at_size:
        n, a, b = r["n"], r["alpha_s"], r["beta_s_per_byte"]
        assert r["ring_s"] == pytest.approx(2 * (n - 1) * (a + m / n * b))
        assert r["ps_s"] == pytest.approx(2 * (n * a + n * m * b))
    assert {r["link"] for r in view["sync"]} >= {"nvlink4", "pcie4", "ethernet100"}
    scaling = view["scaling"]
    assert scaling["ns"] == [1, 2, 4]
    assert [p[0] for p in scaling["curves"]["best, predicted"]] == [1, 2, 4]
    assert "best, predicted" in scaling["fits"]
    for name in ("whatif_sync.png", "whatif_scaling.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ring" in out and "C(N)" in out


def test_no_configuration_fits_is_bad_input(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", MODEL, "--devices", 2, "--memory-per-device", "1KiB",
                           "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "the least memory per device that works is")
    assert not (tmp_path / "o").exists()


def test_malformed_device_spec_is_bad_input(capsys, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"schema": "graphopt.device/1", "device_type": "cpu"}))
    code, _, err = run_cli(capsys, "plan", MODEL, "--devices", 2, "--device-spec", bad,
                           "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "missing field")
    (tmp_path / "junk.json").write_text("{not json")
    code, _, err = run_cli(capsys, "plan", MODEL, "--devices", 2, "--device-spec",
                           tmp_path / "junk.json", "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "not valid JSON")


def test_device_spec_of_another_device_type_is_bad_input(capsys, tmp_path):
    other = tmp_path / "gpu.json"
    other.write_text(json.dumps(_device_doc("cuda" if not torch.cuda.is_available() else "cpu")))
    code, _, err = run_cli(capsys, "plan", MODEL, "--devices", 2, "--device-spec", other,
                           "-o", tmp_path / "o", *FAST)
    _one_line_error(code, err, "device but this run uses")


@pytest.mark.parametrize("flag,value,match", [
    ("--memory-budgets", "none,1.5", "--memory-budgets 1.5: a fraction must lie in (0, 1]"),
    ("--memory-budgets", "half", "--memory-budgets 'half' is neither a fraction"),
    ("--memory-budgets", "none,256MiB", "the planner takes fractions in (0, 1)"),
    ("--schedules", "1f1b,looped", "unknown 'looped'"),
    ("--memory-per-device", "lots", "--memory-per-device"),
])
def test_bad_options_are_bad_input(capsys, tmp_path, flag, value, match):
    code, _, err = run_cli(capsys, "plan", MODEL, "--devices", 2, flag, value,
                           "-o", tmp_path / "o", "-q")
    _one_line_error(code, err, match)


@pytest.mark.slow
def test_measure_trains_the_best_two(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "plan", MODEL, "--devices", 2, "--measure", "--measure-top", 2,
                           "--steps", 2, "--schedules", "1f1b", "--timeout", 120,
                           "-o", tmp_path, *FAST)
    assert code == 0
    doc = json.loads((tmp_path / "parallel.json").read_text())
    schemas.validate(doc)
    measured = [c for c in doc["candidates"] if c["measured_step_seconds"] is not None]
    assert len(measured) == 2 and all(c["measured_step_seconds"] > 0 for c in measured)
    assert measured == doc["candidates"][:2]
    assert doc["measured"]["n"] == 2 and doc["measured"]["spearman"] is None
    assert "measured ms" in out
