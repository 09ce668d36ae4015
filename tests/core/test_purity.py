"""The functional core imports no I/O, clock, randomness or concurrency module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "alpaca" / "core"
FORBIDDEN = frozenset({
    "gevent", "socket", "pyroute2", "prometheus_client", "time", "random", "os",
    "threading", "select", "subprocess", "secrets",
})


def imported_roots(tree: ast.AST) -> set[str]:
    """Top-level names of every absolute import in ``tree`` (relative imports stay inside)."""
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_purity_finds_core_modules() -> None:
    names = {p.name for p in core_files()}
    assert {"header.py", "crypto.py", "replay.py", "padding.py"} <= names


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(CORE)))
def test_purity_core_module_has_no_forbidden_import(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    assert imported_roots(tree) & FORBIDDEN == set()


def test_purity_detector_sees_nested_and_from_imports() -> None:
    tree = ast.parse("def f():\n    import os.path\nfrom time import monotonic\nfrom . import x\n")
    assert imported_roots(tree) == {"os", "time"}
