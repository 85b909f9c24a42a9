"""Every way a Graph leaves graphopt: networkx, node-link JSON, GraphML, DOT, SVG, HTML.

One module so the formats agree on names and attributes. SVG needs Graphviz's ``dot`` program
(Debian package ``graphviz``); without it :class:`GraphvizMissing` says so. The HTML page never
needs it: it lays the graph out in the browser (:mod:`graphopt.viz_html`).
"""
from __future__ import annotations

import html
import json
import shutil
import subprocess
from pathlib import Path

import networkx as nx

from graphopt.cost import OpClass
from graphopt.errors import GraphoptError

__all__ = ["to_networkx", "to_node_link", "write_json", "write_graphml", "to_dot", "to_svg",
           "to_html", "GraphvizMissing", "PART_COLORS", "write_atomic"]

# Colour-blind-safe palette (Okabe-Ito, then Tableau), one colour per part.
PART_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
               "#999999", "#4E79A7", "#F28E2B", "#59A14F", "#EDC948", "#B07AA1", "#FF9DA7",
               "#9C755F", "#BAB0AC"]
_CLASS_COLORS = {OpClass.MATMUL: "#F28E2B", OpClass.CONV: "#F28E2B", OpClass.ATTENTION: "#E15759",
                 OpClass.ELEMENTWISE: "#59A14F", OpClass.REDUCTION: "#4E79A7",
                 OpClass.NORM: "#76B7B2", OpClass.VIEW: "#EEEEEE", OpClass.INJECTIVE: "#BAB0AC",
                 OpClass.PARAM: "#FFFFFF", OpClass.PLACEHOLDER: "#EDC948"}


class GraphvizMissing(GraphoptError):
    """Graphviz's ``dot`` is not installed."""


def write_atomic(path: str | Path, text: str) -> Path:
    """Write via a temporary file and rename, so a failure never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def to_networkx(graph) -> nx.DiGraph:
    """A DiGraph: node attributes are NodeInfo fields (shape kept as a list), edges carry bytes."""
    G = nx.DiGraph(name=graph.name)
    for info in graph.nodes():
        attrs = info.to_dict()
        attrs.pop("name")
        G.add_node(info.name, **attrs)
    for src, dst, nbytes in graph.edges():
        G.add_edge(src, dst, bytes=nbytes)
    return G


def to_node_link(graph) -> dict:
    data = nx.node_link_data(to_networkx(graph), edges="edges")
    data["graph"] = {"name": graph.name, **{k: v for k, v in graph.summary().items()
                                             if k != "op_histogram"}}
    return data


def write_json(graph, path: str | Path) -> Path:
    return write_atomic(path, json.dumps(to_node_link(graph), indent=1, default=str))


def write_graphml(graph, path: str | Path) -> Path:
    """GraphML takes scalar attributes only: lists become strings, None becomes ''."""
    G = to_networkx(graph)
    for _, attrs in G.nodes(data=True):
        for k, v in list(attrs.items()):
            if v is None:
                attrs[k] = ""
            elif isinstance(v, (list, dict, tuple)):
                attrs[k] = json.dumps(v)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nx.write_graphml(G, path)
    return path


def _fmt(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def _label(info) -> str:
    target = info.target.replace("aten.", "").rsplit(".", 1)[0] if info.op == "call_function" \
        else info.target
    shape = "x".join(map(str, info.shape)) if info.shape and all(isinstance(s, int)
                                                                   for s in info.shape) else ""
    head = info.name if target == info.name else f"{info.name}\\n{target}"
    return head + (f"\\n{shape}" if shape else "")


def _tooltip(info) -> str:
    return (f"{info.name}: {info.target}  shape={info.shape} dtype={info.dtype} "
            f"flops={info.flops:,} out_bytes={info.out_bytes:,}"
            + (f" part={info.part}" if info.part is not None else ""))


def to_dot(graph, *, show_params: bool = False, title: str | None = None,
           part_labels: dict[int, str] | None = None) -> str:
    """DOT text. Nodes are coloured by part when the graph is partitioned, else by op class;
    edges that cross parts are red and bold, labelled with their bytes. With ``part_labels``
    each part is also drawn as a labelled box (a Graphviz cluster) around its nodes."""
    hidden = set() if show_params else {i.name for i in graph.nodes() if i.is_param}
    lines = [f'digraph "{graph.name}" {{', "  rankdir=TB;", '  node [shape=box, style="rounded,filled", '
             'fontname="Helvetica", fontsize=10];', '  edge [color="#777777"];']
    if title:
        lines.append(f'  labelloc=t; label="{title}";')
    node_lines: dict[int | None, list[str]] = {}
    for info in graph.nodes():
        if info.name in hidden:
            continue
        color = (PART_COLORS[info.part % len(PART_COLORS)] if info.part is not None
                 else _CLASS_COLORS.get(info.op_class, "#DDDDDD"))
        node_lines.setdefault(info.part if part_labels else None, []).append(
            f'  "{info.name}" [label="{_label(info)}", fillcolor="{color}", '
            f'tooltip="{html.escape(_tooltip(info))}"];')
    for part, group in node_lines.items():
        if part is None:
            lines.extend(group)
            continue
        color = PART_COLORS[part % len(PART_COLORS)]
        label = html.escape(part_labels.get(part, f"part {part}"))
        lines.append(f'  subgraph "cluster_{part}" {{ label="{label}"; style="rounded,dashed"; '
                     f'color="{color}"; penwidth=2; fontname="Helvetica";')
        lines.extend("  " + ln for ln in group)
        lines.append("  }")
    for src, dst, nbytes in graph.edges():
        if src in hidden or dst in hidden:
            continue
        a, b = graph.info[src].part, graph.info[dst].part
        if a is not None and b is not None and a != b:
            lines.append(f'  "{src}" -> "{dst}" [color="#D62728", penwidth=2.2, '
                         f'label="{_fmt(nbytes)}B", fontcolor="#D62728", fontsize=8];')
        else:
            lines.append(f'  "{src}" -> "{dst}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(graph, dot_text: str | None = None, timeout: float = 120.0) -> str:
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing("SVG output needs Graphviz's `dot` (apt-get install graphviz); "
                              "DOT, JSON and HTML output work without it")
    text = dot_text if dot_text is not None else to_dot(graph)
    proc = subprocess.run([exe, "-Tsvg"], input=text, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise GraphoptError(f"graphviz dot failed: {proc.stderr.strip()[:200]}")
    return proc.stdout


def to_html(graph, *, title: str | None = None, subtitle: str = "",
            rows: list[tuple[str, str]] | None = None, show_params: bool = False,
            part_labels: dict[int, str] | None = None) -> str:
    """A self-contained page that draws the graph in the browser, Graphviz or not.

    One column per part in stage order, nodes grouped by module into boxes that open on click,
    cut edges labelled with their bytes, hover for costs; ``rows`` fill the page's summary
    table. The layout (dagre) and the data are inlined: the file opens offline. See
    :mod:`graphopt.viz_html`.
    """
    from graphopt.viz_html import render_page
    return render_page(graph, title=title, subtitle=subtitle, rows=rows,
                       show_params=show_params, part_labels=part_labels)
