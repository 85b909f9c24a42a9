"""Capture: a model and example inputs become a cost-annotated ATen :class:`~graphopt.graph.Graph`.

Modes, tried in this order by ``mode="auto"``:

1. ``export``: ``torch.export.export(strict=False)`` then ``run_decompositions({})``: a functional
   ATen graph where composite ops (linear, layer_norm, SDPA) stay whole. Works on the transformers
   models (use_cache off) where ``symbolic_trace`` fails.
2. ``dynamo``: ``torch.export`` in strict mode (TorchDynamo bytecode capture).
3. ``symbolic_trace``: ``torch.fx.symbolic_trace`` lowered to ATen with ``make_fx``; only for simple
   modules, kept as the last resort.

Shapes come from fake tensors (``node.meta['val']``): no real compute runs on the example inputs.
When nothing captures one whole graph, TorchDynamo's explain names the graph breaks (where and why)
and :func:`capture_pieces` returns the pieces between them.

Parameters and buffers appear as ``get_attr`` nodes, so a graph split into stages keeps each
parameter with the stage that uses it. A tied weight (one tensor under two names, as GPT-2's
embedding and LM head) is one node, so it is counted once (:func:`merge_tied`). The graph takes
the flat user inputs and returns a flat tuple.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.utils._pytree as pytree

from graphopt.errors import CaptureError, first_line, user_frame
from graphopt.graph import Graph

__all__ = ["capture", "capture_pieces", "graph_from_fx", "GraphBreak", "Pieces", "MODES"]

MODES = ("auto", "export", "dynamo", "symbolic_trace")

# Runtime checks that export leaves behind; they return nothing and constrain nothing we use.
_ASSERT_OPS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
               "_assert_async", "sym_constrain_range"}


@contextlib.contextmanager
def quiet_torch():
    """Silence torch's logging, warnings and stderr prints while a tracer tries (and maybe fails).

    torch.export prints the partial graph to stderr when it fails; our error says it in one line.
    """
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


# TorchDynamo's internal break reasons, said the way a user thinks of them.
_BREAK_WORDS = {"generic_jump": "data-dependent control flow (a Python branch on a tensor value)",
                "data dependent operator": "a data-dependent operator (output shape depends on values)",
                "Unsupported: call_function": "a call TorchDynamo cannot trace"}


def _plain_reason(reason: str) -> str:
    for key, words in _BREAK_WORDS.items():
        if key in reason:
            return f"{words} [{reason}]"
    return reason


@dataclass
class GraphBreak:
    """Where TorchDynamo had to stop the graph, and why."""

    reason: str
    location: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class Pieces:
    """A model captured as several graphs because of graph breaks."""

    graphs: list[Graph]
    breaks: list[GraphBreak] = field(default_factory=list)


def _as_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, tuple):
        return example_inputs
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    return (example_inputs,)


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target._opname
    return getattr(target, "__name__", "")


def _attr(gm: torch.nn.Module, target: str):
    obj = gm
    for part in str(target).split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def merge_tied(gm: torch.fx.GraphModule) -> dict[str, list[str]]:
    """One ``get_attr`` node per tensor: a tied weight (GPT-2's token embedding and LM head,
    one ``Parameter`` under two names) comes out of export as two ``get_attr`` nodes; the
    later ones' uses move to the first, so the weight is one node, counted and placed once.
    Identity is the tensor object (``named_parameters(remove_duplicate=False)`` lists both
    names for it). Returns ``{kept node: [other names of the tensor]}``; the kept node's
    ``meta["tied"]`` holds them too."""
    kept: dict[int, torch.fx.Node] = {}
    merged: dict[str, list[str]] = {}
    for node in list(gm.graph.nodes):
        if node.op != "get_attr":
            continue
        t = _attr(gm, node.target)
        if not isinstance(t, torch.Tensor):
            continue
        first = kept.setdefault(id(t), node)
        if first is node:
            continue
        node.replace_all_uses_with(first)
        gm.graph.erase_node(node)
        merged.setdefault(first.name, []).append(str(node.target))
        first.meta.setdefault("tied", []).append(str(node.target))
    return merged


def _clean(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop export's guard module and assertion nodes; make the module take flat inputs; one
    node per tied weight (:func:`merge_tied`)."""
    g = gm.graph
    merge_tied(gm)
    for node in list(g.nodes):
        is_assert = node.op == "call_function" and _target_name(node.target) in _ASSERT_OPS
        is_guard = node.op == "call_module" and str(node.target).startswith("_guards")
        if (is_assert or is_guard) and not node.users:
            g.erase_node(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards"):
            delattr(gm, name)
    g._codegen = torch.fx.graph.CodeGen()
    g.lint()
    gm.recompile()
    return gm


def graph_from_fx(gm: torch.fx.GraphModule, *, name: str = "graph",
                  param_placeholders: set[str] | None = None, capture_mode: str = "manual",
                  out_spec=None, capture_seconds: float = 0.0) -> Graph:
    """Wrap an ATen-level GraphModule whose nodes carry ``meta['val']`` (e.g. from aot_autograd)."""
    return Graph(gm, name=name, param_placeholders=param_placeholders, capture_mode=capture_mode,
                 out_spec=out_spec, capture_seconds=capture_seconds)


def _capture_export(model, args, kwargs, strict: bool):
    ep = torch.export.export(model, args, kwargs or None, strict=strict)
    ep = ep.run_decompositions({})
    gm = ep.module()
    out_spec = getattr(gm, "_out_spec", None)
    if out_spec is None:
        info = getattr(gm.graph._codegen, "pytree_info", None)
        out_spec = info.out_spec if info is not None else None
    return _clean(gm), out_spec


def _capture_symbolic(model, args, kwargs):
    from torch.fx.experimental.proxy_tensor import make_fx
    if kwargs:
        raise CaptureError("symbolic_trace capture takes positional example inputs only")
    traced = torch.fx.symbolic_trace(model)
    flat_out_spec = {}

    def flat_forward(*a):
        out, spec = pytree.tree_flatten(traced(*a))
        flat_out_spec["spec"] = spec
        return tuple(out)

    gm = make_fx(flat_forward, tracing_mode="fake", _allow_non_fake_inputs=True)(*args)
    return _clean(gm), flat_out_spec.get("spec")


def _flat_user_inputs(args, kwargs) -> list:
    return pytree.tree_leaves((args, kwargs or {}))


def capture(model: torch.nn.Module, example_inputs, example_kwargs: dict | None = None, *,
            mode: str = "auto", name: str | None = None) -> Graph:
    """Capture ``model`` on ``example_inputs`` as one cost-annotated ATen graph.

    Args:
        model: any ``torch.nn.Module`` (or a function of tensors for ``symbolic_trace``).
        example_inputs: a tuple of positional inputs (a single tensor is accepted).
        example_kwargs: keyword inputs, passed through to ``torch.export``.
        mode: ``auto`` (export, then dynamo, then symbolic_trace), or one of them alone.
        name: the name reports use (defaults to the model's class name).

    Returns:
        A :class:`Graph` whose ``run(*flat_inputs)`` equals the model.

    Raises:
        CaptureError: naming the construct that stopped capture and what to try instead.

    Example:
        >>> import graphopt, torch
        >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU())
        >>> g = graphopt.capture(mlp, (torch.randn(4, 8),))
        >>> g.total_flops            # 2*4*8*16 for the matmul + 4*16 for the ReLU
        1088
    """
    if mode not in MODES:
        raise CaptureError(f"unknown capture mode {mode!r}; choose one of {', '.join(MODES)}")
    args = _as_tuple(example_inputs)
    name = name or type(model).__name__
    tries = {"export": lambda: _capture_export(model, args, example_kwargs, strict=False),
             "dynamo": lambda: _capture_export(model, args, example_kwargs, strict=True),
             "symbolic_trace": lambda: _capture_symbolic(model, args, example_kwargs)}
    order = list(tries) if mode == "auto" else [mode]
    failures: list[tuple[str, BaseException]] = []
    for m in order:
        start = time.perf_counter()
        try:
            with quiet_torch():
                gm, out_spec = tries[m]()
        except CaptureError:
            raise
        except Exception as exc:  # noqa: BLE001 - every tracer fails in its own way
            failures.append((m, exc))
            continue
        seconds = time.perf_counter() - start
        notes = [f"{fm} capture failed: {first_line(e, 160)}" for fm, e in failures]
        return Graph(gm, name=name, capture_mode=m, out_spec=out_spec,
                     capture_seconds=seconds, notes=notes)
    raise CaptureError(_explain_failure(model, args, example_kwargs, failures))


def _explain_failure(model, args, kwargs, failures) -> str:
    """One line: which construct stopped capture, where, and what to try."""
    mode, exc = failures[0]
    where = user_frame(exc)
    breaks = []
    if len(failures) > 1 or mode != "symbolic_trace":
        try:
            breaks = find_graph_breaks(model, args, kwargs)
        except Exception:  # noqa: BLE001 - diagnosis is best effort; the first error still stands
            breaks = []
    if breaks:
        first = breaks[0]
        more = f" (+{len(breaks) - 1} more)" if len(breaks) > 1 else ""
        return (f"cannot capture {type(model).__name__} as one graph: graph break at {first}{more}; "
                "use graphopt.capture_pieces() for the pieces, or torch.compile(model, "
                "backend='graphopt') which handles breaks")
    at = f" at {where}" if where else ""
    tried = ", ".join(m for m, _ in failures)
    hint = ("try mode='export' with use_cache=False for transformers models, or make the "
            "data-dependent control flow static")
    return f"cannot capture {type(model).__name__} ({tried} failed){at}: {first_line(exc)}; {hint}"


def find_graph_breaks(model, example_inputs, example_kwargs=None) -> list[GraphBreak]:
    """Ask TorchDynamo where it breaks the graph (compiles the model once, runs nothing twice)."""
    import torch._dynamo as dynamo
    args = _as_tuple(example_inputs)
    dynamo.reset()
    with quiet_torch():
        explained = dynamo.explain(model)(*args, **(example_kwargs or {}))
    dynamo.reset()
    out = []
    for reason in explained.break_reasons:
        stack = getattr(reason, "user_stack", None) or []
        loc = f"{stack[-1].filename}:{stack[-1].lineno}" if stack else "unknown location"
        if stack and stack[-1].line:
            loc += f" `{stack[-1].line.strip()}`"
        out.append(GraphBreak(reason=_plain_reason(first_line(reason.reason, 160)), location=loc))
    return out


def capture_pieces(model: torch.nn.Module, example_inputs, example_kwargs: dict | None = None,
                   *, name: str | None = None) -> Pieces:
    """Capture a model that has graph breaks as the list of graphs TorchDynamo runs between them.

    Each piece is lowered to ATen with ``make_fx`` on fake tensors; its parameter inputs are marked
    ``is_param``. The model runs once (the Python between pieces needs real values).

    Example:
        >>> pieces = graphopt.capture_pieces(model, (x,))
        >>> [len(g) for g in pieces.graphs], [str(b) for b in pieces.breaks]
    """
    import torch._dynamo as dynamo
    from torch.fx.experimental.proxy_tensor import make_fx

    args = _as_tuple(example_inputs)
    name = name or type(model).__name__
    param_ids = {id(t) for t in list(model.parameters()) + list(model.buffers())}
    graphs: list[Graph] = []

    def record(gm: torch.fx.GraphModule, inputs):
        start = time.perf_counter()
        with quiet_torch():
            aten = make_fx(gm, tracing_mode="fake")(*inputs)
        aten = _clean(aten)
        placeholders = [n for n in aten.graph.nodes if n.op == "placeholder"]
        params = {p.name for p, v in zip(placeholders, inputs) if id(v) in param_ids}
        graphs.append(Graph(aten, name=f"{name}[{len(graphs)}]", param_placeholders=params,
                            capture_mode="dynamo-pieces",
                            capture_seconds=time.perf_counter() - start))
        return gm.forward

    dynamo.reset()
    try:
        with torch.no_grad(), quiet_torch():
            torch.compile(model, backend=record, fullgraph=False)(*args, **(example_kwargs or {}))
    except Exception as exc:  # noqa: BLE001
        raise CaptureError(f"cannot capture {name} even in pieces: {first_line(exc)}") from exc
    finally:
        dynamo.reset()
    return Pieces(graphs=graphs, breaks=find_graph_breaks(model, args, example_kwargs))
