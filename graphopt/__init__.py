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
           "CaptureError", "SpecError", "PlanError", "__version__"]

