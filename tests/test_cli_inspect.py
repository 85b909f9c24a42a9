"""`graphopt inspect` and the contract's bad-input behaviour: exit 2 and one line, never a traceback."""
import json
import subprocess
import sys
import textwrap

import pytest

from graphopt.cli.main import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_json_has_top_level_flops(capsys):
    code, out, err = run_cli(capsys, "inspect", "zoo:mlp", "--format", "json", "-q")
    assert code == 0
    data = json.loads(out)
    assert data["flops"] > 0 and data["nodes"] > 0 and data["param_bytes"] > 0
    assert data["op_histogram"]["aten.linear.default"] == 4


def test_inspect_table(capsys):
    code, out, _ = run_cli(capsys, "inspect", "zoo:cnn")
    assert code == 0 and "FLOPs" in out and "op histogram" in out


def test_inspect_hf_with_overrides(capsys):
    pytest.importorskip("transformers")
    code, out, _ = run_cli(capsys, "inspect", "hf:GPT2LMHeadModel", "--set", "n_layer=1",
                           "--set", "n_embd=64", "--set", "n_head=2", "--seq", "16",
                           "--format", "json")
    assert code == 0 and json.loads(out)["flops"] > 0


def _factory_file(tmp_path, body):
    path = tmp_path / "models.py"
    path.write_text(textwrap.dedent(body))
    return path


BAD = {
    "missing file": ("{tmp}/nope.py:make", "no such file"),
    "missing factory": ("{file}:absent", "has no factory 'absent'"),
    "factory raises": ("{file}:broken", "the factory raised RuntimeError: weights not found"),
    "not a model": ("{file}:not_a_model", "not a torch.nn.Module"),
    "untraceable": ("{file}:data_dependent", "data-dependent control flow"),
    "unknown zoo": ("zoo:giraffe", "no zoo model 'giraffe'"),
    "no colon": ("resnet", "is not a model spec"),
    "unknown hf class": ("hf:NoSuchModel", "transformers has no model class"),
    "bad override": ("hf:GPT2LMHeadModel --set n_lyer=2", "has no field 'n_lyer'"),
    "override of the wrong type": ("hf:GPT2LMHeadModel --set n_layer=abc",
                                   "GPT2Config.n_layer takes int, got str"),
    "missing module": ("nosuchpkg.models:make", "cannot import module"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_specs_exit_2_with_one_line(case, tmp_path, capsys):
    if "hf" in case or "override" in case:
        pytest.importorskip("transformers")
    file = _factory_file(tmp_path, """
        import torch
        def broken():
            raise RuntimeError("weights not found")
        def not_a_model():
            return 3, (torch.randn(2),)
        class DD(torch.nn.Module):
            def forward(self, x):
                return x * 2 if x.sum() > 0 else x
        def data_dependent():
            return DD(), (torch.randn(3),)
    """)
    spec, expected = BAD[case]
    argv = spec.format(tmp=tmp_path, file=file).split()
    code, out, err = run_cli(capsys, "inspect", *argv, "-q")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("graphopt: error:") and expected in lines[0]
    assert "Traceback" not in err


def test_console_script_and_module_entry(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphopt", "--help"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "inspect" in proc.stdout and "zoo:NAME" in proc.stdout
