"""The device's modules import on their own, and no two import each other (issue 16)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "device"
PACKAGE = ROOT / "appliance"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imported(path: Path) -> set[str]:
    """The package's modules ``path`` imports anywhere (also inside functions, where a cycle
    hides until run time), except under ``if TYPE_CHECKING:``."""
    names: set[str] = set()

    def visit(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                yield child.module
                yield from (f"{child.module}.{alias.name}" for alias in child.names)
            yield from visit(child)

    names.update(visit(ast.parse(path.read_text(encoding="utf-8"))))
    return {name for name in names if name in MODULES and MODULES[name] != path}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` (as a path that ends where it starts), or ``[]``."""
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for target in sorted(graph[node]):
            found = walk(target, [*path, node])
            if found:
                return found
        done.add(node)
        return []

    for start in sorted(graph):
        found = walk(start, [])
        if found:
            return found
    return []


def test_no_module_of_the_device_imports_one_that_imports_it_back() -> None:
    graph = {name: _imported(path) for name, path in MODULES.items()}
    assert "appliance.app" not in graph["appliance.heartbeat"], "heartbeat needs no App"
    assert _cycle(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("first", ["appliance.heartbeat", "appliance.app"])
def test_every_module_imports_in_a_fresh_interpreter(first: str) -> None:
    """Whichever module comes first (an import cycle fails on one order or another)."""
    names = [first, *(name for name in MODULES if name != first)]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
