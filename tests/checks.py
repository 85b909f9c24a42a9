"""Shared assertions for tests that compare a rewritten graph with eager PyTorch."""
import torch


def max_rel_err(got, want) -> float:
    """Largest relative error over paired output tensors; a NaN anywhere fails the test."""
    err = 0.0
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        err = max(err, float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)))
    return err


def run_cli(capsys, *argv):
    """Run the CLI in-process: (exit code, stdout, stderr)."""
    from graphopt.cli.main import main
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, match):
    """Bad input: exit 2 and one ``graphopt: error:`` line that says ``match``."""
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("graphopt: error:"), err
    assert match in lines[0], lines[0]
