"""The import layers of docs/DESIGN.md (Layers): util at the bottom, then model, dataset,
inference and train, and no import circle anywhere (imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("util", "model", "dataset", "inference", "train", "gui")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every project source file (tests excluded)."""
    modules = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", ".git") or "__pycache__" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_no_import_circle(graph):
    """Tarjan's strongly connected components of the import graph: all of size one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("layer,forbidden", [
    ("util", ("model", "dataset", "inference", "train", "gui")),
    ("model", ("dataset", "inference", "train", "gui")),
    ("dataset", ("train", "gui")),
    ("inference", ("train", "gui")),
    ("train", ("inference", "gui")),
])
def test_layers_import_downwards(graph, layer, forbidden):
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] == layer
                   for d in deps if d.split(".")[0] in forbidden)
    assert not wrong, f"{layer}/ imports a layer above it: {wrong}"


def test_the_networks_read_no_files(graph):
    """The one loader (model.checkpoint) sits above the networks: no network module imports it."""
    networks = ("model.backbone", "model.s2m", "model.propagation", "model.stcn", "model.fusion",
                "model.memory", "model.aggregate", "model.presets")
    assert not [m for m in networks if "model.checkpoint" in graph[m]]
