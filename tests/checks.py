"""Shared assertions for tests that compare a rewritten graph with eager PyTorch."""
import torch


def max_rel_err(got, want) -> float:
    """Largest relative error over paired output tensors; a NaN anywhere fails the test."""
    err = 0.0
    for g, w in zip(got, want):
        assert not torch.isnan(g).any()
        err = max(err, float((g - w).abs().max() / w.abs().max().clamp_min(1e-12)))
    return err
