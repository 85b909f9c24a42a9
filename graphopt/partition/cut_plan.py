"""Where to cut nodes so a pipeline stage boundary can land inside them, for balance or bytes.

A plan of ``k`` stages can keep every stage within ``imbalance`` of its FLOPs share only if, near
each ideal boundary, the graph offers a place to cut. Coarse nodes (a BERT FFN matmul holds 3% of
the model) leave gaps; and where a node boundary does exist it may sit mid-block, where the
tensors crossing it are four times the hidden state. Two ways to cut, each exact:

* **row regions** (:mod:`graphopt.partition.rowwise`): a stretch of row-wise ops (LayerNorm, matmul, GELU,
  matmul, residual add: a transformer FFN block) computed as token blocks, so a boundary between
  blocks sends hidden-size rows: the rows still to do, and the rows done. Under a causal mask a
  whole decoder layer is such a region; a boundary then also sends the earlier rows' keys and
  values (half of them are priced into the region's cost).
* **single nodes**: a matmul's rows, attention's heads or a convolution's output channels.

:func:`plan_cuts` places ideal boundaries (equal FLOPs shares, or equal shares of the cost
model's predicted time, what the stages balance) and offers cuts at and around them; the partitioner picks
among them and :func:`prune_cuts` drops the cuts no stage boundary used, since every extra
block costs a kernel launch per op. :mod:`graphopt.partition.cut_rewrite` does the rewriting.

One noun: a node (or a row region) is *cut* into *blocks*. The CLI's ``--split`` and
partition.json's ``splits`` keep their names for compatibility; they mean these cuts.

Needs ``meta['val']`` on every node. O(V + E) plus O(regions * span^2) labelling checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx

from graphopt.cost import OpClass
from graphopt.errors import PlanError
from graphopt.graph import Graph
from graphopt.partition.costgraph import CostGraph
from graphopt.partition.rowwise import Region, label_region, prefix_bytes

__all__ = ["CUTTABLE", "STRATEGIES", "BALANCES", "Cut", "node_cut_kind", "plan_cuts",
           "prune_cuts", "cuts_from_dicts"]

aten = torch.ops.aten
STRATEGIES = ("rows", "nodes")
BALANCES = ("flops", "time")
_MAX_SPAN = 128      # nodes a region may hold: a decoder layer is about 60
_STEP = 5            # nodes a region grows by at most in one step (a split and its getitems)
_EDGES = (0.5, 0.95)  # extra cuts at these fractions of the tolerance on either side of a target

# op -> index of the operand whose rows are split (convolution: output channels instead)
CUTTABLE = {aten.mm.default: 0, aten.addmm.default: 1, aten.bmm.default: 0,
              aten.matmul.default: 0, aten.linear.default: 0, aten.convolution.default: None,
              aten.conv1d.default: None, aten.conv2d.default: None, aten.conv3d.default: None,
              aten.scaled_dot_product_attention.default: None}
_CONV = (aten.convolution.default, aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)


def node_cut_kind(node: torch.fx.Node) -> tuple[int, dict[int, int], int] | None:
    """(rows, {argument index: dim to slice}, output dim to cat on) if the node can be cut."""
    if node.op != "call_function" or node.target not in CUTTABLE:
        return None
    vals = [_val(a) for a in node.args]
    if not all(isinstance(v, torch.Tensor) for v in vals[:2]):
        return None
    out = node.meta.get("val")
    if not isinstance(out, torch.Tensor):
        return None
    if node.target in _CONV:
        if node.target == aten.convolution.default:
            transposed, groups = node.args[6], node.args[8]
        else:
            transposed, groups = False, node.args[6] if len(node.args) > 6 else \
                node.kwargs.get("groups", 1)
        if transposed or groups != 1 or "bias" in node.kwargs:
            return None
        sl = {1: 0, 2: 0} if len(vals) > 2 and vals[2] is not None else {1: 0}
        return int(vals[1].shape[0]), sl, 1
    if node.target == aten.scaled_dot_product_attention.default:
        q, k, v = vals[:3]
        mask = vals[3] if len(vals) > 3 else node.kwargs.get("attn_mask")
        if q.dim() != 4 or k.shape[1] != q.shape[1] or v.shape[1] != q.shape[1] or \
                node.kwargs.get("enable_gqa") or (len(vals) > 7 and vals[7]):
            return None
        sl = {0: 1, 1: 1, 2: 1}
        if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[1] != 1:
            if len(vals) <= 3:
                return None
            sl[3] = 1
        return int(q.shape[1]), sl, 1
    idx = CUTTABLE[node.target]
    x = vals[idx]
    if x.dim() < 2 or (node.target == aten.matmul.default and vals[1].dim() < 2):
        return None
    if node.target == aten.addmm.default and isinstance(vals[0], torch.Tensor) and \
            vals[0].dim() == 2 and vals[0].shape[0] != 1:
        return None   # a full-matrix bias would need slicing too; rare, so left whole
    return int(x.shape[-2]), {idx: x.dim() - 2}, out.dim() - 2


def _val(a):
    return a.meta.get("val") if isinstance(a, torch.fx.Node) else a


_SLICED_MAX = 16   # how much larger than the output the sliced operands of a cut node may be


def _cheap_to_cut(node: torch.fx.Node, sliced: dict[int, int]) -> bool:
    """Whether a boundary between the node's blocks sends about what its output does. A
    boundary sends the sliced operands' rows still to do; when those operands dwarf the output
    (a mixture of experts' batched matmul over per-token gathered expert weights: 180 MB in,
    0.7 MB out) the cut costs more than any node boundary nearby, so it is not offered."""
    out = _val(node)
    ins = sum(v.numel() * v.element_size() for i in sliced
              if isinstance(v := _val(node.args[i]), torch.Tensor))
    return not isinstance(out, torch.Tensor) or \
        ins <= _SLICED_MAX * max(out.numel() * out.element_size(), 1)


def _weights_read(graph: Graph, names: list[str]) -> int:
    """Bytes of the parameters the nodes ``names`` read (each once). Every block of a cut node
    reads all of them, so each stage its blocks land in holds a copy."""
    fx = {n.name: n for n in graph.fx_nodes()}
    seen = {u.name for x in names for u in fx[x].all_input_nodes
            if u.name in graph.info and graph.info[u.name].is_param}
    return sum(int(graph.info[u].out_bytes) for u in seen)


@dataclass
class _Layout:
    """The non-parameter nodes in graph order with FLOPs prefix sums and cut sizes.

    ``before[p]``: FLOPs of nodes ``0..p-1``; ``cut[p]``: bytes of the tensors a contiguous
    boundary right before node ``p`` sends (each crossing tensor once)."""

    fx: list
    infos: list
    before: np.ndarray
    cut: np.ndarray
    pos: dict

    @classmethod
    def of(cls, graph: Graph) -> _Layout:
        fx = {n.name: n for n in graph.fx_nodes()}
        infos = [i for i in graph.nodes() if not i.is_param]
        nodes = [fx[i.name] for i in infos]
        pos = {n.name: p for p, n in enumerate(nodes)}
        m = len(nodes)
        diff = np.zeros(m + 2, dtype=np.float64)
        for p, (n, i) in enumerate(zip(nodes, infos)):
            last = max((pos[u.name] for u in n.users if u.name in pos), default=p)
            if last > p:
                diff[p + 1] += i.out_bytes
                diff[last + 1] -= i.out_bytes
        cut = np.cumsum(diff)[:m + 1]
        before = np.concatenate([[0.0], np.cumsum([float(i.flops) for i in infos])])
        return cls(nodes, infos, before, cut, pos)


def _anchor_dims(node) -> list[int]:
    out = _val(node)
    if not isinstance(out, torch.Tensor):
        return []
    return sorted((d for d in range(out.dim()) if out.shape[d] >= 2), key=lambda d: -out.shape[d])


def _region_cost(lay: _Layout, a: int, b: int, reg) -> float:
    """Bytes a boundary inside rows ``a..b`` sends at worst: the larger of the cuts at its two
    ends plus the tensors every block needs whole."""
    whole = sum(lay.infos[lay.pos[w]].out_bytes for w in reg.whole if w in lay.pos)
    # causal attention's keys and values: a boundary halfway sends half of them
    prefix = prefix_bytes(reg, {n.name: n for n in lay.fx[a:b + 1]}) / 2
    return max(lay.cut[a], lay.cut[b + 1]) + whole + prefix


def _find_region(lay: _Layout, i: int, floor: int, giants: set[int]
                 ) -> tuple[int, int, Region, float] | None:
    """The cheapest row-wise interval of the graph order around node ``i``: ``(a, b, region,
    cost)`` or ``None``. Grows the widest valid interval, then picks the sub-interval whose
    ends cut the fewest bytes (a transformer FFN block: hidden-size rows at both ends)."""
    launches = np.concatenate([[0], np.cumsum([info.op == "call_function" and
                                               info.op_class != OpClass.VIEW
                                               for info in lay.infos])])
    for dim in _anchor_dims(lay.fx[i]):
        def ok(a, b):
            if any(p in giants for p in range(a, b + 1)):
                return None
            return label_region(lay.fx[a:b + 1], lay.fx[i], dim)
        if ok(i, i) is None:
            continue
        lo = hi = i
        grow_lo = grow_hi = True        # both ways in turn: a boundary mid-layer wants the
        while (grow_lo or grow_hi) and hi - lo < _MAX_SPAN:   # layer's start and end
            if grow_hi:
                # a few nodes at once where one alone cannot end a region (a split before
                # the getitems that take its pieces)
                step = next((s for s in range(1, _STEP + 1) if hi + s < len(lay.fx) and
                             ok(lo, hi + s) is not None), 0)
                grow_hi, hi = step > 0, hi + step
            if grow_lo and hi - lo < _MAX_SPAN:
                step = next((s for s in range(1, _STEP + 1) if lo - s > floor and
                             ok(lo - s, hi) is not None), 0)
                grow_lo, lo = step > 0, lo - step
        # cheapest ends first; among equals the fewest kernels, since every block runs each
        # of the region's kernels once more
        spans = sorted((max(lay.cut[a], lay.cut[b + 1]), int(launches[b + 1] - launches[a]),
                         a, b) for a in range(lo, i + 1) for b in range(i, hi + 1))
        best = None
        for _, _, a, b in spans[:24]:
            reg = ok(a, b)
            if reg is not None:
                cost = _region_cost(lay, a, b, reg)
                if best is None or cost < best[3]:
                    best = (a, b, reg, cost)
        if best is not None:
            return best
    return None


def _cheap_region(lay: _Layout, found) -> bool:
    """Whether a boundary inside the region sends about what its values do: not when an input
    its blocks slice dwarfs them (a mixture of experts' per-token gathered expert weights), the
    same test as :func:`_cheap_to_cut` for a single node."""
    a, b, reg, cost = found
    biggest = max((lay.infos[p].out_bytes for p in range(a, b + 1)
                   if lay.fx[p].name in reg.dims), default=0)
    return cost <= _SLICED_MAX * max(biggest, 1)


def _targets(lay: _Layout, k: int, speeds, giants: set[int]) -> list[float]:
    """Ideal stage boundaries as FLOPs prefix positions. A node alone heavier than ``total/k``
    gets a part of its own, so the others share the rest: boundaries are spread over the
    non-giant FLOPs only (GPT-2's LM head, 31% of the model, leaves 69% to k - 1 stages)."""
    total = float(lay.before[-1])
    if speeds is not None:
        sp = [float(s) for s in speeds]
        return [total * sum(sp[:j + 1]) / sum(sp) for j in range(k - 1)]
    flops = np.diff(lay.before)
    light = flops.copy()
    light[list(giants)] = 0.0
    ng = np.concatenate([[0.0], np.cumsum(light)])
    parts = k - len(giants)
    if parts < 1:
        return []
    out = []
    for j in range(1, parts):
        t = ng[-1] * j / parts
        p = int(np.searchsorted(ng, t, side="right")) - 1   # node p straddles t (non-giant)
        p = min(max(p, 0), len(flops) - 1)
        out.append(float(lay.before[p] + (t - ng[p])))
    return out


def _time_targets(lay: _Layout, seconds: np.ndarray, k: int, cap: float) -> list[float] | None:
    """Boundaries that balance the cost model's time rather than the FLOPs, each part kept
    under ``cap`` FLOPs: a part may hold less than its FLOPs share (the tolerance bounds only
    the largest), and the embedding stage, slow for its FLOPs, should. Continuous min-max by
    bisection on the slowest part's time, greedy filling along the order; returns FLOPs prefix
    positions (``None`` when even the FLOPs cap alone cannot be met)."""
    m = len(lay.fx)
    flops = np.diff(lay.before)
    T = np.concatenate([[0.0], np.cumsum(seconds)])
    F = lay.before

    def at(P, per, u):
        i = min(int(u), m - 1)
        return P[i] + (u - i) * per[i]

    def inv(P, per, v):
        i = int(np.searchsorted(P, v, side="right")) - 1
        if i >= m:
            return float(m)
        return i + (min((v - P[i]) / per[i], 1.0) if per[i] > 0 else 1.0)

    def fill(tau):
        u, cuts = 0.0, []
        for _ in range(k - 1):
            u = min(inv(T, seconds, at(T, seconds, u) + tau), inv(F, flops, at(F, flops, u) + cap))
            cuts.append(u)
        ok = T[-1] - at(T, seconds, u) <= tau * (1 + 1e-9) and F[-1] - at(F, flops, u) <= cap
        return cuts if ok else None

    lo, hi = T[-1] / k, T[-1]
    if fill(hi) is None:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if fill(mid) is None:
            lo = mid
        else:
            hi = mid
    return [float(at(F, flops, u)) for u in fill(hi)]



@dataclass
class Cut:
    """One thing to cut into blocks: a row region (``nodes``: its interval, in graph order) or a single
    node (``nodes == [name]``, ``region is None``), at ``cuts`` (row / head / channel indices).
    ``blocks`` (filled by the rewrite) holds the new node names of each block, in order."""

    nodes: list[str]
    cuts: list[int]
    region: Region | None = None
    blocks: list[list[str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """What ``partition.json`` records (``splits``), enough to make the same cut again."""
        d = {"nodes": list(self.nodes), "cuts": list(self.cuts)}
        if self.region is not None:
            d.update(anchor=self.region.anchor, dim=self.region.anchor_dim)
        return d

    @property
    def label(self) -> str:
        if self.region is None:
            return self.nodes[0]
        return f"rows of {self.nodes[0]}..{self.nodes[-1]}"


def _row_cut(t: float, start: float, work: float, rows: int) -> int | None:
    """The row index at FLOPs position ``t`` of a stretch of ``work`` FLOPs from ``start``."""
    if work <= 0 or not start < t < start + work:
        return None
    return min(max(round((t - start) / work * rows), 1), rows - 1)


def plan_cuts(graph: Graph, k: int, eps: float, speeds=None, strategy: str = "rows",
                balance: str = "flops", device="h100", giants: bool = False,
                spread: bool = True) -> list[Cut]:
    """The cuts to make, for one strategy and one way of placing the ideal boundaries.

    * ``rows``: at each ideal boundary, if a row-wise region around it sends fewer bytes than
      the cheapest node boundary within the tolerance, the region gets cuts there; where no node
      boundary lies within the tolerance and no region exists, the straddling node is cut alone.
    * ``nodes``: the node straddling each ideal boundary is cut alone.

    Cuts go at the boundary and (with ``spread``) at fractions of the tolerance either side, so
    the partitioner can take the one that sends least (few rows of a matmul whose output is
    wider than its input, most rows of one that narrows). ``balance`` places the ideal
    boundaries: ``flops`` at equal FLOPs shares, ``time`` where the cost model's time on
    ``device`` balances, as the stages do, with no FLOPs cap (nothing when devices differ in
    speed or one node's time outweighs 1/k). A single node whose blocks would read more than
    ``1/k`` of the model's parameters (an LM head) is not cut (unless ``giants``): each stage
    its blocks land in would hold a copy of them.
    A node heavier than ``total/k`` normally keeps a part to itself (the plan says so); with
    ``giants`` (``nodes`` strategy only) it is cut at the equal-FLOPs boundaries like any other,
    the only way to balance a graph where one node holds most of the work.

    Example:
        >>> cuts = plan_cuts(graph, k=2, eps=0.03)
        >>> [(c.label, c.cuts) for c in cuts]
        [('rows of layer_norm_17..add_39', [41, 58, 62])]
    """
    if strategy not in STRATEGIES:
        raise PlanError(f"unknown split strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if balance not in BALANCES:
        raise PlanError(f"unknown balance {balance!r}; use one of {', '.join(BALANCES)}")
    lay = _Layout.of(graph)
    total = float(lay.before[-1])
    if total <= 0 or k < 2 or not lay.fx:
        return []
    flops = np.diff(lay.before)
    if giants and (strategy != "nodes" or not (flops > total / k).any()):
        return []
    # nodes alone heavier than total/k keep a part each (unless asked to cut them)
    heavy = set() if speeds is not None or giants else \
        {int(p) for p in np.flatnonzero(flops > total / k)}
    sp = [float(s) for s in (speeds or [1.0] * k)]
    width = eps * (total - sum(flops[p] for p in heavy)) / max(k - len(heavy), 1) * \
        min(sp) / (sum(sp) / k)            # how far one boundary may move: the full tolerance
    if balance == "flops":
        targets = _targets(lay, k, speeds, heavy)
    else:
        if speeds is not None or giants:
            return []
        cg = CostGraph.from_graph(graph, device)
        secs = cg.seconds[~cg.is_param]
        if (secs > secs.sum() / k).any():    # a node slower than a stage's share: no balance
            return []
        # stages balance their predicted time, not their FLOPs: no FLOPs cap, and a node
        # heavy in FLOPs (an LM head) is cut like any other
        heavy = set()
        targets = _time_targets(lay, secs, k, total)
        if targets is None:
            return []
    regions: list[list] = []           # [a, b, region, cost, targets]
    single: dict[int, list[float]] = {}
    for t in targets:
        i = int(np.searchsorted(lay.before, t, side="right")) - 1
        i = min(max(i, 0), len(lay.fx) - 1)
        if i in heavy or not lay.before[i] < t < lay.before[i + 1]:
            continue
        near = np.flatnonzero(np.abs(lay.before - t) <= width / 2)
        if strategy == "nodes":
            single.setdefault(i, []).append(t)
            continue
        held = next((r for r in regions if r[0] <= i <= r[1]), None)
        if held is not None:
            held[4].append(t)
            continue
        floor = max((r[1] for r in regions), default=-1)
        found = _find_region(lay, i, floor, heavy) if i > floor else None
        node_cost = float(lay.cut[near].min()) if len(near) else np.inf
        if found is not None and not _cheap_region(lay, found):
            found = None
        if found is not None and found[3] < node_cost:
            regions.append([*found, [t]])
        elif not len(near):
            single.setdefault(i, []).append(t)

    def around(ts: list[float]) -> list[float]:
        edges = _EDGES if spread else ()
        return ts + [t + side * e * width for t in ts for e in edges for side in (-1, 1)]

    # a node cut whose blocks read more than a stage's share of the parameters (an LM head
    # tied to the embedding: 69% of a 2-layer GPT-2's) would put a copy of them on every stage
    # its blocks land in: memory no bytes saved on a boundary pay for, so it is not offered.
    # (Row regions are offered still: a whole causal decoder stack cut by tokens sends one
    # hidden state, and its weights are the layers' own.)
    params = sum(int(i.out_bytes) for i in graph.nodes() if i.is_param)

    def heavy_weights(names: list[str]) -> bool:   # (cutting giants is the only way to balance)
        return params > 0 and not giants and _weights_read(graph, names) > params / k

    out: list[Cut] = []
    for a, b, reg, _, ts in regions:
        lab = [p for p in range(a, b + 1) if lay.fx[p].name in reg.dims]
        start = lay.before[a] + sum(flops[p] for p in range(a, b + 1) if p not in lab)
        work = float(sum(flops[p] for p in lab))
        cuts = sorted({c for t in around(ts) if (c := _row_cut(t, start, work, reg.rows))})
        if cuts:
            out.append(Cut([lay.fx[p].name for p in range(a, b + 1)], cuts, reg))
    inside = {p for a, b, *_ in regions for p in range(a, b + 1)}
    for i, ts in sorted(single.items()):
        if i in inside:         # a region found later covers this node: its cuts do
            continue
        how = node_cut_kind(lay.fx[i])
        if how is None or how[0] < 2 or not _cheap_to_cut(lay.fx[i], how[1]) or \
                heavy_weights([lay.fx[i].name]):
            continue
        cuts = sorted({c for t in around(ts)
                       if (c := _row_cut(t, lay.before[i], float(flops[i]), how[0]))})
        if cuts:
            out.append(Cut([lay.fx[i].name], cuts))
    return out


def cuts_from_dicts(graph: Graph, records, source: str = "plan") -> list[Cut]:
    """The cuts a plan's ``splits`` records, checked against ``graph``: PlanError says which
    record does not fit (unknown nodes, a region that is no longer row-wise, bad indices)."""
    if not isinstance(records, list):
        raise PlanError(f"{source}: 'splits' must be a list")
    fx = {n.name: n for n in graph.fx_nodes()}
    out = []
    for i, r in enumerate(records):
        where = f"{source}: splits[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("nodes"), list) or \
                not isinstance(r.get("cuts"), list) or not r["nodes"] or not r["cuts"]:
            raise PlanError(f"{where} needs non-empty 'nodes' and 'cuts' lists")
        missing = [n for n in r["nodes"] if n not in fx]
        if missing:
            raise PlanError(f"{where} names {missing[0]!r}, which {graph.name} lacks; was the "
                            "plan made for this model and these input shapes?")
        cuts = r["cuts"]
        if "anchor" in r:
            if r["anchor"] not in r["nodes"] or not isinstance(r.get("dim"), int):
                raise PlanError(f"{where}: 'anchor' must be one of its nodes and 'dim' an int")
            region = label_region([fx[n] for n in r["nodes"]], fx[r["anchor"]], r["dim"])
            if region is None:
                raise PlanError(f"{where}: {r['nodes'][0]}..{r['nodes'][-1]} is not row-wise "
                                f"along dim {r['dim']} of {r['anchor']!r}")
            rows = region.rows
        else:
            region, how = None, node_cut_kind(fx[r["nodes"][0]])
            if len(r["nodes"]) != 1 or how is None:
                raise PlanError(f"{where}: {r['nodes'][0]!r} is not a node that can be cut")
            rows = how[0]
        if not all(isinstance(c, int) and 0 < c < rows for c in cuts) or cuts != sorted(set(cuts)):
            raise PlanError(f"{where}: cuts must be increasing integers in 1..{rows - 1}")
        out.append(Cut(list(r["nodes"]), list(cuts), region))
    return out


def prune_cuts(cuts: list[Cut], part: dict[str, int]) -> list[Cut]:
    """Only the cuts a plan's stage boundaries use: a cut stays where the blocks on its two
    sides are not all in one part. Merging the others back removes their extra kernels."""
    out = []
    for c in cuts:
        keep = []
        for j, cut in enumerate(c.cuts):
            here = {part[n] for n in c.blocks[j] if n in part}
            there = {part[n] for n in c.blocks[j + 1] if n in part}
            if len(here | there) > 1:
                keep.append(cut)
        if keep:
            out.append(Cut(list(c.nodes), keep, c.region))
    return out
