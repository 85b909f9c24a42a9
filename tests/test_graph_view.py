"""The graph as networkx, node-link JSON, GraphML, DOT, SVG and HTML."""
import json
import shutil

import networkx as nx
import pytest

import graphopt
from graphopt import zoo
from graphopt.export import GraphvizMissing, to_dot, to_html, to_svg, write_graphml, write_json


@pytest.fixture(scope="module")
def graph():
    model, inputs = zoo.build("cnn")
    return graphopt.capture(model, inputs)


def test_networkx_view_mirrors_the_graph(graph):
    G = graph.nx
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    assert G.number_of_nodes() == len(graph)
    assert G.number_of_edges() == len(graph.edges())
    some = next(i for i in graph.nodes() if i.op_class == "conv")
    attrs = G.nodes[some.name]
    assert attrs["flops"] == some.flops > 0 and attrs["out_bytes"] == some.out_bytes
    assert attrs["shape"] == some.shape
    for src, _dst, data in G.edges(data=True):
        assert data["bytes"] == graph[src].out_bytes
    # topological order agrees with fx order
    order = {n: i for i, n in enumerate(i.name for i in graph.nodes())}
    assert all(order[s] < order[d] for s, d in G.edges())


def test_node_link_json_round_trips(graph, tmp_path):
    path = write_json(graph, tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert data["graph"]["flops"] == graph.total_flops
    G = nx.node_link_graph(data, edges="edges")
    assert G.number_of_nodes() == len(graph)


def test_graphml_holds_scalars_only(graph, tmp_path):
    path = write_graphml(graph, tmp_path / "g.graphml")
    G = nx.read_graphml(path)
    assert G.number_of_nodes() == len(graph)


def test_dot_colours_parts_and_marks_cut_edges(graph):
    g = graph.copy()
    names = [i.name for i in g.nodes() if not i.is_param]
    for i, name in enumerate(names):
        g[name].part = 0 if i < len(names) // 2 else 1
    dot = to_dot(g)
    assert dot.startswith("digraph") and "penwidth=2.2" in dot
    plain = to_dot(graph)
    assert "penwidth" not in plain and all(f'"{i.name}"' in plain for i in graph.compute_nodes())


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_svg_and_html(graph):
    svg = to_svg(graph)
    assert "<svg" in svg
    page = to_html(graph, rows=[("flops", f"{graph.total_flops:,}")])
    assert "<svg" in page and "wheel" in page and str(graph.total_flops)[:3] in page


def test_svg_without_graphviz_says_what_to_install(graph, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizMissing, match="apt-get install graphviz"):
        to_svg(graph)
    assert "apt-get install graphviz" in to_html(graph)


def test_repr_and_summary(graph):
    assert "nodes=" in repr(graph)
    s = graph.summary()
    assert s["flops"] == graph.total_flops and sum(s["op_histogram"].values()) == s["compute_nodes"]
