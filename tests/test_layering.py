"""The import layering of docs/architecture.md, checked statically.

Every ``import`` / ``from ... import`` of an hcast module anywhere in a file counts, inside
functions too (a lazy import that closes a circle is still a circle). Packages have ranks;
an import may only go to a lower rank, and no group of modules imports itself in a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "hcast"

# lower imports nothing above it; equal ranks do not import each other
RANKS = {
    "hcast._io": 0,
    "hcast._validation": 0,
    "hcast.ops": 1,
    "hcast.hierarchy": 2,
    "hcast.metric_learning": 2,
    "hcast.weights": 3,
    "hcast.models": 4,
    "hcast.data": 4,
    "hcast.export": 5,
    "hcast.precision": 5,
    "hcast.visualize": 5,
    "hcast.inference": 6,
    "hcast.train": 6,
    "hcast.cli": 7,
}


def _modules() -> dict:
    modules = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        modules[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return modules


MODULES = _modules()


def _imports(path: Path) -> set:
    """hcast modules ``path`` imports (a ``from pkg import submodule`` goes to the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hcast"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hcast")}
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_every_package_has_a_rank():
    assert {_package(m) for m in MODULES} - {"hcast"} <= set(RANKS)


@pytest.mark.parametrize("package", sorted(RANKS))
def test_imports_only_go_downwards(package):
    wrong = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if _package(m) == package for d in deps
                   if _package(d) != package and _package(d) != "hcast" and RANKS[_package(d)] >= RANKS[package])
    assert not wrong, wrong


def test_weights_never_imports_models():
    assert not [(m, d) for m, deps in GRAPH.items() if m.startswith("hcast.weights") for d in deps
                if d.startswith("hcast.models")]


def test_no_circle_anywhere():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not circles, circles


def test_the_checker_sees_lazy_imports(tmp_path):
    """A function-level import counts: the checker would catch a lazy circle."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from hcast.models import cast\n    import hcast.ops\n")
    assert _imports(path) == {"hcast.models.cast", "hcast.ops"}
