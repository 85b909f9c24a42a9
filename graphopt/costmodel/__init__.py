"""The cost model: what a node, a transfer, a collective, an optimizer step and a training step
cost on a :class:`Target` (a device spec and its links, passed as a value).

Read in this order:

* :mod:`~graphopt.costmodel.device`, :mod:`~graphopt.costmodel.presets` (torch-free): device and
  link specs, the shipped presets; :mod:`~graphopt.costmodel.device_file`: ``device.json`` IO;
  :mod:`~graphopt.costmodel.calibrate`: measuring this machine into one;
* :mod:`~graphopt.costmodel.node_time`: one node's seconds (calibrated curves, else roofline);
  :mod:`~graphopt.costmodel.backward`: backward factors read from the op table;
* :mod:`~graphopt.costmodel.collectives`, :mod:`~graphopt.costmodel.optimizer`;
* :mod:`~graphopt.costmodel.target`: :class:`Target` and :class:`CostModel`, which answers all
  of the above;
* :mod:`~graphopt.costmodel.stage_profile`: per-stage costs of a partitioned training graph;
  :mod:`~graphopt.costmodel.simulate`: the step's timeline; :mod:`~graphopt.costmodel.step`:
  :func:`predict_step`, the one step prediction every command prints.

The package's names load on first use, so ``graphopt.costmodel.presets`` imports without torch.
"""
from __future__ import annotations

import importlib

__all__ = ["Target", "CostModel", "as_cost_model", "predict_step", "StepPrediction", "EngineCosts",
           "StageProfile", "stage_profile", "DeviceSpec", "LinkSpec", "DEVICES", "LINKS",
           "get_device", "get_link", "default_link", "roofline_seconds", "node_seconds",
           "backward_factors"]

_WHERE = {"Target": "target", "CostModel": "target", "as_cost_model": "target",
          "predict_step": "step", "StepPrediction": "step", "EngineCosts": "step",
          "StageProfile": "stage_profile", "stage_profile": "stage_profile",
          "DeviceSpec": "device", "LinkSpec": "device", "roofline_seconds": "device",
          "DEVICES": "presets", "LINKS": "presets", "get_device": "presets",
          "get_link": "presets", "default_link": "presets", "node_seconds": "node_time",
          "backward_factors": "backward"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"graphopt.costmodel.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'graphopt.costmodel' has no attribute {name!r}")
