"""The partition page: one self-contained HTML file that draws a (partitioned) graph in a browser.

Why not Graphviz: the page is the main picture of ``graphopt partition``, and it has to draw on a
machine with no system packages. So the layout runs in the browser, with dagre (a layered DAG
layout, MIT, vendored in ``graphopt/assets/`` and inlined here), and the page needs nothing but
itself: no network, no ``dot``.

What it shows: one column per part, parts in stage order left to right, each column laid out top
to bottom by dagre; nodes filled with their part's colour; edges whose producer and consumer lie
in different parts drawn red between the columns and labelled with the bytes sent. A full GPT-2
has ~500 visible ops, too many for one screen, so nodes are grouped by the module they came from
(``node.meta["nn_module_stack"]``, recorded by torch.export and TorchDynamo): a module is a box
(one box per part it spans) that opens to its ops on click, and edges between boxes carry the
summed bytes of the distinct tensors they stand for. The first view opens modules level by level
while the picture stays within 48 boxes and readable when fitted to the window. Hovering a box
shows its costs; ``page.html#open=h.0,h.0.attn`` or ``#find=NODE`` link to a detail.

The page script (``assets/partition_page.js``) gets the graph as JSON built by
:func:`page_data`; the work here is O(nodes + edges).
"""
from __future__ import annotations

import html
import json
import re
import shutil
from importlib import resources

__all__ = ["page_data", "render_page", "module_path"]

_INDEX = re.compile(r"\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.M)
# Fill of module boxes on a graph with no parts (its op nodes are coloured by op class).
_UNPARTITIONED_GROUP = "#C9D3E0"


def module_path(raw: str) -> str:
    """``nn_module_stack`` path -> dotted module path (``L['self'].h[0]`` -> ``h.0``).

    torch.export already records ``h.0``; TorchDynamo and older exports wrap it in ``L['self']``
    and index containers with brackets.
    """
    path = raw
    for prefix in ("L['self'].", "L['self']", "L__self__.", "L__self__", "self."):
        if path.startswith(prefix):
            path = path[len(prefix):]
            break
    path = _INDEX.sub(lambda m: "." + next(g for g in m.groups() if g is not None), path)
    return path.strip(".")


def _type_name(t) -> str:
    name = getattr(t, "__qualname__", None) or str(t)
    return name.rsplit(".", 1)[-1].strip("'>")


def _module_chain(fx_node) -> list[tuple[str, str]]:
    """(path, type) from the outermost module in to the innermost; the root module left out."""
    stack = fx_node.meta.get("nn_module_stack") or {}
    chain = []
    for value in stack.values():
        raw, typ = value if isinstance(value, tuple) else (value, "")
        path = module_path(str(raw))
        if path and (not chain or chain[-1][0] != path):
            chain.append((path, _type_name(typ)))
    return chain


def _short_target(info) -> str:
    if info.op == "call_function":
        parts = info.target.split(".")
        return parts[1] if parts[0] == "aten" and len(parts) > 1 else info.target
    return info.name if info.op == "placeholder" else info.target


def page_data(graph, *, show_params: bool = False,
              part_labels: dict[int, str] | None = None) -> dict:
    """The graph as the page script reads it (see ``assets/partition_page.js``).

    Keys: ``nodes`` (one per drawn node: name, op, target, shape, costs, part, fill colour,
    innermost module index ``m``), ``edges`` (``[src, dst, bytes]`` by node index), ``modules``
    (``path``, ``type``, parent index ``up``, -1 at the top), ``parts`` (id, colour, label) and
    ``sends`` (bytes each part sends each other part: distinct tensors, as the plan counts them).
    Parameters and constants (held by every part that uses them, never sent) are drawn only with
    ``show_params``, in the first part that uses them (``heldBy`` lists all).
    """
    from graphopt.export import _CLASS_COLORS, PART_COLORS

    fx_nodes = {n.name: n for n in graph.fx_nodes()}
    drawn = [i for i in graph.nodes() if show_params or not i.is_param]
    index = {i.name: j for j, i in enumerate(drawn)}
    modules: list[dict] = []
    module_index: dict[str, int] = {}

    def module_of(chain: list[tuple[str, str]]) -> int:
        up = -1
        for path, typ in chain:
            if path not in module_index:
                module_index[path] = len(modules)
                modules.append({"path": path, "type": typ, "up": up})
            up = module_index[path]
        return up

    chains = {i.name: _module_chain(fx_nodes[i.name]) for i in drawn}
    consumers: dict[str, list[str]] = {}
    for src, dst, _ in graph.edges():
        consumers.setdefault(src, []).append(dst)
    partitioned = any(i.part is not None for i in drawn)
    nodes = []
    for info in drawn:
        chain = chains[info.name]
        if not chain and info.is_param:  # a weight sits with the module that first uses it
            chain = next((chains[d] for d in consumers.get(info.name, ()) if chains.get(d)), [])
        part, held_by = info.part, None
        if partitioned and info.is_param:
            # every part that uses a weight holds its own copy, so the plan's part for it means
            # nothing: it is drawn in the first part (in stage order) that uses it
            held_by = sorted({graph.info[d].part for d in consumers.get(info.name, ())
                              if graph.info[d].part is not None})
            part = held_by[0] if held_by else part
        if partitioned:
            fill = PART_COLORS[(part or 0) % len(PART_COLORS)]
        else:
            fill = _CLASS_COLORS.get(info.op_class, "#DDDDDD")
        nodes.append({
            "name": info.name, "op": info.op, "target": info.target, "short": _short_target(info),
            "cls": info.op_class, "shape": info.shape, "dtype": info.dtype, "flops": info.flops,
            "bytes": info.out_bytes, "read": info.bytes_read, "written": info.bytes_written,
            "param": info.is_param, "part": part if partitioned else None, "heldBy": held_by,
            "fill": fill, "m": module_of(chain), "split": info.extra.get("split_of")})
    edges = [[index[s], index[d], b] for s, d, b in graph.edges() if s in index and d in index]
    k = 1 + max((i.part for i in graph.nodes() if i.part is not None), default=-1)
    parts = [{"id": p, "color": PART_COLORS[p % len(PART_COLORS)],
              "label": (part_labels or {}).get(p, f"part {p}")} for p in range(k)]
    return {"name": graph.name, "nodes": nodes, "edges": edges, "modules": modules,
            "parts": parts, "groupFill": _UNPARTITIONED_GROUP, "sends": _sends(graph)}


def _sends(graph) -> list[dict]:
    """Bytes part a sends part b: each tensor once per consuming part, parameters never."""
    seen: set[tuple[str, int]] = set()
    total: dict[tuple[int, int], int] = {}
    for src, dst, nbytes in graph.edges():
        a, b = graph.info[src].part, graph.info[dst].part
        if a is None or b is None or a == b or graph.info[src].is_param or (src, b) in seen:
            continue
        seen.add((src, b))
        total[(a, b)] = total.get((a, b), 0) + nbytes
    return [{"src": a, "dst": b, "bytes": n} for (a, b), n in sorted(total.items())]


def _asset(name: str) -> str:
    return (resources.files("graphopt") / "assets" / name).read_text(encoding="utf-8")


def _script_json(data) -> str:
    """JSON safe inside ``<script>``: no ``</script>``, ``<!--`` or ``&`` can appear raw."""
    text = json.dumps(data, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _rows_table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>" if cells else "<p>no summary</p>"


def render_page(graph, *, title: str | None = None, subtitle: str = "",
                rows: list[tuple[str, str]] | None = None, show_params: bool = False,
                part_labels: dict[int, str] | None = None) -> str:
    """The whole page as one string: data, dagre, script and style inlined.

    Example:
        >>> page = render_page(graph, title="gpt k=4", rows=plan.rows(),
        ...                    part_labels={0: "part 0: 1.2 GFLOP"})
        >>> write_atomic("out/partition.html", page)
    """
    data = page_data(graph, show_params=show_params, part_labels=part_labels)
    svg_note = ("a static SVG file: <code>--format svg</code> or <code>export.to_svg</code>, "
                "which need Graphviz's <code>dot</code>"
                + ("" if shutil.which("dot") else " (not found here: apt-get install graphviz)"))
    values = {"STYLE": _asset("partition_page.css"), "TITLE": html.escape(title or graph.name),
              "SUBTITLE": html.escape(subtitle), "ROWS": _rows_table(rows or []),
              "SVG_NOTE": svg_note, "DATA": _script_json(data),
              "DAGRE": _SOURCE_MAP.sub("", _asset("dagre.min.js")),
              "SCRIPT": _asset("partition_page.js")}
    # one pass, so text inside a value (a title, the data) is never taken for a placeholder
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], _asset("partition_page.html"))
