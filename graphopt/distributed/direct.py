"""The direct lowering: skip transfers sent straight to their consumer (traced frontend, GPipe).

Needs: :class:`~graphopt.partition.stages.Stages` whose crossing values are plain tensors.
Guarantees: a :class:`~graphopt.distributed.lowering.Lowered` (``lowering="direct"``) whose stage
modules run under ``torch.distributed.pipelining``'s traced frontend (``build_stage`` with a
``PipeInfo``): each value leaves its stage once per consumer stage, whatever the distance, so the
bytes are the plan's own count (one send per consumer), not the relay's bytes x hops.

The engine's rules, and how each is met (see the pitfalls of the traced frontend):

* the outer ``fx.Graph`` holds root placeholders, then the ``k`` stage ``call_module`` nodes in
  stage order, whose arguments are root placeholders (stage 0 only) or ``getitem``s of earlier
  stages, created in output-index order;
* a root input used by a later stage enters stage 0 and leaves it as an output;
* the backward of an output with two destinations is unsupported, so each (value, consumer)
  pair gets its own output slot; autograd sums the gradients of the copies;
* model outputs made before the last stage are sent to it: the loss reads the last stage alone;
* the receiver's placeholders are ordered like the sender's slots (producer, then position),
  because tensors between two stages match by posting order only.

GPipe only: 1F1B deadlocked on a skip over four stages (pytorch#127964), and the multi-stage
schedules allow adjacent stages only. The traced frontend also gives every received floating
tensor a gradient, so the backward bytes count every floating slot.
"""
from __future__ import annotations

import operator

import torch
import torch.fx
from torch.distributed.pipelining._utils import PipeInfo

from graphopt.distributed.lowering import Lowered, StageProgram
from graphopt.errors import GraphoptError, PlanError
from graphopt.partition.stages import Stages, value_specs

__all__ = ["lower_direct", "pipe_info", "restore_meta"]


def _consumers(stages: Stages, roots: list[str]) -> tuple[dict, dict]:
    """value -> producing stage, value -> sorted consumer stages (other than the producer)."""
    k = len(stages)
    producer = {name: 0 for name in roots}
    for st in stages.stages:
        for name in st.outputs:
            producer.setdefault(name, st.index)
    consumers: dict[str, set[int]] = {}
    for st in stages.stages:
        for name, _, _ in st.inputs:
            if producer.get(name, st.index) != st.index:
                consumers.setdefault(name, set()).add(st.index)
    for kind, name in stages.results:
        if kind == "value" and producer[name] != k - 1:
            consumers.setdefault(name, set()).add(k - 1)
    return producer, {v: sorted(c) for v, c in consumers.items()}


def lower_direct(stages: Stages, graph) -> Lowered:
    """Direct lowering of ``stages`` (see the module docstring)."""
    if graph.param_placeholders:
        raise PlanError(f"{graph.name}: parameters arrive as graph inputs (a piecewise capture); "
                        "capture with --capture export")
    k = len(stages)
    nodes = list(graph.fx_nodes())
    meta = {n.name: n.meta.get("val") for n in nodes}
    position = {n.name: i for i, n in enumerate(nodes)}
    roots = [n.name for n in graph.gm.graph.nodes if n.op == "placeholder"]
    producer, consumers = _consumers(stages, roots)
    for name in consumers:
        if not isinstance(meta.get(name), torch.Tensor):
            raise PlanError(f"value {name!r} crossing stages is not one tensor; the direct "
                            "lowering sends tensors only: use --lowering relay")
    slots = [[(v, c) for v in sorted((v for v in consumers if producer[v] == s),
                                     key=position.get) for c in consumers[v]] for s in range(k)]
    incoming = [sorted((v for v in consumers if s in consumers[v]),
                       key=lambda v: (producer[v], position[v])) for s in range(k)]
    results = [v for kind, v in stages.results if kind == "value"]
    programs = []
    for st in stages.stages:
        s = st.index
        ins = roots if s == 0 else incoming[s]
        outs = [v for v, _ in slots[s]] if s < k - 1 else results
        module = _stage_module(st, ins, outs, meta)
        names = set(ins) | set(outs)
        programs.append(StageProgram(
            index=s, module=module, args=list(ins), produces=list(outs), carry_in=list(ins),
            carry_out=list(outs), layouts={n: None for n in names},
            specs={n: value_specs(meta[n]) for n in names},
            grad={n: meta[n].dtype.is_floating_point for n in names},
            strides={n: [_contiguous_strides(meta[n].shape)] for n in names}))
    it = iter(range(len(results)))
    result_slots = [next(it) if kind == "value" else None for kind, _ in stages.results]
    consts = [None if kind == "value" else v for kind, v in stages.results]
    # the outer graph travels as its recipe: an fx.Graph does not pickle
    return Lowered(programs=programs, result_slots=result_slots, result_consts=consts,
                   root_inputs=roots, lowering="direct",
                   outer={"roots": roots, "slots": slots, "incoming": incoming,
                          "results": len(results)})


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, run = [], 1
    for size in reversed(list(shape)):
        strides.append(run)
        run *= max(int(size), 1)
    return tuple(reversed(strides))


def _dense_order(shape, stride) -> list[int] | None:
    """The permutation after which ``stride`` is dense and row-major, or None (gaps, overlap)."""
    order = sorted(range(len(shape)), key=lambda d: (-stride[d], -shape[d]))
    dims = [int(shape[d]) for d in order]
    if tuple(stride[d] for d in order) != _contiguous_strides(dims):
        return None
    return order


def _restrided(g: torch.fx.Graph, node: torch.fx.Node, shape, stride) -> torch.fx.Node:
    """``node`` (dense) laid out with ``stride`` again, in ATen ops a traced frontend can
    pickle and differentiate: permute to the dense order, copy, permute back."""
    order = _dense_order(shape, stride)
    if order is None:
        return node        # no dense layout to restore: the stage sees it row-major
    inverse = sorted(range(len(order)), key=order.__getitem__)
    aten = torch.ops.aten
    x = g.call_function(aten.permute.default, (node, order))
    x = g.call_function(aten.clone.default, (x,), {"memory_format": torch.contiguous_format})
    return g.call_function(aten.permute.default, (x, inverse))


def _stage_module(st, ins: list[str], outs: list[str], meta: dict) -> torch.fx.GraphModule:
    """The split stage's graph with placeholders ``ins`` (in order) and outputs ``outs``.

    Tensors travel dense (gloo sends contiguous tensors only): an output the graph made with
    other strides is made contiguous before it leaves, and a received one gets its captured
    strides back before the stage's ops see it (see ``lowering._restride``).
    """
    src = st.module.graph
    g = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    for name in ins:
        ph = g.placeholder(name)
        shape, stride = tuple(meta[name].shape), tuple(meta[name].stride())
        env[name] = ph if stride == _contiguous_strides(shape) else \
            _restrided(g, ph, shape, stride)
    for node in src.nodes:
        if node.op == "placeholder":
            if node.name not in env:
                raise PlanError(f"stage {st.index} reads {node.name!r}, which reaches it from "
                                "nowhere")
            continue
        if node.op == "output":
            continue
        env[node.name] = g.node_copy(node, lambda x: env[x.name])
    dense = {name: env[name] if tuple(meta[name].stride()) == _contiguous_strides(meta[name].shape)
             else g.call_function(torch.ops.aten.clone.default, (env[name],),
                                  {"memory_format": torch.contiguous_format})
             for name in dict.fromkeys(outs)}
    g.output(tuple(dense[name] for name in outs))
    g.lint()
    return torch.fx.GraphModule(st.module, g, class_name=f"DirectStage{st.index}")


def _outer_graph(roots, slots, incoming, results: int) -> torch.fx.Graph:
    """Every stage output is a ``getitem`` (the engine counts outputs by them), in index order;
    the last stage's feed the graph's output, so they are sent nowhere."""
    outer = torch.fx.Graph()
    source: dict[tuple[str, int], torch.fx.Node] = {}
    root_nodes = {name: outer.placeholder(name) for name in roots}
    k = len(slots)
    for s in range(k):
        args = tuple(root_nodes[r] for r in roots) if s == 0 else \
            tuple(source[(v, s)] for v in incoming[s])
        node = outer.call_module(f"submod_{s}", args)
        if s == k - 1:
            outer.output(tuple(outer.call_function(operator.getitem, (node, i))
                               for i in range(results)))
        for i, (v, c) in enumerate(slots[s]):
            source[(v, c)] = outer.call_function(operator.getitem, (node, i))
    return outer


def pipe_info(lowered: Lowered):
    """The ``PipeInfo`` every stage of a direct lowering is built with."""
    if lowered.lowering != "direct":
        raise GraphoptError("pipe_info needs a direct lowering")
    o = lowered.outer
    return PipeInfo(graph=_outer_graph(o["roots"], o["slots"], o["incoming"], o["results"]),
                    num_stages=len(lowered), has_loss_and_backward=True)


def restore_meta(module: torch.fx.GraphModule, program: StageProgram) -> None:
    """Put back the ``meta["val"]`` the traced frontend sizes its buffers from (a pickled
    GraphModule keeps its code, not its nodes' metadata): on the placeholders and outputs."""
    def fake(name):     # as it travels: dense
        (shape, dtype), = program.specs[name]
        return torch.empty_strided(shape, program.strides[name][0], dtype=dtype, device="meta")
    for node, name in zip((n for n in module.graph.nodes if n.op == "placeholder"),
                          program.carry_in):
        node.meta["val"] = fake(name)
    out = next(n for n in module.graph.nodes if n.op == "output")
    for node, name in zip(out.args[0], program.carry_out):
        node.meta["val"] = fake(name)
