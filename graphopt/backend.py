"""The ``graphopt`` torch.compile backend.

Registered through the ``torch_dynamo_backends`` entry point, so installing graphopt is enough::

    compiled = torch.compile(model, backend="graphopt", options={"dump_dir": "out/"})

TorchDynamo hands over a torch-level graph; ``aot_autograd`` lowers it to ATen and splits training
graphs into a forward and a backward graph. Each becomes a :class:`~graphopt.graph.Graph`, goes
through the pipeline in :mod:`graphopt.pipeline`, and runs as the fx module the passes leave.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from graphopt.errors import GraphoptError
from graphopt.graph import Graph
from graphopt.passes import DumpInstrument, PassContext
from graphopt.pipeline import INFERENCE, TRAINING_BACKWARD, TRAINING_FORWARD, run_pipeline

__all__ = ["BackendOptions", "graphopt_backend"]

_graph_ids = itertools.count()


@dataclass
class BackendOptions:
    """Options of ``torch.compile(..., backend="graphopt", options={...})``.

    Attributes:
        memory_budget: float in (0, 1] (fraction of the no-remat saved-activation bytes) or int
            bytes; training graphs only.
        fuse: run fused groups as generated Triton kernels (default: on for CUDA tensors).
        triton_interpret: run the generated kernels on CPU tensors through Triton's interpreter.
        dump_dir: write the captured graphs, plans and kernel sources there.
    """

    memory_budget: float | int | None = None
    fuse: bool | None = None
    triton_interpret: bool = False
    dump_dir: str | None = None

    @classmethod
    def parse(cls, options: dict | None) -> "BackendOptions":
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise GraphoptError(f"unknown graphopt backend option(s) {', '.join(unknown)}; "
                                f"known options: {', '.join(known)}")
        opts = cls(**options)
        budget = opts.memory_budget
        if budget is not None:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                raise GraphoptError(f"memory_budget must be a float in (0, 1] or an int of "
                                    f"bytes, got {budget!r}")
            if isinstance(budget, float) and not 0.0 < budget <= 1.0:
                raise GraphoptError(f"memory_budget {budget} is a fraction and must lie in "
                                    "(0, 1]; pass an int for bytes")
            if isinstance(budget, int) and budget <= 0:
                raise GraphoptError(f"memory_budget {budget} bytes must be positive")
        for flag in ("fuse", "triton_interpret"):
            value = getattr(opts, flag)
            if value is not None and not isinstance(value, bool):
                raise GraphoptError(f"{flag} must be True or False, got {value!r}")
        return opts


def _context(opts: BackendOptions, graph_id: int, role: str) -> PassContext:
    ctx = PassContext(options={"memory_budget": opts.memory_budget, "fuse": opts.fuse,
                               "triton_interpret": opts.triton_interpret, "role": role})
    if opts.dump_dir:
        ctx.instruments.append(DumpInstrument(Path(opts.dump_dir) / f"graph{graph_id}_{role}"))
    return ctx


def _compile(gm: torch.fx.GraphModule, example_inputs, *, role: str, steps: list[str],
             opts: BackendOptions, graph_id: int, param_flags: list[bool] | None = None):
    from torch._functorch.aot_autograd import make_boxed_func
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    params = {name for name, flag in zip(placeholders, param_flags or []) if flag}
    graph = Graph(gm, name=f"graph{graph_id}_{role}", param_placeholders=params,
                  capture_mode="aot_autograd")
    graph = run_pipeline(graph, steps, _context(opts, graph_id, role))
    return make_boxed_func(graph.gm.forward)


def graphopt_backend(gm: torch.fx.GraphModule, example_inputs, *, mode=None, options=None):
    """The TorchDynamo backend entry point: ``(gm, example_inputs, *, mode, options)``.

    Example:
        >>> compiled = torch.compile(model, backend="graphopt")
        >>> torch.testing.assert_close(compiled(x), model(x))
    """
    from torch._dynamo.backends.common import aot_autograd
    opts = BackendOptions.parse(options)
    graph_id = next(_graph_ids)
    param_flags = [isinstance(x, torch.nn.Parameter) for x in example_inputs]
    common = dict(opts=opts, graph_id=graph_id)
    fw = functools.partial(_compile, role="forward", steps=TRAINING_FORWARD,
                           param_flags=param_flags, **common)
    bw = functools.partial(_compile, role="backward", steps=TRAINING_BACKWARD, **common)
    inference = functools.partial(_compile, role="inference", steps=INFERENCE,
                                  param_flags=param_flags, **common)
    return aot_autograd(fw_compiler=fw, bw_compiler=bw, inference_compiler=inference)(
        gm, example_inputs)
