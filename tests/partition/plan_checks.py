"""What every ``partition.json`` must satisfy, checked from its nodes and edges alone."""
from __future__ import annotations

from partition_dags import has_cycle


def check_document(data: dict) -> dict:
    """Assert the contract on a plan document; returns the numbers recomputed here.

    Every node once with a part in ``0..k-1``; in pipeline mode the graph of parts acyclic and
    stage-ordered; ``summary`` equal to what the nodes and edges give by the contract's
    definitions (communication volume, per-part FLOPs and parameter bytes, imbalance,
    acyclicity).
    """
    k, nodes, edges = data["k"], data["nodes"], data["edges"]
    part = {n["name"]: n["part"] for n in nodes}
    assert len(part) == len(nodes), "a node appears twice"
    bad = [n["name"] for n in nodes if not isinstance(n["part"], int) or not 0 <= n["part"] < k]
    assert not bad, f"nodes without a part in 0..{k - 1}: {bad[:5]}"
    by = {n["name"]: n for n in nodes}
    quotient = {(part[e["src"]], part[e["dst"]]) for e in edges
                if not by[e["src"]]["is_param"] and part[e["src"]] != part[e["dst"]]}
    acyclic = not has_cycle(quotient, k)
    if data["mode"] == "pipeline":
        assert acyclic and all(a < b for a, b in quotient), "data flows to a lower part"
    dests: dict[str, set] = {}
    held: dict[int, set] = {p: set() for p in range(k)}
    for e in edges:
        src = by[e["src"]]
        if src["is_param"]:
            held[part[e["dst"]]].add(e["src"])
        elif part[e["dst"]] != part[e["src"]]:
            dests.setdefault(e["src"], set()).add(part[e["dst"]])
    comm = sum(by[u]["out_bytes"] * len(d) for u, d in dests.items())
    flops = [0] * k
    for n in nodes:
        if not n["is_param"]:
            flops[n["part"]] += n["flops"]
    total = sum(flops)
    imbalance = max(flops) / (total / k) - 1 if total else 0.0
    s = data["summary"]
    assert s["comm_bytes"] == comm
    assert s["part_flops"] == flops
    assert s["part_param_bytes"] == [sum(by[u]["out_bytes"] for u in held[p]) for p in range(k)]
    assert abs(s["imbalance"] - imbalance) <= 1e-9
    # time_imbalance: the same over the stages' predicted seconds (each over its speed)
    raw = [0.0] * k
    for n in nodes:
        if not n["is_param"]:
            raw[n["part"]] += n.get("seconds", 0.0)
    speeds = (data.get("options") or {}).get("speeds") or [1.0] * k
    ideal = sum(raw) / sum(speeds)
    if ideal > 0:
        want = max(r / sp for r, sp in zip(raw, speeds)) / ideal - 1
        assert abs(s["time_imbalance"] - want) <= 1e-6 * max(1.0, abs(want))
    # every part holds at least one non-parameter node
    assert {n["part"] for n in nodes if not n["is_param"]} == set(range(k)), \
        "a part holds only parameters"
    assert s["acyclic"] is acyclic
    return {"comm_bytes": comm, "imbalance": imbalance, "part_flops": flops}
