"""``graphopt calibrate``: a quick real measurement, the per-machine cache, the alpha-beta fit."""
import json
import math

import numpy as np
import pytest

from graphopt import schemas
from graphopt.cli.main import main
from graphopt.costmodel.calibrate import CalibrationError, cache_path, fit_alpha_beta
from graphopt.costmodel.device_file import load_device_spec


def test_fit_recovers_alpha_and_beta():
    m = np.array([1 << 10, 1 << 14, 1 << 18, 1 << 22, 1 << 26], dtype=float)
    t = 50e-6 + 1e-9 * m
    fit = fit_alpha_beta(m, t)
    assert fit["alpha_s"] == pytest.approx(50e-6, rel=1e-9)
    assert fit["beta_s_per_byte"] == pytest.approx(1e-9, rel=1e-9)
    assert fit["fit_rel_err_max"] < 1e-9
    noisy = t * np.array([1.05, 0.95, 1.04, 0.97, 1.02])
    fit = fit_alpha_beta(m, noisy)
    assert fit["alpha_s"] == pytest.approx(50e-6, rel=0.1)
    assert fit["beta_s_per_byte"] == pytest.approx(1e-9, rel=0.1)
    assert 0.0 < fit["fit_rel_err_max"] < 0.1


def test_fit_keeps_alpha_and_beta_positive():
    # Small messages slower than large ones (a busy host): no line with alpha, beta > 0 fits
    # well, but the fit still gives positive values and says how bad it is.
    fit = fit_alpha_beta([1024, 65536, 1 << 20], [3e-3, 2e-4, 1e-3])
    assert fit["alpha_s"] > 0 and fit["beta_s_per_byte"] > 0
    assert fit["fit_rel_err_max"] > 0.5
    with pytest.raises(CalibrationError):
        fit_alpha_beta([1024], [1e-3])


def test_quick_calibration_measures_and_caches(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "device.json"
    code = main(["calibrate", "--quick", "--world", "2", "--device", "cpu", "-o", str(out),
                 "--timeout", "120", "-q"])
    stdout, _ = capsys.readouterr()
    assert code == 0 and "p2p (gloo, 2 processes)" in stdout
    spec = load_device_spec(out, device_type="cpu")
    doc = json.loads(out.read_text())
    schemas.validate(doc)   # the shipped graphopt.device/1 schema
    for kind in ("p2p", "allreduce"):
        link = doc["links"][kind]
        assert link["alpha_s"] > 0 and link["beta_s_per_byte"] > 0 and link["world_size"] == 2
        assert math.isfinite(link["fit_rel_err_max"]) and len(link["samples"]) == 3
    assert spec.p2p_link.alpha > 0 and spec.allreduce_link.beta > 0
    assert spec.matmul_peak("float32") > 1e8 and spec.bandwidth > 1e7 and spec.launch_seconds > 0
    # The fused attention op and dropout's draws are priced from their own measured rates.
    assert len(spec.attention_curve) == 3 and all(r > 1e7 for _, r in spec.attention_curve)
    assert spec.random_rate > 1e5
    assert doc["calibration"]["quick"] is True
    cached = cache_path(2, quick=True, device="cpu")
    assert cached.exists() and json.loads(cached.read_text()) == doc
    # Run again: the cached result is copied, nothing is measured.
    again = tmp_path / "again.json"
    code = main(["calibrate", "--quick", "--device", "cpu", "-o", str(again), "--progress"])
    _, stderr = capsys.readouterr()
    assert code == 0 and "cached calibration" in stderr and "calibrating" not in stderr
    assert json.loads(again.read_text()) == doc


def test_calibrate_bad_input_is_exit_2(capsys):
    assert main(["calibrate", "--world", "0"]) == 2
    _, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and "--world" in err
