"""Repository-wide static checks: no torchvision import anywhere, no ``.cuda(`` in library code."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"__pycache__", "build", "dist", "venv", "node_modules"}
LIBRARY_DIRS = ("model", "inference", "dataset", "util")
FORBIDDEN_MODULE = "torchvision"


def python_files() -> list[Path]:
    files = []
    for path in REPO_ROOT.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).parts[:-1]
        if any(p.startswith(".") or p in SKIP_DIRS for p in parts):
            continue
        files.append(path)
    return sorted(files)


def parse(path: Path) -> ast.AST:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_forbidden(name: str | None) -> bool:
    if name is None:
        return False
    return name == FORBIDDEN_MODULE or name.startswith(FORBIDDEN_MODULE + ".")


def torchvision_imports(tree: ast.AST) -> list[int]:
    """Line numbers of imports of torchvision (statements, __import__ / import_module calls)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_forbidden(a.name) for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _is_forbidden(node.module):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            arg = node.args[0]
            if (
                name in ("__import__", "import_module")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _is_forbidden(arg.value)
            ):
                lines.append(node.lineno)
    return lines


def cuda_calls(tree: ast.AST) -> list[int]:
    """Line numbers of ``<expr>.cuda(...)`` calls."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "cuda"
    ]


def test_checks_detect_violations():
    bad = ast.parse(
        "import torchvision\nfrom torchvision.ops import nms\nimport importlib\n"
        "m = importlib.import_module('torchvision.models')\nx = y.cuda()\n"
        "z = torch.cuda.is_available()\n"
    )
    assert torchvision_imports(bad) == [1, 2, 4]
    assert cuda_calls(bad) == [5]


def test_repository_files_are_found():
    names = {p.relative_to(REPO_ROOT).as_posix() for p in python_files()}
    assert {"model/backbone.py", "model/checkpoint.py", "tests/test_no_forbidden.py"} <= names


def test_no_torchvision_import():
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in python_files()
        for line in torchvision_imports(parse(path))
    ]
    assert not offenders, f"torchvision imported at {offenders}"


def test_no_cuda_calls_in_library_code():
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{line}"
        for path in python_files()
        if path.relative_to(REPO_ROOT).parts[0] in LIBRARY_DIRS
        for line in cuda_calls(parse(path))
    ]
    assert not offenders, f".cuda( called at {offenders}"
