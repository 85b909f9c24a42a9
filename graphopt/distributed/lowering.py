"""Lower a pipeline plan to ``torch.distributed.pipelining`` stages, relaying skip transfers.

Needs: :class:`~graphopt.partition.stages.Stages` (from ``Partition.split``): one ATen
``GraphModule`` per stage whose parameters are ``get_attr`` attributes inside it, so each stage
module carries exactly the weights it uses, and values cheap to recompute (masks, ``arange``,
transposed weights: the graph's derived constants) are recomputed by every stage that needs them.

Guarantees: :func:`lower` returns one :class:`StageProgram` per stage in pipeline order.
:class:`RelayStage` wraps a program as the module a manual ``PipelineStage`` runs: stage ``s``
takes the flat tensors of ``carry_in(s)`` and returns those of ``carry_out(s) = carry_in(s + 1)``
in the same canonical order (producer position in the graph, then tensor index), because the
engine matches tensors between two stages by posting order alone. Every root input enters stage
0; the last stage returns the model's outputs (the loss reads them).

Why relay: the manual frontend only sends stage ``i -> i + 1``, and that restriction is what
makes every schedule (GPipe, 1F1B, interleaved, zero-bubble) and every DP wrapper work. A value
made on stage ``a`` and last needed on stage ``b`` is therefore sent ``b - a`` times, once per
boundary it crosses, and held by every stage in between: :func:`relay_bytes` counts that, the
number the plan's ``comm_bytes`` (one send per consumer stage) understates.

Weights two stages share (a tied embedding and LM head) become one copy per stage;
:func:`tied_parameters` names them so the runtime can sum their gradients before the optimizer
step. O(V + E) over the graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from graphopt.autodiff import _NO_GRAD_OPS, _differentiable, requires_grad_map
from graphopt.errors import PlanError
from graphopt.partition.stages import Stages, value_layout, value_specs

__all__ = ["StageProgram", "Lowered", "lower", "RelayStage", "relay_bytes", "tied_parameters",
           "flatten_value", "rebuild_value", "requires_grad_map", "gradient_sources",
           "unused_parameters"]


@dataclass
class StageProgram:
    """What one pipeline stage runs, by value name.

    Attributes:
        index: stage index in pipeline order.
        module: the stage's ATen module (takes ``args``, returns ``produces``).
        args: the module's inputs.
        produces: the module's outputs.
        carry_in: values entering the stage (stage 0: the root inputs, in order).
        carry_out: values leaving it (the last stage: the model's outputs, in order).
        layouts: value -> structure (``None`` for a tensor, nested tuples for tuples).
        specs: value -> ``[(shape, dtype), ...]`` of its tensors.
        grad: value -> whether its floating tensors depend on a trainable weight.
        strides: value -> the strides each of its tensors had in the captured graph.
    """

    index: int
    module: torch.fx.GraphModule
    args: list[str]
    produces: list[str]
    carry_in: list[str]
    carry_out: list[str]
    layouts: dict[str, object] = field(default_factory=dict)
    specs: dict[str, list] = field(default_factory=dict)
    grad: dict[str, bool] = field(default_factory=dict)
    strides: dict[str, list] = field(default_factory=dict)

    def examples(self, names: list[str], device="meta") -> tuple[torch.Tensor, ...]:
        """Empty tensors shaped like the flat tensors of ``names``, flagged ``requires_grad``
        where a gradient flows back: the static metadata a ``PipelineStage`` takes, so it never
        runs a warm-up forward (or the loss) on uninitialized buffers."""
        out = []
        for name in names:
            for shape, dtype in self.specs[name]:
                t = torch.empty(shape, dtype=dtype, device=device)
                if dtype.is_floating_point and self.grad.get(name, False):
                    t.requires_grad_(True)
                out.append(t)
        return tuple(out)

    def wire_bytes(self, names: list[str], *, grads_only: bool = False) -> int:
        """Bytes of the tensors of ``names`` (only those that carry a gradient back)."""
        total = 0
        for name in names:
            if grads_only and not self.grad.get(name, False):
                continue
            for shape, dtype in self.specs[name]:
                if grads_only and not dtype.is_floating_point:
                    continue
                n = 1
                for s in shape:
                    n *= int(s)
                total += n * torch.empty((), dtype=dtype).element_size()
        return total


@dataclass
class Lowered:
    """All stage programs plus where the model's outputs sit in the last stage's outputs."""

    programs: list[StageProgram]
    result_slots: list[int | None]   # per graph output: flat index in the last stage's output
    result_consts: list[object]      # per graph output: the constant when the slot is None
    root_inputs: list[str]
    lowering: str = "relay"          # or "direct" (graphopt.distributed.direct)
    outer: object = None             # direct: the outer fx.Graph the traced frontend reads

    def __len__(self) -> int:
        return len(self.programs)


def flatten_value(val) -> list[torch.Tensor]:
    """The tensors of a value (a tensor, or nested tuples of tensors), depth first."""
    if isinstance(val, torch.Tensor):
        return [val]
    return [t for v in val for t in flatten_value(v)]


def rebuild_value(layout, it):
    """Inverse of :func:`flatten_value` given the value's layout and an iterator of tensors."""
    if layout is None:
        return next(it)
    return tuple(rebuild_value(x, it) for x in layout)


def _roots(stages: Stages, graph, example) -> tuple[list[str], dict[str, object]]:
    """The root inputs' names in order and their (fake or example) values."""
    if graph is not None:
        nodes = [n for n in graph.gm.graph.nodes if n.op == "placeholder"]
        return [n.name for n in nodes], {n.name: n.meta.get("val") for n in nodes}
    by_pos = {pos: name for st in stages.stages for name, kind, pos in st.inputs if kind == "user"}
    count = len(example) if example is not None else max(by_pos, default=-1) + 1
    names = [by_pos.get(i, f"input_{i}") for i in range(count)]
    vals = {name: example[i] for i, name in enumerate(names)} if example is not None else {}
    return names, vals


def lower(stages: Stages, graph=None, *, example=None) -> Lowered:
    """Relay lowering of ``stages`` (see the module docstring).

    Args:
        stages: from ``Partition.split(graph)``.
        graph: the graph the stages were split from: names every root input and which values
            carry gradients. Without it (inference), roots come from the stages' inputs and
            ``example`` (one micro-batch of flat inputs), and nothing carries a gradient.

    Example:
        >>> low = lower(plan.split(graph), graph)
        >>> [p.carry_in for p in low.programs]      # what crosses each boundary
    """
    if graph is not None and graph.param_placeholders:
        raise PlanError(f"{graph.name}: parameters arrive as graph inputs (a piecewise capture); "
                        "training needs one graph with parameters inside: capture with "
                        "--capture export")
    k = len(stages)
    roots, meta = _roots(stages, graph, example)
    position = {name: (-1, i) for i, name in enumerate(roots)}
    for st in stages.stages:
        for i, node in enumerate(st.module.graph.nodes):
            if node.op != "output":
                meta.setdefault(node.name, node.meta.get("val"))
                if node.op != "placeholder":
                    position.setdefault(node.name, (st.index, i))
    producer = {name: 0 for name in roots}
    for st in stages.stages:
        for name in st.outputs:
            producer.setdefault(name, st.index)
    last_need: dict[str, int] = {}
    for st in stages.stages:
        for name, _, _ in st.inputs:
            last_need[name] = max(last_need.get(name, -1), st.index)
    results = [v for kind, v in stages.results if kind == "value"]
    for name in results:
        last_need[name] = k          # needed after the last stage: the loss reads it
    carry = [list(roots)]
    for s in range(1, k):
        carry.append(sorted((v for v in producer if producer[v] < s <= last_need.get(v, -1)),
                            key=lambda v: position[v]))
    carry.append(list(results))
    grad = requires_grad_map(graph) if graph is not None else {}
    programs = []
    for st in stages.stages:
        s = st.index
        names = set(carry[s]) | set(carry[s + 1]) | {n for n, _, _ in st.inputs}
        layouts, specs, strides = {}, {}, {}
        for name in names:
            val = meta.get(name)
            if val is None:
                raise PlanError(f"value {name!r} has no recorded shape: capture with torch.export")
            layouts[name] = value_layout(val)
            specs[name] = value_specs(val)
            strides[name] = [tuple(int(x) for x in t.stride()) for t in flatten_value(val)]
        available = set(carry[s]) | set(st.outputs)
        missing = [v for v in carry[s + 1] if v not in available]
        if missing:
            raise PlanError(f"stage {s} must pass on {missing[0]!r} but neither receives nor "
                            "makes it: the plan's stages are not in pipeline order")
        programs.append(StageProgram(index=s, module=st.module,
                                     args=[n for n, _, _ in st.inputs], produces=list(st.outputs),
                                     carry_in=carry[s], carry_out=carry[s + 1], layouts=layouts,
                                     specs=specs, grad={n: grad.get(n, False) for n in names},
                                     strides=strides))
    # the last stage returns every result value in order: slot i is its first flat tensor
    last, starts, running = programs[-1], [], 0
    for name in last.carry_out:
        starts.append(running)
        running += len(last.specs[name])
    it = iter(starts)
    slots = [next(it) if kind == "value" else None for kind, _ in stages.results]
    consts = [None if kind == "value" else v for kind, v in stages.results]
    return Lowered(programs=programs, result_slots=slots, result_consts=consts, root_inputs=roots)


def _carries_grad(node) -> bool | None:
    """Whether ``node``'s value can carry a gradient (None: its value was not recorded), by
    the rule of :func:`graphopt.autodiff.requires_grad_map`."""
    val = node.meta.get("val")
    if val is None:
        return None
    if node.op == "call_function" and any(w in str(node.target) for w in _NO_GRAD_OPS):
        return False
    return _differentiable(val)


def gradient_sources(program: StageProgram) -> dict[str, frozenset[tuple[str, str]]] | None:
    """Each value leaving ``program`` -> where its gradient flows back to in the stage:
    ``("param", target)`` for a trainable weight, ``("in", name)`` for a value it received.
    ``None`` where a value's metadata is missing (nothing can be said)."""
    gm = program.module
    reach: dict[str, frozenset] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            reach[node.name] = frozenset([("in", node.name)]) \
                if program.grad.get(node.name, False) else frozenset()
        elif node.op == "get_attr":
            obj = gm
            for atom in str(node.target).split("."):
                obj = getattr(obj, atom, None)
            trainable = isinstance(obj, torch.Tensor) and obj.requires_grad
            reach[node.name] = frozenset([("param", str(node.target))]) if trainable \
                else frozenset()
        elif node.op != "output":
            carries = _carries_grad(node)
            if carries is None:
                return None
            reach[node.name] = frozenset().union(
                *(reach.get(a.name, frozenset()) for a in node.all_input_nodes)) \
                if carries else frozenset()
    out = {}
    for name in program.carry_out:
        if name in reach:
            out[name] = reach[name]
        else:                       # relayed through untouched
            out[name] = frozenset([("in", name)]) if program.grad.get(name, False) \
                else frozenset()
    return out


def unused_parameters(lowered: Lowered, loss_outputs: list[int]) -> dict[int, set[str] | None]:
    """Stage -> its trainable weights (``get_attr`` targets) that no gradient reaches when the
    backward starts from the last stage's flat outputs ``loss_outputs``; ``None`` for a stage
    where that cannot be worked out (take it that some are unused).

    Walks the stages from last to first, following each needed output back to the weights and
    received values it depends on; a received value is then needed from its producer.
    """
    needed: set[str] = set()
    last = lowered.programs[-1]
    flat = [name for name in last.carry_out for _ in last.specs[name]]
    needed.update(flat[i] for i in loss_outputs)
    out: dict[int, set[str] | None] = {}
    unknown = False
    for prog in reversed(lowered.programs):
        sources = None if unknown else gradient_sources(prog)
        trainable = {str(n.target) for n in prog.module.graph.nodes if n.op == "get_attr"
                     and any(p.requires_grad for p in _attr(prog.module, str(n.target)))}
        if sources is None:         # the gradient paths through this stage are not known
            unknown = True
            out[prog.index] = None
            continue
        used = set()
        for name in prog.carry_out:
            if name in needed:
                for kind, what in sources[name]:
                    (used.add if kind == "param" else needed.add)(what)
        out[prog.index] = trainable - used
    return out


def _attr(module: nn.Module, target: str) -> list[torch.Tensor]:
    obj = module
    for atom in target.split("."):
        obj = getattr(obj, atom, None)
    return [obj] if isinstance(obj, torch.Tensor) else []


def _restride(t: torch.Tensor, stride: tuple) -> torch.Tensor:
    """``t`` with the strides its value had in the captured graph.

    Tensors travel contiguous, but export chose ``view`` over ``reshape`` from the strides it
    saw: SDPA's output follows its query's memory order, and a later ``view`` of its transpose
    is legal only in that order. A copy restores the layout where it differs.
    """
    if t.dim() == 0 or tuple(t.stride()) == tuple(stride) or 0 in stride:
        return t        # (a broadcast's zero strides cannot be written into: keep it dense)
    out = torch.empty_strided(t.shape, stride, dtype=t.dtype, device=t.device)
    return out.copy_(t)


class RelayStage(nn.Module):
    """The module a ``PipelineStage`` wraps: flat ``carry_in`` tensors in, ``carry_out`` out.

    Pass-through floating tensors that carry a gradient leave as ``view_as`` of themselves: an
    output that is one of the stage's own input leaves would have no ``grad_fn`` and would be
    detached in place by the last stage. ``fresh_outputs`` (zero-bubble schedules) clones every
    output that carries a gradient instead: their split backward detaches the stage outputs in
    place after the input gradients, and an output autograd saved for the weight gradients
    (a ReLU's result) must not be that tensor. The clone costs one copy of what the stage sends.
    """

    def __init__(self, program: StageProgram, *, fresh_outputs: bool = False):
        super().__init__()
        self.inner = program.module
        self.args = list(program.args)
        self.produces = list(program.produces)
        self.carry_in = list(program.carry_in)
        self.carry_out = list(program.carry_out)
        self.layouts = dict(program.layouts)
        self.stage_index = program.index
        self.fresh_outputs = fresh_outputs
        self.in_strides = [st for name in self.carry_in for st in program.strides[name]]

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        it = iter(_restride(t, s) for t, s in zip(flat, self.in_strides))
        env = {name: rebuild_value(self.layouts[name], it) for name in self.carry_in}
        outs = self.inner(*[env[a] for a in self.args])
        env.update(zip(self.produces, outs))
        incoming = set(self.carry_in)
        result = []
        for name in self.carry_out:
            for t in flatten_value(env[name]):
                if t.requires_grad and self.fresh_outputs:
                    t = t.clone()
                elif name in incoming and t.requires_grad:
                    t = t.view_as(t)
                result.append(t if t.is_contiguous() else t.contiguous())
        return tuple(result)


def relay_bytes(lowered: Lowered, placement: list[int]) -> dict:
    """Bytes one micro-batch sends between ranks under the relay lowering.

    A boundary ``s -> s + 1`` whose stages share a rank (the V placement's turn) sends nothing.

    Returns:
        ``{"forward": B, "backward": B, "per_boundary": [(s, fwd, bwd), ...]}``.
    """
    fwd = bwd = 0
    rows = []
    for p in lowered.programs[:-1]:
        if placement[p.index] == placement[p.index + 1]:
            rows.append((p.index, 0, 0))
            continue
        f = p.wire_bytes(p.carry_out)
        b = p.wire_bytes(p.carry_out, grads_only=True)
        fwd, bwd = fwd + f, bwd + b
        rows.append((p.index, f, b))
    return {"forward": fwd, "backward": bwd, "per_boundary": rows}


def tied_parameters(lowered: Lowered) -> list[list[tuple[int, str]]]:
    """Groups of ``(stage, parameter name)`` that are one weight of the model held by several
    stages (found by tensor identity: a tied weight may have a different name in each stage)."""
    seen: dict[int, list[tuple[int, str]]] = {}
    for p in lowered.programs:
        for name, param in p.module.named_parameters(remove_duplicate=True):
            if param.requires_grad:
                seen.setdefault(id(param), []).append((p.index, name))
    return [members for members in seen.values() if len({s for s, _ in members}) > 1]
