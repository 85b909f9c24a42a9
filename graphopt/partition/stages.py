"""Split a partitioned graph into stage modules whose composition equals the model.

Needs: a :class:`~graphopt.graph.Graph` and a part for every node, with an acyclic graph of parts.
Guarantees: one ``torch.fx.GraphModule`` per part, in topological order of the parts; running
them in that order, feeding each the model inputs it holds and the tensors earlier stages
produced, gives exactly the graph's outputs (the same ATen calls on the same values).

Like ``torch.fx.passes.split_module``, but each stage owns the parameters it uses (copied as
``get_attr`` attributes, so a stage on another process needs nothing else) and records where
each of its inputs comes from and where each output goes — what a runtime that sends tensors
straight from producer to consumer, skipping stages in between, needs. O(V + E).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from graphopt.errors import PlanError

__all__ = ["Stage", "Stages", "split_graph", "value_specs", "value_layout"]


@dataclass
class Stage:
    """One part as a runnable module.

    Attributes:
        index: position in pipeline order (the rank that runs it).
        part: the plan's part number.
        module: takes ``inputs`` in order, returns a tuple of ``outputs`` in order.
        inputs: ``(value, "user", input position)`` or ``(value, "recv", source stage)``.
        outputs: values this stage returns (sent on, or model outputs).
        sends: value -> stages that consume it.
        specs: value -> ``[(shape, dtype), ...]`` of each received value's tensors.
        layout: value -> its structure (``None`` for a tensor, a tuple of layouts for a
            tuple), so a runtime can rebuild a received tuple from its flat tensors.
    """

    index: int
    part: int
    module: torch.fx.GraphModule
    inputs: list[tuple[str, str, int]]
    outputs: list[str]
    sends: dict[str, list[int]] = field(default_factory=dict)
    specs: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = field(default_factory=dict)
    layout: dict[str, object] = field(default_factory=dict)


@dataclass
class Stages:
    """All stages plus where the model's flat outputs come from."""

    stages: list[Stage]
    results: list[tuple[str, object]]   # ("value", name) or ("const", python value)
    owner: dict[str, int]               # value name -> stage producing it

    def __len__(self) -> int:
        return len(self.stages)

    def run(self, *inputs) -> tuple:
        """Run every stage in order in this process; returns the flat model outputs."""
        env: dict[str, object] = {}
        for st in self.stages:
            args = [inputs[i] if kind == "user" else env[name] for name, kind, i in st.inputs]
            out = st.module(*args)
            env.update(zip(st.outputs, out))
        return tuple(env[v] if kind == "value" else v for kind, v in self.results)


def value_specs(val) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of the tensors a (fake) value holds, flattened."""
    if isinstance(val, torch.Tensor):
        return [(tuple(int(s) for s in val.shape), val.dtype)]
    if isinstance(val, (tuple, list)):
        return [s for v in val for s in value_specs(v)]
    raise PlanError(f"cannot send a value of type {type(val).__name__} between stages")


def value_layout(val):
    """``None`` for a tensor, a tuple of layouts for a tuple or list."""
    if isinstance(val, (tuple, list)):
        return tuple(value_layout(v) for v in val)
    return None


def _fetch_attr(gm: torch.nn.Module, target: str):
    obj = gm
    for atom in target.split("."):
        obj = getattr(obj, atom)
    return obj


def _stage_order(parts: dict[str, int], graph, k: int) -> list[int]:
    """Topological order of the parts (smallest part first among ready ones)."""
    from graphopt.partition.metrics import part_order
    edges = set()
    for node in graph.fx_nodes():
        if graph.info[node.name].is_param:
            continue
        for user in node.users:
            if user.op != "output" and parts[user.name] != parts[node.name]:
                edges.add((parts[node.name], parts[user.name]))
    order = part_order(edges, k)
    if order is None:
        raise PlanError("the plan's parts depend on each other in a cycle: only an acyclic plan "
                        "(pipeline mode) runs as stages")
    return order


@dataclass
class _Split:
    """What every stage of one split looks things up in."""

    gm: torch.fx.GraphModule
    info: dict
    owner: dict[str, int]
    sends: dict[str, set[int]]
    model_outputs: set[str]
    user_pos: dict[str, int]
    by_name: dict[str, torch.fx.Node]
    position: dict[str, int]


def _close_constants(c: _Split, params: dict[str, torch.fx.Node]) -> None:
    """Add the inputs of every derived constant (a mask built from ``arange``, a transposed
    weight) to ``params``: the stage recomputes constants rather than receiving them."""
    todo = [n for n in params.values() if n.op == "call_function"]
    while todo:
        for a in todo.pop().all_input_nodes:
            if a.name not in params:
                params[a.name] = a
                if a.op == "call_function":
                    todo.append(a)


def _build_stage(c: _Split, idx: int, part: int, mine: list[torch.fx.Node]) -> Stage:
    """One stage: user inputs, then received values, then parameters, then its own nodes."""
    params: dict[str, torch.fx.Node] = {}
    recv: dict[str, None] = {}
    for n in mine:
        for a in n.all_input_nodes:
            if c.info[a.name].is_param:
                params.setdefault(a.name, a)
            elif c.owner[a.name] != idx:
                recv.setdefault(a.name)
    param_outs = sorted((name for name in c.model_outputs
                         if c.info[name].is_param and c.owner[name] == idx), key=c.position.get)
    for name in param_outs:
        params.setdefault(name, c.by_name[name])
    _close_constants(c, params)
    g = torch.fx.Graph()
    env: dict[str, torch.fx.Node] = {}
    inputs: list[tuple[str, str, int]] = []
    specs, layout = {}, {}

    def placeholder(node: torch.fx.Node) -> None:
        env[node.name] = g.placeholder(node.name)
        env[node.name].meta = dict(node.meta)

    user = [n for n in mine if n.op == "placeholder"] + \
        [a for a in params.values() if a.op == "placeholder"]   # parameters passed as inputs
    for n in sorted(user, key=lambda x: c.position[x.name]):
        placeholder(n)
        inputs.append((n.name, "user", c.user_pos[n.name]))
    for name in sorted(recv, key=c.position.get):
        src = c.by_name[name]
        placeholder(src)
        inputs.append((name, "recv", c.owner[name]))
        specs[name] = value_specs(src.meta.get("val"))
        layout[name] = value_layout(src.meta.get("val"))
    root: dict[str, object] = {}
    for a in sorted((x for x in params.values() if x.op != "placeholder"),
                    key=lambda x: c.position[x.name]):
        env[a.name] = g.node_copy(a, lambda x: env[x.name])
        if a.op == "get_attr":
            root[a.target] = _fetch_attr(c.gm, a.target)
    for n in mine:
        if n.op != "placeholder":
            env[n.name] = g.node_copy(n, lambda x: env[x.name])
    outs = [n.name for n in mine if n.name in c.sends or n.name in c.model_outputs] + param_outs
    g.output(tuple(env[o] for o in outs))
    g.lint()
    module = torch.fx.GraphModule(root, g, class_name=f"Stage{idx}")
    return Stage(index=idx, part=part, module=module, inputs=inputs, outputs=outs,
                 sends={o: sorted(c.sends[o]) for o in outs if o in c.sends}, specs=specs,
                 layout=layout)


def split_graph(graph, parts: dict[str, int], k: int) -> Stages:
    """Cut ``graph`` into one module per part (see the module docstring).

    Example:
        >>> stages = split_graph(graph, {name: part, ...}, 2)
        >>> torch.testing.assert_close(stages.run(x), graph.run(x))
    """
    gm = graph.gm
    fx_nodes = list(graph.fx_nodes())
    info = graph.info
    order = _stage_order(parts, graph, k)
    stage_of = {p: i for i, p in enumerate(order)}
    placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    user_pos = {name: i for i, name in enumerate(placeholders)}
    out_node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    out_args = out_node.args[0]
    out_items = list(out_args) if isinstance(out_args, (tuple, list)) else [out_args]
    results = [("value", a.name) if isinstance(a, torch.fx.Node) else ("const", a)
               for a in out_items]
    model_outputs = {v for kind, v in results if kind == "value"}

    def holder(name: str) -> int:
        return stage_of[parts[name]]

    owner = {n.name: holder(n.name) for n in fx_nodes if not info[n.name].is_param}
    sends: dict[str, set[int]] = {}
    for node in fx_nodes:
        if info[node.name].is_param:
            continue
        for user in node.users:
            if user.op != "output" and holder(user.name) != owner[node.name]:
                sends.setdefault(node.name, set()).add(holder(user.name))
    for name in model_outputs:
        if name not in owner:  # a parameter returned as an output: its lowest part makes it
            owner[name] = holder(name)

    ctx = _Split(gm=gm, info=info, owner=owner, sends=sends, model_outputs=model_outputs,
                 user_pos=user_pos, by_name={n.name: n for n in fx_nodes},
                 position={n.name: i for i, n in enumerate(fx_nodes)})
    stages = []
    for idx, p in enumerate(order):
        mine = [n for n in fx_nodes if owner.get(n.name) == idx and not info[n.name].is_param]
        stages.append(_build_stage(ctx, idx, p, mine))
    return Stages(stages=stages, results=results, owner=owner)

