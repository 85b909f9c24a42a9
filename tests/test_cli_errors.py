"""Bad input on every command: exit code 2, one line on stderr, no traceback, nothing written.

Also the options the commands share: ``-o/--out`` (same spelling and default everywhere),
``--device-spec`` (a calibrated device replaces the preset in the cost model), and ``--help``
that explains every option.
"""
import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

from graphopt.capture import MODES, capture
from graphopt.cli.common import CAPTURE_MODES
from graphopt.cli.main import COMMANDS, build_parser, main
from graphopt.costmodel.device import DeviceSpec, LinkSpec, roofline_seconds
from graphopt.costmodel.presets import DEVICES, LINKS
from graphopt.errors import GraphoptError
from graphopt.specs import load_spec

WRITERS = {"partition": ["-k", "2"], "fuse": [], "remat": ["--budget", "0.5"]}
DEVICE_USERS = ("inspect", "partition", "pipeline", "remat", "fuse")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, needle):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("graphopt: error:") and needle in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture
def factories(tmp_path):
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent("""
        import torch
        def broken():
            raise RuntimeError("weights not found")
    """))
    return path


@pytest.fixture
def bad_plans(tmp_path):
    (tmp_path / "notjson.json").write_text("{nodes: [")
    (tmp_path / "schema.json").write_text(json.dumps({"schema": "graphopt.fusion/1", "k": 2}))
    (tmp_path / "k.json").write_text(json.dumps({"schema": "graphopt.partition/1", "k": 0}))
    return tmp_path


# -- start-up: help, version and argument errors never import torch ---------------------------
# (python -X importtime shows what each of these imports; `graphopt --help` takes about 0.05 s)
_NO_TORCH = """
import sys
from graphopt.cli.main import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "numpy", "networkx", "transformers", "matplotlib")
               if m in sys.modules)
print("HEAVY", ",".join(heavy))
sys.exit(code)
"""
_BAD_ARGS = {
    "inspect": ["zoo:mlp", "--format", "xml"],
    "partition": ["zoo:mlp", "-k", "0"],
    "pipeline": ["zoo:mlp", "-k", "2", "--frobnicate"],
    "train": ["zoo:mlp", "--frobnicate"],
    "plan": ["zoo:mlp", "--frobnicate"],
    "fuse": ["zoo:mlp", "--format", "xml"],
    "remat": ["zoo:mlp", "--budget", "0.5", "--solver", "magic"],
    "calibrate": ["--frobnicate"],
}


def _heavy_imports(argv):
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True,
                          text=True, timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("HEAVY"))
    return proc.returncode, line.split(" ", 1)[1] if " " in line else "", proc


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["frobnicate"],
                                  *[[c, "--help"] for c in ("partition", "fuse", "remat")],
                                  *[[c, *a] for c, a in _BAD_ARGS.items()]],
                         ids=lambda a: " ".join(a))
def test_help_and_bad_arguments_import_no_torch(argv):
    assert set(_BAD_ARGS) == set(COMMANDS)
    code, heavy, proc = _heavy_imports(argv)
    assert code == (0 if "--help" in argv or "--version" in argv else 2), proc.stderr
    assert heavy == "", f"graphopt {' '.join(argv)} imported {heavy}"


def test_checks_that_need_no_model_come_before_torch(tmp_path, monkeypatch):
    """--format svg without Graphviz, and a bad --format, are refused before any import."""
    monkeypatch.setenv("PATH", str(tmp_path))   # no `dot` on it
    for argv in (["partition", "zoo:mlp", "-k", "2", "--format", "svg"],
                 ["partition", "zoo:mlp", "-k", "2", "--format", "pdf"],
                 ["remat", "zoo:mlp", "--budget", "0.5", "--plot", "gif"]):
        code, heavy, proc = _heavy_imports([*argv, "-o", str(tmp_path / "out")])
        assert code == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert heavy == "", f"graphopt {' '.join(argv)} imported {heavy}"
    assert not (tmp_path / "out").exists()


def test_capture_modes_are_the_library_s():
    assert CAPTURE_MODES == MODES


# -- model specs and their options, before any capture --------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["inspect", "hf:GPT2LMHeadModel", "--set", "n_layer=abc"], "n_layer"),
    (["inspect", "hf:GPT2LMHeadModel", "--set", "n_layer=2.5"], "n_layer"),
    (["inspect", "hf:GPT2LMHeadModel", "--set", "activation_function=3"], "takes str"),
    (["inspect", "hf:GPT2LMHeadModel", "--set", "n_lyer=2"], "did you mean n_layer"),
    (["inspect", "hf:GPT2LMHeadModel", "--set", "to_json_string=1"], "has no field"),
    (["inspect", "hf:GPT2LMHeadModel", "--set", "n_layer"], "--set takes key=value"),
])
def test_bad_config_overrides(capsys, argv, needle):
    pytest.importorskip("transformers")
    code, _, err = run_cli(capsys, *argv, "-q")
    assert_one_line(code, err, needle)


def test_wrong_type_names_key_and_expected_type(capsys):
    pytest.importorskip("transformers")
    code, _, err = run_cli(capsys, "inspect", "hf:GPT2LMHeadModel", "--set", "n_layer=abc", "-q")
    assert_one_line(code, err, "GPT2Config.n_layer takes int, got str")


@pytest.mark.parametrize("argv, needle", [
    (["inspect", "{tmp}/nope.py:make"], "no such file"),
    (["inspect", "{file}:broken"], "the factory raised RuntimeError: weights not found"),
    (["inspect", "zoo:mlp", "--set", "n_layer=2"], "hf:ClassName specs only"),
    (["inspect", "zoo:mlp", "--batch", "0"], "--batch: expected a positive integer"),
    (["inspect", "zoo:mlp", "--seq", "-3"], "--seq: expected a positive integer"),
    (["inspect", "zoo:mlp", "--seed", "-1"], "--seed: expected an integer >= 0"),
    (["inspect", "zoo:mlp", "--top", "x"], "--top"),
    (["inspect", "zoo:mlp", "--format", "xml"], "invalid choice: 'xml'"),
    (["inspect", "zoo:mlp", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["inspect"], "required: MODEL"),
    (["frobnicate", "zoo:mlp"], "invalid choice: 'frobnicate'"),
])
def test_bad_specs_and_options(capsys, tmp_path, factories, argv, needle):
    argv = [a.format(tmp=tmp_path, file=factories) for a in argv]
    code, _, err = run_cli(capsys, *argv, "-q")
    assert_one_line(code, err, needle)


# -- sizes: one parser for every option --------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["partition", "zoo:mlp", "-k", "2", "--memory-cap", "1.5"], "a decimal needs a unit"),
    (["partition", "zoo:mlp", "-k", "2", "--memory-cap", "2M"], "ambiguous"),
    (["pipeline", "zoo:mlp", "-k", "2", "--memory-cap", "big"], "--memory-cap 'big'"),
    (["remat", "zoo:mlp", "--budget", "1.5"], "fraction must lie in (0, 1]"),
    (["remat", "zoo:mlp", "--budget", "2G"], "ambiguous"),
    (["remat", "zoo:mlp", "--budget=-1GiB"], "cannot be negative"),
])
def test_bad_sizes(capsys, tmp_path, argv, needle):
    code, _, err = run_cli(capsys, *argv, "-o", tmp_path / "out", "-q") if argv[0] != "pipeline" \
        else run_cli(capsys, *argv, "-q")
    assert_one_line(code, err, needle)
    assert not (tmp_path / "out").exists()


# -- plans, k and the other numbers ------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["partition", "zoo:mlp", "-k", "0"], "-k/--k: expected a positive integer, got 0"),
    (["partition", "zoo:mlp", "-k", "-2"], "-k/--k: expected a positive integer, got -2"),
    (["partition", "zoo:mlp", "-k", "two"], "expected a positive integer, got 'two'"),
    (["partition", "zoo:mlp", "-k", "2", "--ncuts", "0"], "--ncuts: expected a positive integer"),
    (["partition", "zoo:mlp", "-k", "2", "--imbalance", "-1"], "--imbalance: expected a number"),
    (["partition", "zoo:mlp", "-k", "2", "--microbatches", "0"], "--microbatches: expected a"),
    (["pipeline", "zoo:mlp", "-k", "0"], "k must be at least 1"),
    (["pipeline", "zoo:mlp"], "give -k K"),
    (["pipeline", "zoo:mlp", "-k", "2", "--rtol", "-1"], "--rtol"),
    (["pipeline", "zoo:mlp", "-k", "2", "--threads", "0"], "--threads"),
    (["pipeline", "zoo:mlp", "--plan", "{plans}/missing.json"], "cannot read plan"),
    (["pipeline", "zoo:mlp", "--plan", "{plans}/notjson.json"], "not valid JSON"),
    (["pipeline", "zoo:mlp", "--plan", "{plans}/schema.json"], "schema is 'graphopt.fusion/1'"),
    (["pipeline", "zoo:mlp", "--plan", "{plans}/k.json"], "k must be a positive integer"),
    (["remat", "zoo:mlp", "--budget", "0.5", "--time-limit", "0"], "--time-limit"),
    (["fuse", "zoo:mlp", "--max-ops", "0"], "--max-ops must be at least 1"),
])
def test_bad_numbers_and_plans(capsys, bad_plans, argv, needle):
    argv = [a.format(plans=bad_plans) for a in argv]
    out = ["-o", bad_plans / "out"] if argv[0] in WRITERS else []
    code, _, err = run_cli(capsys, *argv, *out, "-q")
    assert_one_line(code, err, needle)
    assert not (bad_plans / "out").exists()


def test_more_parts_than_nodes_leaves_no_directory(capsys, tmp_path):
    out = tmp_path / "new" / "sub"
    code, _, err = run_cli(capsys, "partition", "zoo:mlp", "-k", "100000", "-o", out, "-q")
    assert_one_line(code, err, "more than the")
    assert not (tmp_path / "new").exists()  # created for the run, removed when it failed


# -- output directories ------------------------------------------------------------------------
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_output_that_cannot_be_created(capsys, tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    for out, needle in (("/proc/nope", "cannot create the output directory"),
                        (blocker, "exists and is not a directory"),
                        (blocker / "below", "cannot create the output directory")):
        code, _, err = run_cli(capsys, command, "zoo:mlp", *WRITERS[command], "-o", out, "-q")
        assert_one_line(code, err, needle)
    assert blocker.read_text() == "not a directory"


def test_fuse_into_proc_in_a_fresh_process():
    proc = subprocess.run([sys.executable, "-m", "graphopt", "fuse", "zoo:gpt", "-o", "/proc/nope",
                           "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("graphopt: error: -o /proc/nope: cannot create")


def test_out_is_spelled_and_defaulted_the_same_everywhere():
    parser = build_parser()
    for command, extra in WRITERS.items():
        assert parser.parse_args([command, "zoo:mlp", *extra]).out == "out"
        assert parser.parse_args([command, "zoo:mlp", *extra, "-o", "d"]).out == "d"
        assert parser.parse_args([command, "zoo:mlp", *extra, "--out", "d"]).out == "d"
    # the old spelling of fuse still reads
    assert parser.parse_args(["fuse", "zoo:mlp", "--output", "d"]).out == "d"


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_explains_every_option():
    for name, sub in _subparsers(build_parser()).items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help and len(action.help) > 10, (name, action.option_strings)
            takes_value = action.nargs != 0 and action.option_strings and action.required is False
            if name in DEVICE_USERS and takes_value and action.default is not None:
                assert "default" in action.help, (name, action.option_strings, action.help)
        if name in DEVICE_USERS:
            assert "--device-spec" in sub.format_help(), name


# -- --device-spec ---------------------------------------------------------------------------
CALIBRATED = DeviceSpec("Test Box", {"float32": 2e11}, vector_flops=5e10, bandwidth=2e10,
                        memory=8 * 2**30, launch_seconds=1e-5)
MEASURED_LINK = LinkSpec("measured loopback", alpha=4e-5, beta=3e9)


@pytest.fixture
def device_file(tmp_path, monkeypatch):
    """A device.json read by a stand-in loader, so the test does not depend on its format."""
    path = tmp_path / "device.json"
    path.write_text("{}")
    seen = []

    def load_device_spec(p):
        seen.append(str(p))
        if "broken" in str(p):
            raise GraphoptError(f"{p}: 'compute' is missing")
        if hasattr(CALIBRATED, "p2p_link"):   # a calibrated spec carries its measured link
            return dataclasses.replace(CALIBRATED, p2p_link=MEASURED_LINK)
        return CALIBRATED

    monkeypatch.setattr("graphopt.costmodel.device_file.load_device_spec", load_device_spec)
    before = (dict(DEVICES), dict(LINKS))
    yield path, seen
    for registry, saved in zip((DEVICES, LINKS), before):
        registry.clear()
        registry.update(saved)


def test_device_spec_prices_the_inspect_estimate(capsys, device_file):
    path, seen = device_file
    code, out, err = run_cli(capsys, "inspect", "zoo:mlp", "--device-spec", path, "--format",
                             "json", "-q")
    assert code == 0, err
    data = json.loads(out)
    assert seen == [str(path)] and data["device"] == "Test Box"
    loaded = load_spec("zoo:mlp")
    graph = capture(loaded.model, loaded.inputs)
    want = sum(roofline_seconds(i.flops, i.bytes_read + i.bytes_written, i.op_class,
                                i.dtype or "float32", CALIBRATED) for i in graph.compute_nodes())
    assert data["estimated_seconds"] == pytest.approx(want, rel=1e-9)
    code, out, _ = run_cli(capsys, "inspect", "zoo:mlp", "--format", "json", "-q")
    assert json.loads(out)["estimated_seconds"] < want / 10  # the h100 preset is far faster


def test_device_spec_reaches_the_partitioner(capsys, tmp_path, device_file):
    path, seen = device_file
    code, _, err = run_cli(capsys, "partition", "zoo:mlp", "-k", "2", "--device-spec", path,
                           "--format", "json", "-o", tmp_path / "p", "-q")
    assert code == 0, err
    assert len(seen) == 1   # read once, however many places consult the device
    options = json.loads((tmp_path / "p" / "partition.json").read_text())["options"]
    # the spec travels as a value (a cost model's target): the plan names what it was priced
    # for, the loaded spec with its measured link, and nothing is registered in the presets
    assert options["priced_for"] == "Test Box, calibrated"
    assert options["launch_seconds"] == CALIBRATED.launch_seconds
    assert options["link_name"] == MEASURED_LINK.name
    assert options["alpha"] == MEASURED_LINK.alpha and options["beta"] == MEASURED_LINK.beta
    assert "test box" not in DEVICES and "test box" not in LINKS


@pytest.mark.parametrize("command", DEVICE_USERS)
def test_bad_device_spec_is_one_line_before_any_work(capsys, tmp_path, device_file, command):
    extra = {"partition": ["-k", "2"], "pipeline": ["-k", "2"], "remat": ["--budget", "0.5"]}
    out = ["-o", tmp_path / "out"] if command in WRITERS else []
    for spec, needle in ((tmp_path / "missing.json", "no such file"),
                         (tmp_path / "broken.json", "'compute' is missing")):
        if "broken" in str(spec):
            spec.write_text("{}")
        code, _, err = run_cli(capsys, command, "zoo:mlp", *extra.get(command, []),
                               "--device-spec", spec, *out, "-q")
        assert_one_line(code, err, needle)
        assert "--device-spec" in err
    assert not (tmp_path / "out").exists()
