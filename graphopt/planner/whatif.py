"""``graphopt plan --what-if``: gradient sync schemes and scaling over N, for one planned model.

Two views, each a table (in ``parallel.json``'s ``what_if``) and a picture:

* **sync**: ring all-reduce against a parameter server for this model's gradient bytes (and
  0.01x to 10x of it) as the number of workers and the link vary: the link measured by the
  device spec beside NVLink 4, PCIe 4 and 100 Gb/s Ethernet presets
  (:func:`graphopt.planner.sync_tables.sync_table`);
* **scaling**: throughput over N = 1, 2, 4, ... up to the planned devices, for the planner's best
  configuration at each N and for plain data parallelism (``dp = N``), predicted and, with
  ``measure``, trained on this host; each curve fitted with ``C(N) = C(1) + k(N − 1)``.

Example:
    >>> doc, pictures = what_if(costs, result, Path("out"), measure=False)
    >>> doc["scaling"]["fits"]["best, predicted"]["k"]
"""
from __future__ import annotations

from pathlib import Path

from graphopt.costmodel.presets import LINKS
from graphopt.errors import GraphoptError
from graphopt.parallel import ParallelConfig
from graphopt.planner.measure import measure as run_measure
from graphopt.planner.predict import (
    NoConfigurationFits,
    default_memory,
    links_of,
    plan_parallel,
    predict,
)
from graphopt.planner.sync_tables import (
    fit_linear_scalability,
    plot_scaling,
    plot_sync,
    sync_summary,
    sync_table,
)

__all__ = ["what_if", "scaling_ns", "PRESET_LINKS"]

PRESET_LINKS = ("nvlink4", "pcie4", "ethernet100")


def scaling_ns(devices: int) -> list[int]:
    """1, 2, 4, ... below ``devices``, and ``devices`` itself."""
    out, n = [], 1
    while n < devices:
        out.append(n)
        n *= 2
    return out + [devices]


def _sync_view(costs) -> tuple[list[dict], list[dict]]:
    _, ring = links_of(costs)
    mine = "this host (measured)" if costs.spec.allreduce_link is not None else \
        costs.cost_model.target.link_key
    links = {mine: ring}
    links.update({k: LINKS[k] for k in PRESET_LINKS})
    rows = sync_table(costs.grad_bytes, links)
    return rows, sync_summary(rows)


def _scaling_view(costs, devices: int, *, cap, plan_kwargs: dict, measure: bool, steps: int,
                  timeout_s: float, notes: list[str]) -> dict:
    curves: dict[str, list] = {"best, predicted": [], "dp only, predicted": []}
    chosen: dict[int, object] = {}
    plain: dict[int, object] = {}
    for n in scaling_ns(devices):
        mem = default_memory(costs, n) if cap is None else cap
        try:
            res = plan_parallel(costs, n, mem, **plan_kwargs)
        except NoConfigurationFits as exc:
            notes.append(f"N = {n}: {exc}")
            continue
        best = res.chosen
        chosen[n] = best
        curves["best, predicted"].append([n, costs.batch / best.predicted_step_seconds])
        if costs.batch % n == 0:
            dp_only = predict(costs, ParallelConfig(dp=n, microbatches=1))
            if dp_only.memory_per_device_bytes <= mem:
                plain[n] = dp_only
                curves["dp only, predicted"].append(
                    [n, costs.batch / dp_only.predicted_step_seconds])
    if measure:
        for label, picked in (("best, measured", chosen), ("dp only, measured", plain)):
            runnable = {n: c for n, c in picked.items() if c.config.memory_budget is None}
            run_measure(costs, list(runnable.values()), steps=steps, timeout_s=timeout_s)
            curves[label] = [[n, costs.batch / c.measured_step_seconds]
                             for n, c in runnable.items() if c.measured_step_seconds]
    fits = {}
    for label, pts in curves.items():
        if len(pts) >= 2:
            try:
                fits[label] = fit_linear_scalability([p[0] for p in pts], [p[1] for p in pts])
            except GraphoptError as exc:
                notes.append(f"{label}: {exc}")
    return {"ns": scaling_ns(devices), "curves": curves, "fits": fits,
            "configs": {str(n): c.config.to_dict() for n, c in chosen.items()}}


def what_if(costs, result, out_dir: Path, *, measure: bool = False, steps: int = 4,
            timeout_s: float = 600.0, cap: int | None = None, plan_kwargs: dict | None = None,
            pictures: bool = True) -> tuple[dict, list[str]]:
    """Both views for ``costs`` planned on ``result.devices`` devices; returns ``(doc, files)``."""
    notes: list[str] = []
    rows, cross = _sync_view(costs)
    scaling = _scaling_view(costs, result.devices, cap=cap, plan_kwargs=plan_kwargs or {},
                            measure=measure, steps=steps, timeout_s=timeout_s, notes=notes)
    files = []
    if pictures:
        files.append(plot_sync(rows, Path(out_dir) / "whatif_sync.png",
                               title=f"{costs.loaded.spec}: gradient sync, ring (solid) vs "
                               f"parameter server (dashed), {costs.grad_bytes:,} B"))
        if scaling["curves"]:
            files.append(plot_scaling(scaling["curves"], scaling["fits"],
                                      Path(out_dir) / "whatif_scaling.png",
                                      title=f"{costs.loaded.spec}: throughput over N"))
    doc = {"grad_bytes": costs.grad_bytes, "sync": rows, "sync_summary": cross,
           "scaling": scaling, "notes": notes}
    return doc, files
