"""Layers point one way:

    core <- costmodel <- partition, memory, fusion <- passes, pass_lists <- kernels <- distributed
         <- planner <- backend, cli

``pass_lists`` sits with the passes: it only lists them (and runs a list through the pass
manager), so the planner's sessions (a training step's memory plan) may run a list. The runtime
(``graphopt.distributed``) imports neither the cost model nor the planner.
Checked on the source (imports inside functions too), so a shortcut across layers fails here
rather than in review. No module under ``graphopt/`` is over 500 lines.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = ("graphopt.backend", "graphopt.cli", "graphopt.__main__")
CORE = {"graph", "cost", "errors", "capture", "export", "viz_html", "specs", "zoo", "progress",
        "units", "op_table", "op_entries", "schemas", "launch", "schedules", "parallel",
        "autodiff"}
LAYERS = [("graphopt.costmodel", 1), ("graphopt.partition", 2), ("graphopt.memory", 2),
          ("graphopt.fusion", 2), ("graphopt.passes", 3), ("graphopt.pass_lists", 3),
          ("graphopt.kernels", 4),
          ("graphopt.distributed", 5), ("graphopt.planner", 6)]
MAX_LINES = 500


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
    """0 core, 1 cost model, 2 algorithms, 3 passes and their lists, 4 kernels, 5 runtime,
    6 planner, 7 front doors."""
    if module.startswith(TOP):
        return 7
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    leaf = module.split(".")[1] if module.count(".") else ""
    if module == "graphopt" or leaf in CORE:
        return 0
    return 2  # other graphopt/*.py modules are algorithm helpers


def _files():
    return sorted((ROOT / "graphopt").rglob("*.py"))


def test_imports_follow_the_layers():
    bad = []
    for path in _files():
        mod = _module_name(path)
        if mod == "graphopt":
            continue  # the package root re-exports the public API
        for imp in _imports(path):
            if imp == "graphopt":
                continue
            if _layer(imp) > _layer(mod):
                bad.append(f"{mod} (layer {_layer(mod)}) imports {imp} (layer {_layer(imp)})")
    assert not bad, "\n".join(bad)


def test_the_runtime_imports_neither_the_cost_model_nor_the_planner():
    bad = []
    for path in (ROOT / "graphopt" / "distributed").rglob("*.py"):
        for imp in _imports(path):
            if imp.startswith(("graphopt.costmodel", "graphopt.planner")):
                bad.append(f"{_module_name(path)} imports {imp}")
    assert not bad, "\n".join(bad)


def test_no_module_is_over_500_lines():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)
