"""Reading ``parallel.json`` (schema ``graphopt.parallel/1``) back for ``graphopt train --config``.

The file names the model it was planned for and the configuration chosen; :func:`read_parallel_config`
checks both against the run that wants it: a file made for another model is refused (one line),
and its micro-batch size is what the run trains with (a ``--batch`` that disagrees is refused).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from graphopt.errors import GraphoptError, PlanError
from graphopt.parallel import ParallelConfig
from graphopt.schedules import SCHEDULES

__all__ = ["ChosenConfig", "read_parallel_config", "SCHEMA"]

SCHEMA = "graphopt.parallel/1"


@dataclass(frozen=True)
class ChosenConfig:
    """The chosen configuration of a ``parallel.json``: its :class:`ParallelConfig` (mesh,
    schedule, micro-batches and their size, memory budget: recorded, not applied by
    ``train``), the global batch it was priced at and the stage imbalance its plan needed."""

    parallel: ParallelConfig
    batch: int | None
    imbalance: float | None

    @property
    def micro_batch(self) -> int | None:
        """Samples per micro-batch."""
        return self.parallel.microbatch_size

    def get(self, key: str, default=None):
        """A field of the configuration (``pp``, ``schedule``, ...) or of this record."""
        if key in ParallelConfig.__dataclass_fields__:
            return getattr(self.parallel, key)
        return getattr(self, key, default)


def _positive(path, key: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise PlanError(f"--config {path}: chosen {key} must be a positive integer, got {v!r}")
    return v


def read_parallel_config(path, *, model: str | None = None, batch: int | None = None
                         ) -> ChosenConfig:
    """The checked ``chosen`` configuration of ``path``.

    Args:
        model: the model spec the run trains (``zoo:resmlp``): must be the file's ``model``.
        batch: the ``--batch`` the run was given, or None: must equal the file's global batch.

    Raises:
        PlanError: unreadable, not ``graphopt.parallel/1``, no chosen configuration, a bad
            field (each checked by :class:`ParallelConfig`), made for another model, or a batch
            that disagrees.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"--config {path}: cannot read it: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"--config {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise PlanError(f"--config {path}: schema is {got!r}, expected {SCHEMA!r}")
    made_for = data.get("model")
    if model is not None and made_for is not None and made_for != model:
        raise PlanError(f"--config {path} was planned for {made_for}, not {model}: run "
                        f"`graphopt plan {model}` for it")
    chosen = data.get("chosen")
    if not isinstance(chosen, dict):
        raise PlanError(f"--config {path}: no 'chosen' configuration (graphopt plan found none "
                        "that fits?)")
    for key in ("dp", "pp", "microbatches"):
        _positive(path, key, chosen.get(key))
    if chosen.get("schedule") not in SCHEDULES:
        raise PlanError(f"--config {path}: chosen schedule {chosen.get('schedule')!r} is not one "
                        f"of {', '.join(SCHEDULES)}")
    fields = dict(chosen)
    if fields.get("microbatch_size") is None and "micro_batch" in fields:
        fields["microbatch_size"] = fields["micro_batch"]      # written so before its own name
    try:
        parallel = ParallelConfig.from_dict(fields)
    except GraphoptError as exc:
        raise PlanError(f"--config {path}: {exc}") from None
    dp, m, micro = parallel.dp, parallel.microbatches, parallel.microbatch_size
    planned = data.get("batch")
    planned = None if planned is None else _positive(path, "batch", planned)
    if micro is not None and planned is None:
        planned = parallel.global_batch
    if batch is not None and planned is not None and batch != planned:
        raise PlanError(f"--config {path} was planned for a batch of {planned} ({micro} a "
                        f"micro-batch x {m} micro-batches x dp {dp}), not --batch {batch}")
    imbalance = chosen.get("imbalance")
    return ChosenConfig(parallel=parallel, batch=planned,
                        imbalance=float(imbalance) if isinstance(imbalance, (int, float))
                        else None)
