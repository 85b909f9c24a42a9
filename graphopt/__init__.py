"""graphopt: a computation-graph optimizer for PyTorch.

Capture a model as a cost-annotated ATen graph, partition it across devices, fuse memory-bound ops
into Triton kernels, and plan its memory.

Example:
    >>> import graphopt, torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU())
    >>> g = graphopt.capture(model, (torch.randn(8, 64),))
    >>> print(g.total_flops, len(g))

The names below that need torch (``capture``, ``Graph``, ...) are imported on first use, so that
``import graphopt`` (and with it ``graphopt --help``) does not import torch.
"""
from __future__ import annotations

import importlib
import sys
import types

from graphopt.errors import CaptureError, GraphoptError, PlanError, SpecError

__version__ = "0.1.0"
__all__ = ["capture", "capture_pieces", "find_graph_breaks", "Graph", "NodeInfo", "GraphoptError",
           "CaptureError", "SpecError", "PlanError", "__version__"]

_LAZY = {"capture": "graphopt.capture", "capture_pieces": "graphopt.capture",
         "find_graph_breaks": "graphopt.capture", "Graph": "graphopt.graph",
         "NodeInfo": "graphopt.graph"}


class _Package(types.ModuleType):
    def __getattr__(self, name: str):
        if name not in _LAZY:
            raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
        value = getattr(importlib.import_module(_LAZY[name]), name)
        types.ModuleType.__setattr__(self, name, value)
        return value

    def __setattr__(self, name: str, value) -> None:
        # Importing the submodule graphopt.capture binds it here by that name; `graphopt.capture`
        # stays the function, as it was when this file imported it eagerly.
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        types.ModuleType.__setattr__(self, name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _Package
