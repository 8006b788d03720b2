"""einhorn.core stays pure: no module in it may import anything that touches the world."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import einhorn.core

CORE = Path(einhorn.core.__file__).parent
ALLOWED = {"__future__", "dataclasses", "enum", "typing", "operator", "reprlib", "collections.abc", "bisect", "heapq", "itertools", "math", "immutables", "einhorn.extension"}
"""Modules the core may import, besides einhorn.core and its submodules: data and algorithms only
(`immutables` is the persistent mapping of einhorn/core/indexed.py; `einhorn.extension` loads its C
module without the package's `typing`)."""

FORBIDDEN_EXAMPLES = ["os", "signal", "socket", "time", "selectors", "logging", "random", "subprocess", "threading", "yaml", "json"]


def core_modules() -> list[Path]:
    return sorted(CORE.glob("*.py"))


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an `import` or `from ... import` names, anywhere in the tree (also in functions)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside the package
                found.append((node.lineno, "einhorn.core"))
            else:
                assert node.module is not None
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found.append((node.lineno, "__import__"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module":
            found.append((node.lineno, "importlib.import_module"))
    return found


def violations(source: str) -> list[str]:
    problems = []
    for lineno, module in imported_modules(ast.parse(source)):
        inside_core = module == "einhorn.core" or module.startswith("einhorn.core.")
        if module.startswith("einhorn") and not inside_core and module not in ALLOWED:
            problems.append(f"line {lineno}: imports {module} (only einhorn.core may be imported)")
        elif not inside_core and module not in ALLOWED:
            problems.append(f"line {lineno}: imports {module}")
    return problems


def test_the_core_has_modules() -> None:
    names = {p.stem for p in core_modules()}
    assert {"state", "events", "effects", "pool", "step", "commands", "serialize", "config"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_only_pure_modules(path: Path) -> None:
    assert violations(path.read_text()) == []


@pytest.mark.parametrize("module", FORBIDDEN_EXAMPLES)
def test_the_scan_catches_forbidden_imports(module: str) -> None:
    assert violations(f"import {module}\n") != []
    assert violations(f"from {module} import x\n") != []
    assert violations(f"def f() -> None:\n    import {module}.sub as m\n") != []


def test_the_scan_catches_shell_imports_and_dynamic_imports() -> None:
    assert violations("from einhorn.io import loop\n") != []
    assert violations("import einhorn.cli\n") != []
    assert violations("x = __import__('os')\n") != []
    assert violations("import importlib\nm = importlib.import_module('os')\n") != []


def test_the_scan_allows_the_pure_imports() -> None:
    source = (
        "from __future__ import annotations\n"
        "import enum\n"
        "from collections.abc import Mapping\n"
        "from dataclasses import dataclass\n"
        "from typing import TypeVar\n"
        "from einhorn.core.state import State\n"
        "from einhorn.core import pool\n"
        "from . import effects\n"
    )
    assert violations(source) == []
