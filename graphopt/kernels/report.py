"""Write a fusion plan and its kernel sources to a directory (``fusion.json`` + ``kernels/``).

The CLI (``graphopt fuse``) and the backend's ``dump_dir`` write the same layout, in the
``graphopt.fusion/1`` schema of the contract. Every file is written atomically.

Example:
    >>> write_fusion_dir("out/", "zoo:gpt", plan, kernel_sources(graph, plan))
    PosixPath('out/fusion.json')
"""
from __future__ import annotations

import json
from pathlib import Path

from graphopt.export import write_atomic

__all__ = ["write_fusion_dir"]


def write_fusion_dir(directory: str | Path, model: str, plan, sources: dict[str, str]) -> Path:
    """Write ``kernels/<name>.py`` for each source, then ``fusion.json``; returns its path."""
    directory = Path(directory)
    paths = {}
    for name, text in sources.items():
        rel = f"kernels/{name}.py"
        write_atomic(directory / rel, text)
        paths[name] = rel
    doc = plan.to_json(model, paths)
    return write_atomic(directory / "fusion.json", json.dumps(doc, indent=1) + "\n")
