"""The ``graphopt`` torch.compile backend.

Registered through the ``torch_dynamo_backends`` entry point, so installing graphopt is enough::

    compiled = torch.compile(model, backend="graphopt", options={"dump_dir": "out/"})

TorchDynamo hands over a torch-level graph; ``aot_autograd`` lowers it to ATen and splits training
graphs into a forward and a backward graph. Each becomes a :class:`~graphopt.graph.Graph`, goes
through the pipeline in :mod:`graphopt.pass_lists`, and runs as the fx module the passes leave.
Fused groups run as generated Triton kernels (:mod:`graphopt.kernels`): compiled on CUDA,
through Triton's interpreter with ``triton_interpret``, or as their ATen subgraphs otherwise.

Without fusion (CPU tensors, unless ``fuse`` or ``triton_interpret`` asks for it) the steps that
only prepare fusion are skipped, so each graph runs as the boxed fx code aot_autograd handed over,
as under ``aot_eager``: graphopt adds nothing per call (``bench/backend.py`` measures it). Training
graphs are split by aot_autograd's default partitioner (aot_eager's min-cut one recomputes a few
cheap ops instead of saving them; on the CPU the two steps cost the same within noise), unless a
``memory_budget`` asks for graphopt's own plan.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from graphopt.errors import GraphoptError
from graphopt.graph import Graph
from graphopt.parallel import MemoryBudget
from graphopt.pass_lists import (
    FUSION_STEPS,
    INFERENCE,
    TRAINING_BACKWARD,
    TRAINING_FORWARD,
    TRAINING_JOINT,
    run_pipeline,
)
from graphopt.passes import DumpInstrument, PassContext

__all__ = ["BackendOptions", "graphopt_backend"]

_graph_ids = itertools.count()


@dataclass
class BackendOptions:
    """Options of ``torch.compile(..., backend="graphopt", options={...})``.

    Attributes:
        memory_budget: float in (0, 1] (fraction of the activation bytes the no-remat plan
            holds, free pointwise ops recomputed) or int bytes (a string such as ``"256MiB"``
            is read too), checked by :meth:`graphopt.parallel.MemoryBudget.parse` and kept as
            its plain value; training graphs only. Below a graph's feasible minimum, the
            tightest plan and one warning with the minimum.
        fuse: run fused groups as generated Triton kernels (default: on for CUDA tensors).
        triton_interpret: run the generated kernels on CPU tensors through Triton's interpreter.
        dump_dir: write the captured graphs, plans and kernel sources there.
    """

    memory_budget: float | int | None = None
    fuse: bool | None = None
    triton_interpret: bool = False
    dump_dir: str | None = None

    @classmethod
    def parse(cls, options: dict | None) -> BackendOptions:
        options = dict(options or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise GraphoptError(f"unknown graphopt backend option(s) {', '.join(unknown)}; "
                                f"known options: {', '.join(known)}")
        opts = cls(**options)
        if opts.memory_budget is not None:
            opts.memory_budget = MemoryBudget.parse(opts.memory_budget,
                                                    option="memory_budget").value
        for flag in ("fuse", "triton_interpret"):
            value = getattr(opts, flag)
            if value is not None and not isinstance(value, bool):
                raise GraphoptError(f"{flag} must be True or False, got {value!r}")
        return opts


def _context(opts: BackendOptions, graph_id: int, role: str, **pass_options) -> PassContext:
    """The pass context of one graph: only the options its passes read (the forward, backward
    and inference lists read none; the joint graph's ``rematerialize`` reads the budget).
    ``triton_interpret`` is no pass option: it picks how the kernels run (:func:`_fusion_mode`)."""
    ctx = PassContext(options=pass_options)
    if opts.dump_dir:
        ctx.instruments.append(DumpInstrument(Path(opts.dump_dir) / f"graph{graph_id}_{role}"))
    return ctx


def _skipped_steps(mode: str | None, opts: BackendOptions) -> tuple[str, ...]:
    """The steps a graph does not need. Without fusion: ``decompose_ops`` (it turns norms,
    softmax and GELU into pointwise ops for the fusion planner; run one by one on ATen they are
    slower than the op they replace), ``fuse_ops`` and ``outline_groups``, and, unless the graphs
    are dumped, ``annotate_costs``: only fuse_ops and the dumps read the costs it refreshes."""
    if mode is not None:
        return ()
    return FUSION_STEPS if opts.dump_dir else (*FUSION_STEPS, "annotate_costs")


def _compile(gm: torch.fx.GraphModule, example_inputs, *, role: str, steps: list[str],
             opts: BackendOptions, graph_id: int, param_flags: list[bool] | None = None):
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    params = {name for name, flag in zip(placeholders, param_flags or []) if flag}
    graph = Graph(gm, name=f"graph{graph_id}_{role}", param_placeholders=params,
                  capture_mode="aot_autograd")
    ctx = _context(opts, graph_id, role)
    mode = _fusion_mode(opts, example_inputs)
    ctx.disabled.update(_skipped_steps(mode, opts))
    graph = run_pipeline(graph, steps, ctx)
    if mode is not None and "fusion" in ctx.artifacts:
        _bind_fusion(graph, ctx, mode, opts, graph_id, role)
    return _boxed(graph.gm)


def _fusion_mode(opts: BackendOptions, example_inputs) -> str | None:
    """How fused groups run: ``triton`` (CUDA), ``interpret`` (Triton's interpreter), ``aten``
    (the ATen subgraphs: CPU tensors with ``fuse=True``), or None (no fusion)."""
    on_cuda = any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs)
    if opts.fuse is False:
        return None
    if opts.triton_interpret:
        return "interpret"
    if on_cuda:
        return "triton"
    return "aten" if opts.fuse else None


def _bind_fusion(graph: Graph, ctx: PassContext, mode: str, opts: BackendOptions,
                 graph_id: int, role: str) -> None:
    """Swap the outlined groups for their kernels; dump the plan and sources if asked."""
    import importlib.util

    from graphopt.kernels import bind_kernels, kernel_sources
    from graphopt.kernels.report import write_fusion_dir
    if mode != "aten" and importlib.util.find_spec("triton") is None:
        raise GraphoptError("fused kernels need Triton: pip install triton, or pass "
                            "options={'fuse': False}")
    plan = ctx.artifacts["fusion"]
    bind_kernels(graph, plan, mode)
    if opts.dump_dir:
        write_fusion_dir(Path(opts.dump_dir) / f"graph{graph_id}_{role}", graph.name, plan,
                         kernel_sources(graph, plan))


def _boxed(gm: torch.fx.GraphModule):
    """The boxed calling convention, with code that empties the argument list as it reads it,
    so the backward pass frees each saved activation right after its last use."""
    from torch.fx.graph import _BoxedCodeGen
    gm.graph.set_codegen(_BoxedCodeGen())
    gm.recompile()
    forward = gm.forward

    def run(args):
        return forward(args)

    run._boxed_call = True
    return run


def _partition(joint_module: torch.fx.GraphModule, joint_inputs, *, opts: BackendOptions,
               graph_id: int, num_fwd_outputs: int, **kwargs):
    """aot_autograd's ``partition_fn`` under a memory budget: plan the joint graph, then split."""
    from graphopt.export import write_atomic
    from graphopt.memory.joint import joint_graph, split_joint
    from graphopt.memory.liveness import analyze
    from graphopt.memory.report import dumps, memory_report
    graph = joint_graph(joint_module, name=f"graph{graph_id}_joint")
    on_cuda = any(getattr(x, "is_cuda", False) for x in torch.utils._pytree.tree_leaves(
        joint_inputs))
    ctx = _context(opts, graph_id, "joint", memory_budget=opts.memory_budget,
                   num_fwd_outputs=num_fwd_outputs, fuse=bool(opts.fuse) or on_cuda,
                   remat_device=None if on_cuda else "cpu", remat_clamp=True)
    baseline = analyze(graph) if opts.dump_dir else None
    graph = run_pipeline(graph, TRAINING_JOINT, ctx)
    if opts.dump_dir and "remat" in ctx.artifacts:
        plan = ctx.artifacts["memory"]
        data = memory_report(model=graph.name, train=True, baseline=baseline,
                             plan=plan.liveness, arena=plan.arena,
                             total_flops=graph.total_flops, remat=ctx.artifacts["remat"],
                             budget=opts.memory_budget)
        write_atomic(Path(opts.dump_dir) / f"graph{graph_id}_memory.json", dumps(data))
    return split_joint(graph, joint_inputs, num_fwd_outputs=num_fwd_outputs, **kwargs)


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
    extra = {}
    if opts.memory_budget is not None:
        extra["partition_fn"] = functools.partial(_partition, **common)
    return aot_autograd(fw_compiler=fw, bw_compiler=bw, inference_compiler=inference, **extra)(
        gm, example_inputs)
