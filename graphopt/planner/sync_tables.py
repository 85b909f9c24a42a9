"""What-if views of data parallelism: parameter server against ring all-reduce, and scaling over N.

**Gradient synchronization**, ``m`` gradient bytes over ``n`` workers on an alpha-beta link
(``α`` seconds a message, ``β`` seconds a byte):

| scheme | time per step | bytes a worker sends + receives | bytes through the busiest endpoint |
| --- | --- | --- | --- |
| ring all-reduce | ``2(n−1)(α + (m/n)β)`` | ``4(n−1)m/n`` | ``4(n−1)m/n`` (every rank alike) |
| parameter server, ``S`` shards | ``2·max(Sα + mβ, nα + (nm/S)β)`` | ``2m`` | ``2nm/S`` (a server) |

(the times are :func:`~graphopt.costmodel.collectives.ring_allreduce_seconds` and
:func:`~graphopt.costmodel.collectives.parameter_server_seconds`). A ring worker moves less than
twice what a parameter-server worker does, whatever ``n``, while one server's link carries all
``n`` workers' gradients: on this model the ring is faster at every ``n >= 2``, link and size,
by ``n(α + mβ) / ((n−1)(α + mβ/n))``: 2 to 4 at ``n = 2``, then growing like ``n`` where the
bytes dominate (large models) and falling towards 1 where the latencies do (small ones).
Sharding the server over ``n`` endpoints brings it to ``2nα + 2mβ``, within ``2α + 2mβ/n`` of
the ring, at the price of ``n`` server roles. :func:`sync_table` tabulates
both as ``n``, the link and the model size vary; :func:`sync_summary` says how the ratio grows.

**Scaling**: the linear scalability model ``C(N) = C(1) + k(N − 1)`` (throughput ``C`` in
samples per second) fitted by least squares to measured or predicted throughputs
(:func:`fit_linear_scalability`): ``k`` is what each added device contributes, ``k / C(1)`` that
as a share of one device (1: linear scaling, 0: none, below 0: slower with more).

Example:
    >>> rows = sync_table(4 << 20, {"pcie4": LINKS["pcie4"]}, ns=(2, 8))
    >>> fit_linear_scalability([1, 2, 4], [100.0, 190.0, 370.0])["k"]
    90.0
"""
from __future__ import annotations

import math

import numpy as np

from graphopt.costmodel.collectives import parameter_server_seconds, ring_allreduce_seconds
from graphopt.errors import GraphoptError

__all__ = ["sync_bytes", "sync_table", "sync_summary", "fit_linear_scalability", "plot_sync",
           "plot_scaling", "DEFAULT_NS", "SIZE_SCALES"]

DEFAULT_NS = (2, 4, 8, 16, 32, 64)
SIZE_SCALES = (0.01, 0.1, 1.0, 10.0)      # model sizes tried: these times the model's gradients


def sync_bytes(scheme: str, nbytes: float, n: int, servers: int = 1) -> dict:
    """Bytes one step moves: per worker (sent + received) and through the busiest endpoint."""
    if n <= 1:
        return {"worker": 0.0, "busiest": 0.0}
    if scheme == "ring":
        per = 4 * (n - 1) * nbytes / n
        return {"worker": per, "busiest": per}
    if scheme == "ps":
        return {"worker": 2.0 * nbytes, "busiest": max(2.0 * nbytes, 2.0 * n * nbytes / servers)}
    raise GraphoptError(f"unknown synchronization scheme {scheme!r}; use ring or ps")


def sync_table(grad_bytes: int, links: dict, *, ns=DEFAULT_NS, scales=SIZE_SCALES) -> list[dict]:
    """One row per (link, model size, n): ring and parameter-server (1 and n shards) times and
    bytes. ``links``: name -> :class:`~graphopt.cost.LinkSpec` (``beta`` in bytes per second)."""
    rows = []
    for name, link in links.items():
        for scale in scales:
            m = max(1, int(grad_bytes * scale))
            for n in ns:
                ring = ring_allreduce_seconds(m, n, link)
                ps1 = parameter_server_seconds(m, n, link, servers=1)
                psn = parameter_server_seconds(m, n, link, servers=n)
                rows.append({
                    "link": name, "alpha_s": link.alpha, "beta_s_per_byte": 1.0 / link.beta,
                    "model_bytes": m, "scale": scale, "n": n, "ring_s": ring, "ps_s": ps1,
                    "ps_sharded_s": psn, "ps_over_ring": ps1 / ring if ring > 0 else math.inf,
                    "ring_worker_bytes": sync_bytes("ring", m, n)["worker"],
                    "ps_worker_bytes": sync_bytes("ps", m, n)["worker"],
                    "ps_server_bytes": sync_bytes("ps", m, n, 1)["busiest"]})
    return rows


def sync_summary(rows: list[dict]) -> list[dict]:
    """Per (link, model size): one server's time over the ring's at the smallest and largest
    ``n``, and whether the ring was faster at every ``n``."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["link"], r["model_bytes"]), []).append(r)
    summary = []
    for (link, m), group in out.items():
        group = sorted(group, key=lambda r: r["n"])
        summary.append({"link": link, "model_bytes": m, "n_min": group[0]["n"],
                        "ps_over_ring_at_n_min": group[0]["ps_over_ring"],
                        "n_max": group[-1]["n"], "ps_over_ring_at_n_max": group[-1]["ps_over_ring"],
                        "ring_always_faster": all(r["ring_s"] < r["ps_s"] for r in group)})
    return summary


def fit_linear_scalability(ns, throughputs) -> dict:
    """Least-squares fit of ``C(N) = C(1) + k(N − 1)``.

    Returns:
        ``{"c1", "k", "efficiency" (k / c1), "rel_err_max", "rel_err_rms", "points"}``.

    Raises:
        GraphoptError: fewer than two distinct N, or a throughput that is not positive.
    """
    n = np.asarray(ns, dtype=float)
    c = np.asarray(throughputs, dtype=float)
    if len(n) != len(c) or len(set(n.tolist())) < 2:
        raise GraphoptError("the scalability fit needs throughputs at two or more device counts")
    if not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise GraphoptError("the scalability fit needs positive, finite throughputs")
    a = np.stack([np.ones_like(n), n - 1.0], axis=1)
    (c1, k), *_ = np.linalg.lstsq(a, c, rcond=None)
    fitted = c1 + k * (n - 1.0)
    rel = np.abs(fitted - c) / c
    return {"c1": float(c1), "k": float(k), "efficiency": float(k / c1) if c1 else math.nan,
            "rel_err_max": float(rel.max()), "rel_err_rms": float(np.sqrt(np.mean(rel ** 2))),
            "points": [[float(x), float(y)] for x, y in zip(n, c)]}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_sync(rows: list[dict], path, *, title: str = "") -> str:
    """Ring vs parameter server: time over n at the model's size (left), over the model size
    at the largest n (right), one colour per link."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    links = list(dict.fromkeys(r["link"] for r in rows))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    n_max = max(r["n"] for r in rows)
    for i, name in enumerate(links):
        col = colours[i % len(colours)]
        mine = [r for r in rows if r["link"] == name and r["scale"] == 1.0]
        ns = [r["n"] for r in mine]
        left.plot(ns, [r["ring_s"] for r in mine], "-o", color=col, label=f"{name}: ring")
        left.plot(ns, [r["ps_s"] for r in mine], "--s", color=col, label=f"{name}: 1 server")
        big = [r for r in rows if r["link"] == name and r["n"] == n_max]
        right.plot([r["model_bytes"] for r in big], [r["ring_s"] for r in big], "-o", color=col)
        right.plot([r["model_bytes"] for r in big], [r["ps_s"] for r in big], "--s", color=col)
    for ax in (left, right):
        ax.set_xscale("log", base=2 if ax is left else 10)
        ax.set_yscale("log")
        ax.set_ylabel("seconds per step")
        ax.grid(True, which="both", alpha=0.3)
    left.set_xlabel("workers n (model's gradient size)")
    right.set_xlabel(f"gradient bytes (n = {n_max})")
    left.legend(fontsize=7)
    fig.suptitle(title or "gradient sync: ring all-reduce (solid) vs parameter server (dashed)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_scaling(points: dict, fits: dict, path, *, title: str = "") -> str:
    """Throughput over N: ``points`` label -> [(n, samples/s)], with each label's fitted line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for label, pts in points.items():
        ns = [p[0] for p in pts]
        line = ax.plot(ns, [p[1] for p in pts], "o", label=label)[0]
        fit = fits.get(label)
        if fit:
            xs = np.linspace(1, max(ns), 50)
            ax.plot(xs, fit["c1"] + fit["k"] * (xs - 1), "-", color=line.get_color(), alpha=0.6,
                    label=f"{label} fit: k = {fit['k']:.3g} ({fit['efficiency']:.0%} of C(1))")
    ax.set_xlabel("devices N")
    ax.set_ylabel("samples per second")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "scaling: C(N) = C(1) + k(N - 1)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)
