"""The partition plan: what ``partition.json`` holds, read back with validation, run as stages.

A :class:`Partition` is the contract's ``graphopt.partition/1`` document: every node with its part
and cost, the data edges, and a summary. The summary is never stored state: it is recomputed
from the nodes and edges each time (:meth:`Partition.metrics`), so a plan edited by hand or read
from disk reports its own numbers. :meth:`Partition.split` turns the plan into stage modules whose
composition equals the model.

Reading is strict: a malformed file raises :class:`~graphopt.errors.PlanError` with one line
naming the file, the node or edge, and what is wrong.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.errors import PlanError
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.metrics import Metrics, compute_metrics, pipeline_estimate
from graphopt.partition.search import MODES

__all__ = ["Partition", "SCHEMA", "NODE_FIELDS"]

SCHEMA = "graphopt.partition/1"
# a node record's fields, in the order partition.json writes them (the contract's, then
# ``seconds``: roofline time, and ``compute``: whether the node does work)
NODE_FIELDS = ("name", "op", "target", "part", "flops", "out_bytes", "is_param", "seconds",
               "compute")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class Partition:
    """A plan placing every node of a graph on one of ``k`` parts.

    Example:
        >>> plan = Partition.from_json("out/partition.json")
        >>> plan.summary()["comm_bytes"], plan.metrics().stage_ordered
        >>> stages = plan.split(graph)          # graph: the Graph the plan was made for
        >>> outputs = stages.run(*inputs)       # equals graph.run(*inputs)
    """

    def __init__(self, *, model: str, k: int, mode: str, nodes: list[dict] | None = None,
                 edges: list[dict] | None = None, method: str = "",
                 options: dict | None = None, notes: list[str] | None = None,
                 baselines: dict | None = None, candidates: list | None = None,
                 seconds: float = 0.0, source: str = "plan", cost_graph: CostGraph | None = None,
                 part: np.ndarray | None = None, splits: list | None = None) -> None:
        if (nodes is None or edges is None) and (cost_graph is None or part is None):
            raise ValueError("a Partition needs nodes and edges, or a cost graph and parts")
        self.model, self.k, self.mode = model, int(k), mode
        self._nodes, self._edges = nodes, edges
        self.method = method
        self.options = dict(options or {})
        self.notes = list(notes or [])
        self.baselines = dict(baselines or {})
        self.candidates = list(candidates or [])
        self.seconds = float(seconds)
        self.source = source
        # the cuts made before partitioning (graphopt.partition.cut_plan.Cut.to_dict records): a graph
        # captured again must be cut the same way before the plan applies to it
        self.splits = list(splits or [])
        self._cg: CostGraph | None = cost_graph
        self._part = None if part is None else np.asarray(part, dtype=np.int64)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_search(cls, cg: CostGraph, result, *, model: str, options) -> Partition:
        """Wrap a :class:`~graphopt.partition.search.SearchResult` for ``cg``."""
        from graphopt.partition.search import ordered_parts
        part = result.best.part
        if options.mode == "cut" and len(set(options.speeds or [1.0])) == 1:
            part = ordered_parts(cg, part, options.k)  # parts are interchangeable: name in order
        cm = options.cost_model
        link = cm.link
        opts = options.to_dict()
        opts.update({"link": cm.target.link_key, "link_name": link.name, "alpha": link.alpha,
                     "beta": link.beta,
                     "imbalance_used": result.eps_used, "launch_seconds": cg.launch_seconds,
                     "speeds": [float(s) for s in result.budget.speeds]})
        plan = cls(model=model, k=options.k, mode=options.mode, cost_graph=cg, part=part,
                   method=result.best.method, options=opts,
                   notes=list(result.notes) + list(result.choice),
                   baselines={n: c.row() for n, c in result.baselines.items()},
                   candidates=[c.row() for c in result.candidates], seconds=result.seconds)
        for name, c in result.baselines.items():
            plan.baselines[name]["estimate"] = pipeline_estimate(c.metrics, plan.microbatches)
        return plan

    # -- derived views ---------------------------------------------------------------------------
    @property
    def microbatches(self) -> int:
        return int(self.options.get("microbatches", 8))

    @property
    def nodes(self) -> list[dict]:
        """One dict per node (for plans made by the search, read back from the one writer of
        node records, :meth:`_node_lines`)."""
        if self._nodes is None:
            self._nodes = json.loads("[" + ",".join(self._node_lines()) + "]")
        return self._nodes

    @property
    def edges(self) -> list[dict]:
        if self._edges is None:
            self._edges = json.loads("[" + ",".join(self._edge_lines()) + "]")
        return self._edges

    def _node_lines(self) -> list[str]:
        """Every node record as a JSON object, fields in :data:`NODE_FIELDS` order: the only
        place a node record is written. Plans from the search format the columns of their cost
        graph directly (no dict per node: fast for 10^6 nodes)."""
        if self._nodes is not None:
            return [json.dumps(n, default=_json_default) for n in self._nodes]
        cg = self._cg
        memo: dict[str, str] = {}
        quoted = lambda x: memo.get(x) or memo.setdefault(x, _quote(x))  # noqa: E731
        columns = (map(_quote, cg.names), map(quoted, cg.ops or ["call_function"] * cg.n),
                   map(quoted, cg.targets or [""] * cg.n), self._part.tolist(),
                   cg.flops.tolist(), cg.out_bytes.tolist(),
                   ("true" if x else "false" for x in cg.is_param.tolist()),
                   map(repr, cg.seconds.tolist()),
                   ("true" if x else "false" for x in cg.is_compute.tolist()))
        head = [f'"{f}": ' for f in NODE_FIELDS]
        return ["{" + ", ".join(h + str(v) for h, v in zip(head, row)) + "}"
                for row in zip(*columns)]

    def _edge_lines(self) -> list[str]:
        if self._edges is not None:
            return [json.dumps(e, default=_json_default) for e in self._edges]
        cg = self._cg
        qn = [_quote(n) for n in cg.names]
        nb = cg.out_bytes.tolist()
        return [f'{{"src": {qn[a]}, "dst": {qn[b]}, "bytes": {nb[a]}}}'
                for a, b in zip(cg.src.tolist(), cg.dst.tolist())]

    @property
    def parts(self) -> dict[str, int]:
        if self._nodes is None:
            return dict(zip(self._cg.names, self._part.tolist()))
        return {n["name"]: int(n["part"]) for n in self._nodes}

    def cost_graph(self) -> CostGraph:
        """The plan's nodes and edges as a CostGraph (nodes must be in topological order)."""
        if self._cg is None:
            index = {n["name"]: i for i, n in enumerate(self.nodes)}
            src = [index[e["src"]] for e in self.edges]
            dst = [index[e["dst"]] for e in self.edges]
            bad = next((i for i, (s, d) in enumerate(zip(src, dst)) if s >= d), None)
            if bad is not None:
                e = self.edges[bad]
                raise PlanError(f"{self.source}: edge {e['src']} -> {e['dst']} goes backwards: "
                                "nodes must be listed in topological order")
            self._cg = CostGraph(
                names=list(index), flops=[n["flops"] for n in self.nodes],
                out_bytes=[n["out_bytes"] for n in self.nodes],
                seconds=[n.get("seconds", 0.0) for n in self.nodes],
                is_param=[n["is_param"] for n in self.nodes],
                is_compute=[n.get("compute", not n["is_param"]) for n in self.nodes],
                act_bytes=[n["out_bytes"] if n.get("compute", not n["is_param"]) else 0
                           for n in self.nodes],
                src=src, dst=dst, ops=[n.get("op", "") for n in self.nodes],
                targets=[n.get("target", "") for n in self.nodes], name=self.model,
                launch_seconds=float(self.options.get("launch_seconds", 0.0)))
        return self._cg

    def part_array(self) -> np.ndarray:
        """Parts in node order; the node dicts are the truth once they exist (they may be
        edited)."""
        if self._nodes is None:
            return self._part
        return np.array([int(n["part"]) for n in self._nodes], dtype=np.int64)

    def metrics(self) -> Metrics:
        """Every reported number, recomputed from the nodes and edges."""
        o = self.options
        return compute_metrics(self.cost_graph(), self.part_array(), self.k,
                               alpha=float(o.get("alpha", 0.0)),
                               beta=float(o.get("beta", float("inf"))),
                               speeds=o.get("speeds"))

    def estimate(self, metrics: Metrics | None = None) -> dict:
        return pipeline_estimate(metrics or self.metrics(), self.microbatches)

    def summary(self, metrics: Metrics | None = None) -> dict:
        """The contract's summary fields (recomputed), plus the stage times and the method."""
        m = metrics or self.metrics()
        cg = self.cost_graph()
        total = float(cg.flops.sum())
        heavy = float(cg.flops[~cg.is_param].max(initial=0))
        return {"comm_bytes": m.comm_bytes, "imbalance": m.imbalance,
                "time_imbalance": m.time_imbalance, "acyclic": m.acyclic,
                "part_flops": m.part_flops, "part_param_bytes": m.part_param_bytes,
                "seconds": self.seconds, "stage_ordered": m.stage_ordered,
                "best_imbalance": max(0.0, heavy / (total / self.k) - 1.0) if total else 0.0,
                "part_act_bytes": m.part_act_bytes, "stage_seconds": m.stage_seconds,
                "bottleneck_seconds": m.bottleneck_seconds, "method": self.method}

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The ``partition.json`` document as Python objects (parsed from :meth:`to_json`, so
        there is one writer)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """The document, one node or edge per line."""
        m = self.metrics()
        head = {"schema": SCHEMA, "model": self.model, "k": self.k, "mode": self.mode,
                "method": self.method, "options": self.options, "notes": self.notes,
                "splits": self.splits}
        tail = {"summary": self.summary(m), "estimate": self.estimate(m),
                "baselines": self.baselines, "candidates": self.candidates}
        dump = lambda x: json.dumps(x, default=_json_default)  # noqa: E731
        parts = ["{"] + [f" {dump(key)}: {dump(val)}," for key, val in head.items()]
        parts += [' "nodes": [', ",\n".join("  " + n for n in self._node_lines()), " ],"]
        parts += [' "edges": [', ",\n".join("  " + e for e in self._edge_lines()), " ],"]
        parts += [",\n".join(f" {dump(key)}: {dump(val)}" for key, val in tail.items()), "}"]
        return "\n".join(parts) + "\n"

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Partition:
        """Read a plan from a path or a JSON string; PlanError says what is malformed."""
        source = "plan"
        text = str(text_or_path)
        if isinstance(text_or_path, Path) or not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            source = path.name
            try:
                text = path.read_text()
            except OSError as exc:
                raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: "
                            f"{exc.msg})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "plan") -> Partition:
        if not isinstance(data, dict):
            raise PlanError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise PlanError(f"{source}: schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        k = data.get("k")
        if not _is_int(k) or k < 1:
            raise PlanError(f"{source}: k must be a positive integer, got {k!r}")
        mode = data.get("mode")
        if mode not in MODES:
            raise PlanError(f"{source}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        nodes, edges = data.get("nodes"), data.get("edges")
        if not isinstance(nodes, list) or not nodes:
            raise PlanError(f"{source}: 'nodes' must be a non-empty list")
        if not isinstance(edges, list):
            raise PlanError(f"{source}: 'edges' must be a list")
        names: set[str] = set()
        for i, n in enumerate(nodes):
            _check_node(source, i, n, k, names)
        for i, e in enumerate(edges):
            _check_edge(source, i, e, names)
        plan = cls(model=str(data.get("model", "")), k=k, mode=mode, nodes=nodes, edges=edges,
                   method=str(data.get("method", "")), options=data.get("options") or {},
                   notes=data.get("notes") or [], baselines=data.get("baselines") or {},
                   candidates=data.get("candidates") or [],
                   seconds=float((data.get("summary") or {}).get("seconds", 0.0)),
                   source=source, splits=data.get("splits") or [])
        if not isinstance(plan.splits, list):
            raise PlanError(f"{source}: 'splits' must be a list")
        plan.cost_graph()  # checks the topological order
        m = plan.metrics()
        if mode == "pipeline" and not m.stage_ordered:
            raise PlanError(f"{source}: a pipeline plan must send data only to higher parts")
        return plan

    # -- graph side ------------------------------------------------------------------------------
    def check_graph(self, graph) -> None:
        """Raise PlanError unless the plan names exactly the graph's nodes."""
        have = set(self._cg.names) if self._nodes is None else {n["name"] for n in self.nodes}
        want = set(graph.info)
        if have != want:
            missing, extra = sorted(want - have), sorted(have - want)
            what = (f"misses {len(missing)} graph node(s) (e.g. {missing[0]!r})" if missing
                    else f"names {len(extra)} node(s) the graph lacks (e.g. {extra[0]!r})")
            raise PlanError(f"{self.source}: the plan does not match {graph.name}: it {what}; "
                            "was it made for this model and these input shapes?")

    def apply(self, graph) -> bool:
        """Set ``info.part`` on every node of ``graph``; True when anything changed."""
        self.check_graph(graph)
        changed = False
        for name, p in self.parts.items():
            if graph.info[name].part != p:
                graph.info[name].part = p
                changed = True
        return changed

    def split(self, graph):
        """Stage modules in pipeline order whose composition equals ``graph``.

        Returns:
            :class:`~graphopt.partition.stages.Stages`; ``stages.run(*inputs)`` runs them in
            one process, :func:`graphopt.distributed.stage_runtime.run_pipeline` on ``k`` processes.
        """
        from graphopt.partition.stages import split_graph
        self.check_graph(graph)
        return split_graph(graph, self.parts, self.k)

    # -- display ---------------------------------------------------------------------------------
    def rows(self) -> list[tuple[str, str]]:
        m = self.metrics()
        s = self.summary(m)
        est = self.estimate(m)
        rows = [("model", self.model), ("k / mode", f"{self.k} / {self.mode}"),
                ("method", self.method), ("communication", f"{s['comm_bytes']:,} bytes"),
                ("imbalance", f"{s['imbalance']:.2%}"), ("acyclic", str(s["acyclic"])),
                ("slowest stage", f"{s['bottleneck_seconds'] * 1e6:,.1f} us"),
                (f"step ({est['microbatches']} micro-batches)",
                 f"{est['forward_step_seconds'] * 1e6:,.1f} us forward, bubble "
                 f"{est['bubble_fraction']:.0%}"),
                ("partitioning time", f"{self.seconds:.3f} s")]
        for name, b in self.baselines.items():
            rows.append((f"baseline {name}", f"{b['comm_bytes']:,} bytes, imbalance "
                         f"{b['imbalance']:.2%}, slowest {b['bottleneck_seconds'] * 1e6:,.1f} us"))
        rows += [("note", n) for n in self.notes]
        return rows

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><th style='text-align:left'>{html.escape(a)}</th>"
                        f"<td>{html.escape(b)}</td></tr>" for a, b in self.rows())
        return f"<table>{cells}</table>"

    def __repr__(self) -> str:
        s = self.summary()
        return (f"Partition({self.model!r}, k={self.k}, mode={self.mode}, "
                f"comm={s['comm_bytes']:,} B, imbalance={s['imbalance']:.2%}, "
                f"acyclic={s['acyclic']})")


def _quote(s: str) -> str:
    """JSON string literal; the common plain-identifier case without the encoder."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return json.dumps(s)


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serializable: {type(x).__name__}")


def _check_node(source: str, i: int, n, k: int, names: set) -> None:
    if not isinstance(n, dict):
        raise PlanError(f"{source}: node {i} is not an object")
    name = n.get("name")
    if not isinstance(name, str) or not name:
        raise PlanError(f"{source}: node {i} has no name")
    if name in names:
        raise PlanError(f"{source}: node {name!r} appears twice")
    names.add(name)
    p = n.get("part")
    if not _is_int(p) or not 0 <= p < k:
        raise PlanError(f"{source}: node {name!r} has part {p!r}, outside 0..{k - 1}")
    for key in ("flops", "out_bytes"):
        v = n.get(key)
        if not _is_int(v) or v < 0:
            raise PlanError(f"{source}: node {name!r} has {key} {v!r}, not a count >= 0")
    if not isinstance(n.get("is_param"), bool):
        raise PlanError(f"{source}: node {name!r} has is_param {n.get('is_param')!r}, "
                        "not true/false")
    sec = n.get("seconds", 0.0)
    if not isinstance(sec, (int, float)) or isinstance(sec, bool) or not math.isfinite(sec) \
            or sec < 0:
        raise PlanError(f"{source}: node {name!r} has seconds {sec!r}, not a time >= 0")


def _check_edge(source: str, i: int, e, names: set) -> None:
    if not isinstance(e, dict):
        raise PlanError(f"{source}: edge {i} is not an object")
    for key in ("src", "dst"):
        if e.get(key) not in names:
            raise PlanError(f"{source}: edge {i} has {key} {e.get(key)!r}, not a node")
    b = e.get("bytes")
    if not _is_int(b) or b < 0:
        raise PlanError(f"{source}: edge {e['src']} -> {e['dst']} has bytes {b!r}, "
                        "not a count >= 0")
