"""Checks a package's exception tree: every exception class defined in the package derives
from its root, and the tree drawn in its ``errors.py`` docstring lists it under its parent."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

TREE_LINE = re.compile(r"(?P<prefix>[ │]*[├└]── *)(?P<name>_?[A-Z]\w*)")


def exception_classes(package: str, skip: tuple[str, ...] = ()) -> list[type[BaseException]]:
    """Every exception class defined at module level (or inside a class) in ``package`` and
    its subpackages, except in modules whose dotted names start with one of ``skip``."""
    found: list[type[BaseException]] = []
    root = importlib.import_module(package)
    modules: list[ModuleType] = [root]
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if not info.name.startswith(skip):
            modules.append(importlib.import_module(info.name))
    for module in modules:
        stack = list(vars(module).values())
        while stack:
            obj = stack.pop()
            if isinstance(obj, type) and obj.__module__ == module.__name__:
                if issubclass(obj, BaseException) and obj not in found:
                    found.append(obj)
                stack.extend(v for v in vars(obj).values() if isinstance(v, type))
    return found


def drawn_tree(errors: ModuleType, root: type[BaseException]) -> dict[str, str]:
    """Class name → parent name, as drawn under ``root``'s name in ``errors.__doc__``."""
    lines = (errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == root.__name__)
    parents: dict[str, str] = {}
    path: list[tuple[int, str]] = [(-1, root.__name__)]
    for line in lines[start + 1 :]:
        match = TREE_LINE.match(line)
        if match is None:
            if line.lstrip().startswith("│"):  # a description's second line
                continue
            break
        depth, name = len(match["prefix"]), match["name"]
        while path[-1][0] >= depth:
            path.pop()
        parents[name] = path[-1][1]
        path.append((depth, name))
    return parents


def tree_problems(
    errors: ModuleType, root: type[BaseException], classes: list[type[BaseException]]
) -> list[str]:
    """What is wrong with ``classes`` against ``root`` and the tree drawn in ``errors``."""
    tree = drawn_tree(errors, root)
    problems: list[str] = []
    names = {cls.__name__ for cls in classes}
    for cls in classes:
        where = f"{cls.__module__}.{cls.__qualname__}"
        if cls is root:
            continue
        if not issubclass(cls, root):
            problems.append(f"{where} does not derive from {root.__name__}")
            continue
        parent = next(b for b in cls.__bases__ if issubclass(b, root)).__name__
        if cls.__name__ not in tree:
            problems.append(f"{where} is missing from the tree in {errors.__name__}")
        elif tree[cls.__name__] != parent:
            problems.append(
                f"{where} is drawn under {tree[cls.__name__]} but derives from {parent}"
            )
    problems += [
        f"{name} is drawn in {errors.__name__} but no such exception class is defined"
        for name in tree
        if name not in names
    ]
    return problems
