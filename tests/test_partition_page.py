"""The partition page draws itself: graph data inlined, no Graphviz, rendered by a real browser.

The page for ``zoo:gpt`` at k=4 is written once with Graphviz hidden from the CLI; the data tests
read the JSON inlined in it and check it against ``partition.json``; the browser tests load it in
headless Chromium (skipped when no Chromium is installed) and read the SVG the script drew.
"""
import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

import graphopt
from graphopt.cli.main import main
from graphopt.export import PART_COLORS, to_html
from graphopt.viz_html import module_path, page_data

K = 4
_DATA = re.compile(r'<script id="graph-data" type="application/json">(.*?)</script>', re.S)
_real_which = shutil.which


def _no_dot(name, *args, **kwargs):
    return None if name == "dot" else _real_which(name, *args, **kwargs)


def inlined_data(page: str) -> dict:
    found = _DATA.findall(page)
    assert len(found) == 1, "the page holds its graph in one JSON script element"
    return json.loads(found[0])


@pytest.fixture(scope="module")
def gpt_page(tmp_path_factory):
    """partition.html and partition.json for zoo:gpt, k=4, written where `dot` cannot be found."""
    out = tmp_path_factory.mktemp("page")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shutil, "which", _no_dot)
        assert main(["partition", "zoo:gpt", "-k", str(K), "-o", str(out), "-q",
                     "--format", "json,html"]) == 0
    return out / "partition.html", json.loads((out / "partition.json").read_text())


def test_page_without_graphviz_holds_the_whole_plan(gpt_page):
    path, plan = gpt_page
    page = path.read_text()
    assert "<script src" not in page and "<link" not in page  # nothing to fetch: opens offline
    assert "var dagre=" in page and "sourceMappingURL" not in page  # the layout is inlined
    data = inlined_data(page)
    # every node the plan places (parameters are held by every part and not drawn) is there,
    # in the plan's part
    placed = {n["name"]: n["part"] for n in plan["nodes"] if not n["is_param"]}
    assert {n["name"]: n["part"] for n in data["nodes"]} == placed
    assert [p["id"] for p in data["parts"]] == list(range(K))
    assert len({p["color"] for p in data["parts"]}) == K
    assert all(n["fill"] == PART_COLORS[n["part"]] for n in data["nodes"])
    assert all(p["label"].startswith(f"part {p['id']}: ") and "GFLOP" in p["label"]
               for p in data["parts"])
    # cut edges: drawn edges whose ends lie in different parts, each carrying its tensor's bytes
    nodes = data["nodes"]
    cuts = [(s, d, b) for s, d, b in data["edges"] if nodes[s]["part"] != nodes[d]["part"]]
    assert cuts and all(b == nodes[s]["bytes"] > 0 for s, d, b in cuts)
    # a pipeline only sends forward, and the page's totals are the plan's
    assert all(s["src"] < s["dst"] for s in data["sends"])
    assert sum(s["bytes"] for s in data["sends"]) == plan["summary"]["comm_bytes"] > 0
    sent = {}
    for s, d, b in cuts:
        sent.setdefault((nodes[s]["part"], nodes[d]["part"]), {})[s] = b
    assert {(s["src"], s["dst"]): s["bytes"] for s in data["sends"]} == \
        {pair: sum(by_src.values()) for pair, by_src in sent.items()}


def test_nodes_know_their_modules(gpt_page):
    data = inlined_data(gpt_page[0].read_text())
    modules = data["modules"]
    paths = {m["path"] for m in modules}
    assert {f"blocks.{i}" for i in range(4)} <= paths
    for m in modules:  # each module hangs under its parent, listed before it
        assert m["up"] < modules.index(m)
        if m["up"] >= 0:
            assert m["path"].startswith(modules[m["up"]]["path"] + ".")
    by_name = {n["name"]: n for n in data["nodes"]}
    qkv = modules[by_name["linear"]["m"]]
    assert qkv["path"] == "blocks.0.qkv" and qkv["type"] == "Linear"
    assert modules[qkv["up"]]["path"] == "blocks.0" and modules[qkv["up"]]["type"] == "Block"
    inside = [n for n in data["nodes"] if n["m"] >= 0]
    assert len(inside) > 0.8 * len(data["nodes"])


def test_vendored_dagre_is_the_one_documented():
    assets = Path(graphopt.__file__).parent / "assets"
    digest = hashlib.sha256((assets / "dagre.min.js").read_bytes()).hexdigest()
    notes = (assets / "README.md").read_text()
    assert digest in notes and "@dagrejs/dagre 3.1.3" in notes
    assert "Permission is hereby granted" in (assets / "dagre.LICENSE").read_text()  # MIT


@pytest.mark.parametrize("raw,path", [("blocks.0.qkv", "blocks.0.qkv"),
                                      ("L['self'].h[0].attn", "h.0.attn"),
                                      ("L['self'].layers['enc'].fc", "layers.enc.fc"),
                                      ("L['self']", "")])
def test_module_paths_are_dotted(raw, path):
    assert module_path(raw) == path


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first = torch.nn.Linear(8, 8)
        self.second = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.second(torch.relu(self.first(x)))


@pytest.fixture(scope="module")
def small():
    return graphopt.capture(TwoLayers(), (torch.randn(2, 8),), name="</script><b>x</b>")


def test_unpartitioned_graph_and_hostile_names(small):
    page = to_html(small, title="</script><script>alert(1)</script>")
    assert "<script>alert(1)" not in page and "</script><b>" not in page
    data = inlined_data(page)
    assert data["name"] == "</script><b>x</b>" and data["parts"] == [] and data["sends"] == []
    assert all(n["part"] is None for n in data["nodes"])
    assert {n["short"] for n in data["nodes"]} >= {"linear", "relu"}
    with_params = page_data(small, show_params=True)
    weights = [n for n in with_params["nodes"] if n["param"]]
    assert len(weights) == 4 and all(n["m"] >= 0 for n in weights)  # under the module using it


# ------------------------------------------------------------------------- a real browser
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if _real_which(name):
            return _real_which(name)
    return None


needs_chromium = pytest.mark.skipif(_chromium() is None, reason="no Chromium binary on PATH "
                                    "(Debian: apt-get install chromium)")


class _Drawn(HTMLParser):
    """The boxes (part and fill), cut-edge labels and page state in Chromium's dumped DOM."""

    def __init__(self):
        super().__init__()
        self.body, self.boxes, self.cut_labels, self._box, self._label = {}, [], [], None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "g" and "box" in (a.get("class") or "").split():
            self._box = {"part": a.get("data-part"), "node": a.get("data-node"), "fill": None}
            self.boxes.append(self._box)
        elif tag == "rect" and self._box is not None and "fill-opacity" not in a:
            self._box["fill"] = a.get("fill")
        elif tag == "text" and a.get("class") == "cut-label":
            self._label = True

    def handle_endtag(self, tag):
        if tag == "g":
            self._box = None
        if tag == "text":
            self._label = False

    def handle_data(self, data):
        if self._label:
            self.cut_labels.append(data)


def _render(path, fragment: str = "") -> _Drawn:
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--window-size=1400,900", "--virtual-time-budget=5000", "--dump-dom",
                           path.resolve().as_uri() + fragment],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = _Drawn()
    drawn.feed(proc.stdout)
    assert drawn.body.get("data-rendered") == "yes", (drawn.body, proc.stderr[-2000:])
    assert "data-error" not in drawn.body, drawn.body["data-error"]
    return drawn


@needs_chromium
def test_browser_draws_one_colour_per_part(gpt_page):
    path, plan = gpt_page
    drawn = _render(path)
    fills = {b["part"]: set() for b in drawn.boxes}
    for b in drawn.boxes:
        fills[b["part"]].add(b["fill"])
    assert sorted(fills) == [str(p) for p in range(K)]
    assert all(len(f) == 1 for f in fills.values())                # one colour per part
    assert len({f.pop() for f in fills.values()}) == K             # K distinct colours
    # collapsed into modules: a screenful of boxes, not the ~140 ops
    assert 8 <= len(drawn.boxes) <= 48 < len(plan["nodes"])
    assert drawn.cut_labels and all(re.fullmatch(r"[\d.]+ (B|KiB|MiB|GiB)", t)
                                    for t in drawn.cut_labels)


@needs_chromium
def test_browser_opens_a_module_into_its_ops(gpt_page):
    path, _ = gpt_page
    closed = _render(path)
    opened = _render(path, "#open=blocks.0,blocks.0.qkv")
    assert len(opened.boxes) > len(closed.boxes)
    ops = {b["node"] for b in opened.boxes if b["node"]}
    assert {"linear", "softmax", "gelu"} <= ops    # blocks.0's own ops, drawn one by one


# Runs in the page after it has drawn: clicks a module open and closed again, then finds a node.
_CLICKS = """<script>
const count = () => document.querySelectorAll("g.box").length;
const before = count();
const box = document.querySelector('g.box.group[data-module="blocks.0"]');
box.dispatchEvent(new MouseEvent("click", {bubbles: true}));
const opened = count();
document.querySelector('g.cluster[data-module="blocks.0"] .cluster-title')
  .dispatchEvent(new MouseEvent("click", {bubbles: true}));
const closed = count();
const find = document.getElementById("find");
find.value = "gelu_2";
find.dispatchEvent(new KeyboardEvent("keydown", {key: "Enter"}));
const lit = document.querySelector("g.box.highlight");
document.body.dataset.clicks = [before, opened, closed, lit && lit.dataset.node].join(",");
</script></body>"""


@needs_chromium
def test_browser_clicks_open_and_close_a_module_and_find_a_node(gpt_page, tmp_path):
    path, _ = gpt_page
    page = tmp_path / "clicked.html"
    page.write_text(path.read_text().replace("</body>", _CLICKS))
    drawn = _render(page)
    before, opened, closed, found = drawn.body["data-clicks"].split(",")
    assert int(opened) > int(before) == int(closed)
    assert found == "gelu_2"

