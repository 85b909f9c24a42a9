/* graphopt's partition page: the module tree, collapse and expand, one dagre layout per part,
   and the drawing. Reads the JSON in #graph-data, built by graphopt/viz_html.py (page_data).

   Why columns: a pipeline plan is a sequence of stages, so each part gets its own column, laid
   out top to bottom by dagre, and the columns stand left to right in part order; the edges that
   cross parts (the communication) are the only ones between columns. That uses a wide screen
   far better than one long layered drawing of the whole graph. */
(function () {
"use strict";
const D = JSON.parse(document.getElementById("graph-data").textContent);
const NS = "http://www.w3.org/2000/svg";
const BUDGET = 48;           // at most this many boxes in the first view
const MIN_SCALE = 0.8;       // ... and drawn at least this large when fitted to the window
const GAP = 170;             // between columns: room for the cut edges and their labels
const TOP = 54;              // column title band
const RANKSEP = 36;          // between ranks; half of it holds an open module's title
const view = document.getElementById("view"), svg = document.getElementById("canvas");
const world = document.getElementById("world"), tip = document.getElementById("tip");

window.addEventListener("error", e => {
  document.body.dataset.error = String(e.message);
  const div = document.createElement("div");
  div.id = "error"; div.textContent = "the picture failed to draw: " + e.message;
  view.appendChild(div);
});

// ---------------------------------------------------------------- formatting
function fmtBytes(b) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(b) >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return (i === 0 ? String(b) : b.toFixed(b < 10 ? 2 : 1)) + " " + u[i];
}
function fmtNum(n) {
  for (const [s, v] of [["T", 1e12], ["G", 1e9], ["M", 1e6], ["k", 1e3]])
    if (Math.abs(n) >= v) return (n / v).toFixed(n / v < 10 ? 2 : 1) + " " + s;
  return n + " ";
}
function shapeText(s) {
  if (!Array.isArray(s)) return "";
  if (s.length && Array.isArray(s[0])) return s.map(shapeText).join(", ");
  return s.join("\u00d7");
}
function textColor(hex) {
  const v = parseInt(hex.slice(1), 16), r = v >> 16, g = (v >> 8) & 255, b = v & 255;
  return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#15171c" : "#ffffff";
}
function darker(hex) {
  const v = parseInt(hex.slice(1), 16);
  const c = [v >> 16, (v >> 8) & 255, v & 255].map(x => Math.round(x * 0.6));
  return "#" + c.map(x => x.toString(16).padStart(2, "0")).join("");
}
const measure = document.createElement("canvas").getContext("2d");
function textWidth(t, font) { measure.font = font; return measure.measureText(t).width; }

// ---------------------------------------------------------------- the module tree
const M = D.modules.map((m, i) => Object.assign({}, m, {i, kids: [], direct: [], count: 0,
  depth: 0, chain: [], transparent: false}));
M.forEach(m => { if (m.up >= 0) M[m.up].kids.push(m.i); });
D.nodes.forEach((n, j) => { if (n.m >= 0) M[n.m].direct.push(j); });
// page_data lists a module after its parent, so a backward walk counts children before parents
for (let i = M.length - 1; i >= 0; i--) {
  M[i].count += M[i].direct.length;
  if (M[i].up >= 0) M[M[i].up].count += M[i].count;
}
for (const m of M) {
  // a module of one node shows as that node; a wrapper around one module adds no level
  m.transparent = m.count <= 1 || (m.direct.length === 0 && m.kids.length === 1);
  const up = m.up >= 0 ? M[m.up] : null;
  m.chain = up ? up.chain.concat([m.i]) : [m.i];
  m.depth = up ? up.depth + (up.transparent ? 0 : 1) : 0;
  const named = m.chain.slice(0, -1).filter(a => !M[a].transparent).pop();
  const base = named === undefined ? "" : M[named].path + ".";
  m.name = base && m.path.startsWith(base) ? m.path.slice(base.length) : m.path;
}
const colOf = j => D.nodes[j].part === null ? 0 : D.nodes[j].part;
const nodeChain = j => D.nodes[j].m >= 0 ? M[D.nodes[j].m].chain : [];

function visibleCount(open) {
  const seen = new Set();
  D.nodes.forEach((n, j) => seen.add(repOf(j, open)));
  return seen.size;
}
function firstView() {
  // open modules level by level while the picture stays within BUDGET boxes and, fitted to
  // the window, its text stays readable
  const maxDepth = M.reduce((a, m) => Math.max(a, m.depth), 0);
  let best = new Set();
  for (let d = 1; d <= maxDepth + 1; d++) {
    const open = new Set(M.filter(m => !m.transparent && m.depth < d).map(m => m.i));
    if (visibleCount(open) > BUDGET) break;
    if (d > 1 && fitScale(layout(buildScene(open))) < MIN_SCALE) break;
    best = open;
  }
  return best;
}

// ---------------------------------------------------------------- what is visible
function repOf(j, open) {
  for (const a of nodeChain(j))
    if (!M[a].transparent && !open.has(a)) return "g" + a + "_" + colOf(j);
  return "n" + j;
}
function clusterOf(chain, open) {
  // the innermost open module around a box (its dashed outline), or -1
  let c = -1;
  for (const a of chain) { if (M[a].transparent) continue; if (!open.has(a)) break; c = a; }
  return c;
}

function buildScene(open) {
  const boxes = new Map(), clusters = new Map();
  D.nodes.forEach((n, j) => {
    const key = repOf(j, open);
    let b = boxes.get(key);
    if (!b) {
      const col = colOf(j);
      if (key[0] === "g") {
        const mi = +key.slice(1, key.indexOf("_"));
        b = {key, group: true, mi, col, members: [], up: clusterOf(M[mi].chain.slice(0, -1), open)};
      } else {
        b = {key, group: false, j, col, members: [], up: clusterOf(nodeChain(j), open)};
      }
      boxes.set(key, b);
    }
    b.members.push(j);
  });
  for (const b of boxes.values()) {    // every open module around a box, per column
    let c = b.up;
    while (c >= 0) {
      const ck = "c" + c + "_" + b.col;
      if (clusters.has(ck)) break;
      const up = clusterOf(M[c].chain.slice(0, -1), open);
      clusters.set(ck, {key: ck, mi: c, col: b.col, up: up});
      c = up;
    }
  }
  const edges = new Map(), sent = new Set();
  for (const [s, d, bytes] of D.edges) {
    const a = repOf(s, open), b = repOf(d, open);
    if (a === b) continue;
    const ns = D.nodes[s], crosses = colOf(s) !== colOf(d);
    if (crosses && ns.param) continue;      // weights are held by every device, never sent
    const k = a + ">" + b;
    let e = edges.get(k);
    if (!e) { e = {a, b, bytes: 0, tensors: 0, cut: crosses}; edges.set(k, e); }
    if (!sent.has(s + ">" + b)) { sent.add(s + ">" + b); e.bytes += bytes; e.tensors++; }
  }
  return {boxes, clusters, edges: [...edges.values()]};
}

// ---------------------------------------------------------------- boxes' text and size
const FONT1 = "600 12px system-ui, sans-serif", FONT2 = "11px system-ui, sans-serif";
const FONT_TITLE = "600 10.5px system-ui, sans-serif";
function boxText(b) {
  if (b.group) {
    const m = M[b.mi], split = M[b.mi].count !== b.members.length;
    const head = m.name + (m.type ? " \u00b7 " + m.type : "");
    return [head, b.members.length + " ops \u00b7 " + fmtNum(b.members.reduce(
      (a, j) => a + D.nodes[j].flops, 0)) + "FLOP" + (split ? " \u00b7 part " + b.col : "")];
  }
  const n = D.nodes[b.j], own = n.m >= 0 && M[n.m].count === 1 ? M[n.m].name + " \u00b7 " : "";
  const head = n.op === "placeholder" ? n.name : own + n.short;   // a module of one op: both
  return [head, shapeText(n.shape) || n.name];
}
function boxTip(b) {
  if (b.group) {
    const m = M[b.mi], ns = b.members.map(j => D.nodes[j]);
    const flops = ns.reduce((a, n) => a + n.flops, 0), bytes = ns.reduce((a, n) => a + n.bytes, 0);
    return [m.path + (m.type ? "  (" + m.type + ")" : ""),
      "ops:    " + b.members.length + (m.count !== b.members.length ? " of " + m.count +
        " (the module spans parts)" : ""),
      "flops:  " + flops.toLocaleString(), "bytes:  " + bytes.toLocaleString() + " out",
      "part:   " + (ns[0].part === null ? "-" : ns[0].part), "click to open"].join("\n");
  }
  const n = D.nodes[b.j], m = n.m >= 0 ? M[n.m].path : "(top level)";
  return [n.name, "op:     " + n.op + "  " + n.target, "class:  " + n.cls,
    "shape:  " + (shapeText(n.shape) || "-") + (n.dtype ? "  " + n.dtype : ""),
    "flops:  " + n.flops.toLocaleString(), "bytes:  " + n.bytes.toLocaleString() + " out, " +
    n.read.toLocaleString() + " read, " + n.written.toLocaleString() + " written",
    "part:   " + (n.part === null ? "-" : n.part) + (n.heldBy && n.heldBy.length > 1 ?
      " (a copy in each of parts " + n.heldBy.join(", ") + ")" : ""), "module: " + m]
    .concat(n.split ? ["split:  " + n.split] : []).join("\n");
}
function clusterTitle(m) { return "\u2212 " + m.name + (m.type ? " \u00b7 " + m.type : ""); }
function fitText(text, font, width) {
  // cut to the room there is, with an ellipsis (the whole title is in the tooltip)
  if (textWidth(text, font) <= width) return text;
  let n = text.length;
  while (n > 1 && textWidth(text.slice(0, n) + "\u2026", font) > width) n--;
  return text.slice(0, n) + "\u2026";
}
function fillOf(b) {
  if (!b.group) return D.nodes[b.j].fill;
  return D.parts.length ? D.parts[b.col].color : D.groupFill;
}

// ---------------------------------------------------------------- layout: dagre per column
function layout(scene) {
  const cols = D.parts.length ? D.parts.map(p => p.id) : [0];
  const out = {cols: [], boxes: new Map(), clusters: new Map(), width: 0, height: 0};
  let x = 0;
  for (const col of cols) {
    const g = new dagre.graphlib.Graph({compound: true});
    // dagre puts a cluster's top border half a rank gap above what it holds (and a nested
    // cluster's half a gap below): RANKSEP / 2 is the room a cluster's title gets
    g.setGraph({rankdir: "TB", nodesep: 18, ranksep: RANKSEP, marginx: 16, marginy: 16});
    g.setDefaultEdgeLabel(() => ({}));
    for (const b of scene.boxes.values()) {
      if (b.col !== col) continue;
      b.text = boxText(b);
      b.width = Math.ceil(Math.max(textWidth(b.text[0], FONT1), textWidth(b.text[1], FONT2)))
        + (b.group ? 34 : 18);
      b.height = b.group ? 40 : 34;
      g.setNode(b.key, {width: b.width, height: b.height});
    }
    for (const c of scene.clusters.values()) {
      if (c.col !== col) continue;
      g.setNode(c.key, {});
      if (c.up >= 0) g.setParent(c.key, "c" + c.up + "_" + col);
    }
    for (const b of scene.boxes.values())
      if (b.col === col && b.up >= 0) g.setParent(b.key, "c" + b.up + "_" + col);
    const intra = scene.edges.filter(e => !e.cut && g.hasNode(e.a) && g.hasNode(e.b));
    intra.forEach(e => g.setEdge(e.a, e.b));
    if (g.nodeCount()) dagre.layout(g);
    const part = D.parts[col];
    const title = part ? part.label.split(":")[0] : (D.name || "graph");
    const sub = part ? part.label.slice(title.length + 1).trim() : "";
    const gw = g.nodeCount() ? g.graph().width : 120, gh = g.nodeCount() ? g.graph().height : 40;
    const w = Math.max(gw, textWidth(title, "700 15px system-ui") + 20,
      Math.min(textWidth(sub, "12px system-ui") + 20, gw + GAP - 30));
    const dx = x + (w - gw) / 2;
    g.nodes().forEach(k => {
      const n = g.node(k);
      const rec = {x: n.x + dx, y: n.y + TOP, width: n.width, height: n.height};
      (k[0] === "c" ? out.clusters : out.boxes).set(k, rec);
    });
    for (const e of intra) e.points = g.edge(e.a, e.b).points.map(p => ({x: p.x + dx, y: p.y + TOP}));
    out.cols.push({col, x, width: w, height: gh, title, sub, color: part ? part.color : "#888"});
    x += w + GAP;
    out.height = Math.max(out.height, gh + TOP);
  }
  out.width = x - GAP;
  return out;
}

// ---------------------------------------------------------------- drawing
function el(name, attrs, parent, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function smooth(pts) {
  let d = "M" + pts[0].x + "," + pts[0].y;
  for (let i = 1; i < pts.length - 1; i++) {
    const m = {x: (pts[i].x + pts[i + 1].x) / 2, y: (pts[i].y + pts[i + 1].y) / 2};
    d += " Q" + pts[i].x + "," + pts[i].y + " " + (i === pts.length - 2 ? pts[i + 1].x + "," +
      pts[i + 1].y : m.x + "," + m.y);
  }
  if (pts.length === 2) d += " L" + pts[1].x + "," + pts[1].y;
  return d;
}
function strokeWidth(bytes) { return Math.min(6, 0.8 + Math.log10(1 + bytes / 1024) * 0.9); }
function showTip(ev, text) {
  tip.textContent = text; tip.style.display = "block";
  const r = tip.getBoundingClientRect();
  tip.style.left = Math.min(ev.clientX + 14, innerWidth - r.width - 6) + "px";
  tip.style.top = Math.min(ev.clientY + 14, innerHeight - r.height - 6) + "px";
}
function hideTip() { tip.style.display = "none"; }
function hover(node, text) {
  node.addEventListener("mousemove", ev => showTip(ev, typeof text === "function" ? text() : text));
  node.addEventListener("mouseleave", hideTip);
}

// Set by draw(): the marker for an edge of a given stroke width.
let arrowFor = null;

function draw(scene, L) {
  world.textContent = "";
  const defs = el("defs", {}, world);
  // Marker sizes count in stroke widths (the SVG default), so one marker per width step keeps
  // every arrowhead about 9 px, however thick its edge.
  const markers = new Map();
  arrowFor = (width, cut) => {
    const step = Math.max(0.5, Math.round(width * 2) / 2);
    const id = (cut ? "arrow-cut-" : "arrow-") + String(step).replace(".", "_");
    if (!markers.has(id)) {
      const mk = el("marker", {id, viewBox: "0 0 10 10", refX: 9, refY: 5,
        markerWidth: 9 / step, markerHeight: 9 / step, orient: "auto-start-reverse"}, defs);
      el("path", {d: "M0,0 L10,5 L0,10 z", fill: cut ? "#D62728" : "#8a8f99"}, mk);
      markers.set(id, mk);
    }
    return "url(#" + id + ")";
  };
  for (const c of L.cols) {
    el("rect", {class: "column-band", x: c.x - 10, y: 0, width: c.width + 20,
      height: L.height + 10, rx: 10, fill: c.color, "fill-opacity": 0.10}, world);
    el("text", {class: "column-title", x: c.x + c.width / 2, y: 20, "text-anchor": "middle",
      fill: darker(c.color)}, world, c.title);
    el("text", {class: "column-sub", x: c.x + c.width / 2, y: 38, "text-anchor": "middle"},
      world, c.sub);
  }
  const depthOf = k => M[scene.clusters.get(k).mi].chain.length;
  [...scene.clusters.keys()].sort((a, b) => depthOf(a) - depthOf(b)).forEach(k => {
    const c = scene.clusters.get(k), r = L.clusters.get(k), m = M[c.mi];
    const color = D.parts.length ? darker(D.parts[c.col].color) : "#556";
    const g = el("g", {class: "cluster", "data-module": m.path}, world);
    el("rect", {x: r.x - r.width / 2, y: r.y - r.height / 2, width: r.width, height: r.height,
      rx: 8, stroke: color}, g);
    const t = el("text", {class: "cluster-title", x: r.x - r.width / 2 + 6,
      y: r.y - r.height / 2 + 12, fill: color}, g, fitText(clusterTitle(m), FONT_TITLE, r.width - 10));
    t.addEventListener("click", ev => { ev.stopPropagation(); toggle(c.mi, c.col, false); });
    hover(t, clusterTitle(m).slice(2) + "\n" + m.path + "\nclick to close");
  });
  for (const e of scene.edges) {
    if (e.cut) continue;
    const d = smooth(e.points), g = el("g", {}, world);
    const width = strokeWidth(e.bytes);
    el("path", {class: "edge", d, "stroke-width": width, "marker-end": arrowFor(width, false)}, g);
    el("path", {class: "edge-hit", d}, g);
    hover(g, edgeTip(e));
  }
  drawCuts(scene, L);
  for (const b of scene.boxes.values()) {
    const r = L.boxes.get(b.key), fill = fillOf(b), ink = textColor(fill);
    const g = el("g", {class: "box" + (b.group ? " group" : ""), "data-key": b.key,
      "data-part": b.col, "data-node": b.group ? "" : D.nodes[b.j].name,
      "data-module": b.group ? M[b.mi].path : "",
      transform: "translate(" + (r.x - r.width / 2) + "," + (r.y - r.height / 2) + ")"}, world);
    if (b.group) el("rect", {x: 4, y: 4, width: r.width, height: r.height, rx: 6, fill,
      "fill-opacity": 0.45, stroke: "none"}, g);
    el("rect", {width: r.width, height: r.height, rx: b.group ? 6 : 10, fill}, g);
    const x0 = b.group ? 24 : r.width / 2, anchor = b.group ? "start" : "middle";
    if (b.group) el("text", {class: "mark", x: 8, y: r.height / 2 + 5, fill: ink,
      "font-size": 15}, g, "+");
    el("text", {x: x0, y: 16, fill: ink, "text-anchor": anchor, "font-size": 12,
      "font-weight": 600}, g, b.text[0]);
    el("text", {x: x0, y: b.group ? 32 : 28, fill: ink, "text-anchor": anchor, "font-size": 11,
      "fill-opacity": 0.85}, g, b.text[1]);
    hover(g, boxTip(b));
    if (b.group) g.addEventListener("click", () => toggle(b.mi, b.col, true));
  }
}
function edgeTip(e) {
  return (e.cut ? "sent between parts\n" : "") + fmtBytes(e.bytes) + " (" +
    e.bytes.toLocaleString() + " B) in " + e.tensors + " tensor" + (e.tensors > 1 ? "s" : "");
}
function drawCuts(scene, L) {
  const labels = [];
  for (const e of scene.edges) {
    if (!e.cut) continue;
    const a = L.boxes.get(e.a), b = L.boxes.get(e.b), fwd = a.x < b.x;
    // forward edges (to a column on the right) above the middle, backward ones below: a pair
    // of boxes that send each other something gets two curves, not one drawn twice
    const dy = (fwd ? -1 : 1) * Math.min(a.height, b.height) / 5;
    const p = {x: a.x + (fwd ? 1 : -1) * a.width / 2, y: a.y + dy};
    const q = {x: b.x - (fwd ? 1 : -1) * b.width / 2, y: b.y + dy};
    const bend = Math.max(60, Math.abs(q.x - p.x) / 2.5) * (fwd ? 1 : -1);
    const d = "M" + p.x + "," + p.y + " C" + (p.x + bend) + "," + p.y + " " + (q.x - bend) + "," +
      q.y + " " + q.x + "," + q.y;
    const g = el("g", {class: "cut-edge"}, world);
    const width = Math.max(2, strokeWidth(e.bytes));
    el("path", {class: "edge cut", d, "stroke-width": width, "marker-end": arrowFor(width, true)}, g);
    el("path", {class: "edge-hit", d}, g);
    hover(g, edgeTip(e));
    // the label sits on the curve, nearer the source, where curves from different boxes are
    // still apart
    const t = 0.35, mt = 1 - t;
    const lx = mt ** 3 * p.x + 3 * mt * mt * t * (p.x + bend) + 3 * mt * t * t * (q.x - bend) + t ** 3 * q.x;
    const ly = mt ** 3 * p.y + 3 * mt * mt * t * p.y + 3 * mt * t * t * q.y + t ** 3 * q.y;
    labels.push({x: lx, y: ly, text: fmtBytes(e.bytes), g});
  }
  labels.sort((u, v) => u.x - v.x || u.y - v.y);
  for (let i = 1; i < labels.length; i++) {   // keep labels in one gap from overlapping
    const u = labels[i - 1], v = labels[i];
    if (Math.abs(u.x - v.x) < 90 && v.y - u.y < 16) v.y = u.y + 16;
  }
  for (const l of labels) el("text", {class: "cut-label", x: l.x, y: l.y - 5,
    "text-anchor": "middle"}, l.g, l.text);
}

// ---------------------------------------------------------------- view: zoom, pan, fit
let scale = 1, tx = 0, ty = 0, open = new Set(), scene = null, placed = null;
let initial = new Set();
function apply() { world.setAttribute("transform", "translate(" + tx + "," + ty + ") scale(" + scale + ")"); }
function fitScale(L) {
  const pad = 16;
  return Math.min((view.clientWidth - 2 * pad) / (L.width + 20),
    (view.clientHeight - 2 * pad) / (L.height + 10), 1.6);
}
function fit() {
  scale = fitScale(placed);
  tx = (view.clientWidth - placed.width * scale) / 2; ty = 16;
  apply();
}
function render(anchor) {
  const t0 = performance.now();
  scene = buildScene(open);
  placed = layout(scene);
  document.body.dataset.layoutMs = String(Math.round(performance.now() - t0));
  draw(scene, placed);
  if (anchor) {          // keep the module just clicked under the pointer
    const r = placed.clusters.get("c" + anchor.mi + "_" + anchor.col) ||
      placed.boxes.get("g" + anchor.mi + "_" + anchor.col);
    if (r) { tx = anchor.sx - (r.x - r.width / 2) * scale; ty = anchor.sy - (r.y - r.height / 2) * scale; }
    apply();
  } else fit();
  document.body.dataset.boxes = String(scene.boxes.size);
  document.body.dataset.rendered = "yes";
}
function toggle(mi, col, opening) {
  const r = opening ? placed.boxes.get("g" + mi + "_" + col) : placed.clusters.get("c" + mi + "_" + col);
  const anchor = {mi, col, sx: (r.x - r.width / 2) * scale + tx, sy: (r.y - r.height / 2) * scale + ty};
  if (opening) open.add(mi); else open.delete(mi);
  hideTip();
  render(anchor);
}
view.addEventListener("wheel", ev => {
  ev.preventDefault();
  const f = Math.exp(-ev.deltaY * 0.0015), r = view.getBoundingClientRect();
  const mx = ev.clientX - r.left, my = ev.clientY - r.top;
  tx = mx - (mx - tx) * f; ty = my - (my - ty) * f; scale *= f; apply();
}, {passive: false});
let drag = null;
view.addEventListener("mousedown", ev => {
  if (ev.target.closest(".group, .cluster-title")) return;
  drag = [ev.clientX - tx, ev.clientY - ty, ev.clientX, ev.clientY]; view.classList.add("dragging");
});
addEventListener("mouseup", () => { drag = null; view.classList.remove("dragging"); });
addEventListener("mousemove", ev => { if (drag) { tx = ev.clientX - drag[0]; ty = ev.clientY - drag[1]; apply(); } });
addEventListener("keydown", ev => { if (ev.key === "f" && ev.target === document.body) fit(); });
addEventListener("resize", () => fit());
document.getElementById("btn-fit").onclick = fit;
document.getElementById("btn-more").onclick = () => {
  for (const b of scene.boxes.values()) if (b.group) open.add(b.mi);
  render();
};
document.getElementById("btn-less").onclick = () => { open = new Set(initial); render(); };

// ---------------------------------------------------------------- find, links, legend
function openAround(chain) {
  for (const a of chain) if (!M[a].transparent) open.add(a);
}
function focus(key) {
  const r = placed.boxes.get(key);
  if (!r) return false;
  world.querySelectorAll(".highlight").forEach(e => e.classList.remove("highlight"));
  const g = world.querySelector('[data-key="' + key + '"]');
  if (g) g.classList.add("highlight");
  scale = Math.max(scale, 1);
  tx = view.clientWidth / 2 - r.x * scale; ty = view.clientHeight / 2 - r.y * scale;
  apply();
  return true;
}
function find(q) {
  // a node's name, then a module's path, then any node whose name or target contains q
  q = q.trim();
  if (!q) return false;
  let j = D.nodes.findIndex(n => n.name === q);
  const mi = M.findIndex(m => m.path === q);
  if (j < 0 && mi < 0) j = D.nodes.findIndex(n => n.name.includes(q) || n.target.includes(q));
  if (j >= 0) { openAround(nodeChain(j)); render(); return focus(repOf(j, open)); }
  if (mi >= 0) {
    openAround(M[mi].chain.slice(0, -1)); open.delete(mi); render();
    const col = [...scene.boxes.values()].find(b => b.group && b.mi === mi);
    return col ? focus(col.key) : false;
  }
  return false;
}
const findBox = document.getElementById("find");
findBox.addEventListener("keydown", ev => {
  if (ev.key !== "Enter") return;
  findBox.classList.toggle("missing", !find(findBox.value));
});
const legend = document.getElementById("legend");
for (const p of D.parts) {
  const s = document.createElement("span"); s.className = "part";
  const sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = p.color;
  s.appendChild(sw); s.appendChild(document.createTextNode("part " + p.id)); legend.appendChild(s);
}
if (D.sends.length) {
  const t = document.createElement("span"); t.className = "send";
  t.textContent = "sent: " + D.sends.map(s => s.src + " \u2192 " + s.dst + " " +
    fmtBytes(s.bytes)).join(" \u00b7 ");
  legend.appendChild(t);
}
open = firstView();
initial = new Set(open);
// a link can say what to open: page.html#open=h.0,h.0.attn or page.html#find=addmm_3
const hash = new URLSearchParams(location.hash.slice(1));
for (const path of (hash.get("open") || "").split(",")) {
  const m = M.find(x => x.path === path);
  if (m) openAround(m.chain);
}
render();
if (hash.get("find")) find(hash.get("find"));
})();
