"""The package's import graph: no cycle, counting imports inside functions too, and training
without Optuna.

A function-level import hides a cycle from Python (it resolves late) but not from a reader:
both modules then need each other. So every ``import`` statement anywhere in a module counts.
"""

import ast
import importlib.util
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import ridgeline

PACKAGE = ridgeline.__name__


def modules() -> dict[str, Path]:
    """Every module of the package (packages as their __init__), by dotted name."""
    found = {PACKAGE: Path(ridgeline.__file__)}
    for info in pkgutil.walk_packages(ridgeline.__path__, f"{PACKAGE}."):
        found[info.name] = Path(importlib.util.find_spec(info.name).origin)
    return found


def _base(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names, relative levels resolved."""
    if not node.level:
        return node.module
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports, at any level of its source."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, path, node)
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path that ends where it starts, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_every_subpackage_and_resolves_imports():
    edges = graph()
    for sub in ("cifar", "runs", "landscape", "tuner", "science", "reproduce"):
        assert f"{PACKAGE}.{sub}" in edges
    assert f"{PACKAGE}.runs.ledger" in edges[f"{PACKAGE}.tuner.tune"]  # `from … import ledger`
    assert f"{PACKAGE}.presets" in edges[PACKAGE]


def test_find_cycle_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_relative_imports_are_resolved(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import x\nfrom ..y import z\n\ndef f():\n    from .x import w\n")
    known = {"p.q.x", "p.y", "p.q.x.w"}
    assert imported("p.q.m", src, known) == {"p.q.x", "p.y", "p.q.x.w"}


def test_no_import_cycle_at_module_or_function_level():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_training_does_not_import_optuna():
    src = str(Path(ridgeline.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    code = "import sys, ridgeline.cifar.train; print(sorted(m for m in sys.modules if " \
           "m.split('.')[0] == 'optuna'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "[]", f"ridgeline.cifar.train imports {out.stdout.strip()}"
