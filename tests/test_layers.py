"""Layers point one way: graph & cost model <- passes <- kernels <- backend, CLI, notebooks.

Checked on the source (imports inside functions too), so a shortcut across layers fails here
rather than in review.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("graphopt.backend", "graphopt.cli", "graphopt.pass_lists")
CORE = {"graph", "cost", "errors", "capture", "export", "viz_html", "specs", "zoo", "progress", "units",
        "op_table", "op_entries", "device_spec", "schemas"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return {m for m in out if m.startswith("graphopt")}


def _layer(module: str) -> int:
    """0 core, 1 passes (and their helper modules), 2 kernels, 3 front doors."""
    if module.startswith(TOP):
        return 3
    if module.startswith("graphopt.kernels"):
        return 2
    if module.startswith("graphopt.passes"):
        return 1
    leaf = module.split(".")[1] if module.count(".") else ""
    if module == "graphopt" or leaf in CORE:
        return 0
    return 1  # other graphopt/*.py modules are pass helpers (partition_*, memory_*, fusion_*)


def test_imports_follow_the_layers():
    files = list((ROOT / "graphopt").rglob("*.py"))
    bad = []
    for path in files:
        mod = _module_name(path)
        if mod == "graphopt" or mod.startswith(("graphopt.__main__",)):
            continue  # the package root re-exports the public API
        for imp in _imports(path):
            if imp == "graphopt":
                continue
            if _layer(imp) > _layer(mod):
                bad.append(f"{mod} (layer {_layer(mod)}) imports {imp} (layer {_layer(imp)})")
    assert not bad, "\n".join(bad)
