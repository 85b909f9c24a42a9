"""graphopt: a computation-graph optimizer for PyTorch.

Capture a model as a cost-annotated ATen graph, partition it across devices, fuse memory-bound ops
into Triton kernels, and plan its memory.

Example:
    >>> import graphopt, torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU())
    >>> g = graphopt.capture(model, (torch.randn(8, 64),))
    >>> print(g.total_flops, len(g))
"""
from graphopt.capture import capture, capture_pieces, find_graph_breaks
from graphopt.errors import CaptureError, GraphoptError, PlanError, SpecError
from graphopt.graph import Graph, NodeInfo

__version__ = "0.1.0"
__all__ = ["capture", "capture_pieces", "find_graph_breaks", "Graph", "NodeInfo", "GraphoptError",
           "CaptureError", "SpecError", "PlanError", "unshadow_kernels", "__version__"]


def unshadow_kernels() -> None:
    """Take this checkout's root off ``sys.path``. Its ``kernels/`` folder is installed as
    ``graphopt.kernels``, but with the root on the path (``python -m pytest`` or ``python -m
    graphopt`` run there) it would also be found as the top-level ``kernels``, hiding the
    ``kernels`` distribution that transformers imports: every ``hf:`` model would then fail to
    build. Installed copies (no ``kernels/`` beside the package) are unaffected."""
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    if not (root / "kernels" / "__init__.py").is_file():
        return
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    found = sys.modules.get("kernels")
    if found is not None and Path(getattr(found, "__file__", "") or "/").resolve().parent.parent == root:
        del sys.modules["kernels"]
