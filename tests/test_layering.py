"""Imports flow one way (DESIGN.md): capture <- storage <- {retention, analysis} <- webadmin <- recorderd.

The test walks every module's imports (including ones inside functions) and fails on a back
edge, naming the file, the line and the import."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["capture", "storage", "retention", "analysis", "webadmin", "recorderd"]
ALLOWED: dict[str, set[str]] = {
    "capture": {"capture"},
    "storage": {"capture", "storage"},
    "retention": {"capture", "storage", "retention"},
    "analysis": {"capture", "storage", "analysis"},
    "webadmin": {"capture", "storage", "retention", "analysis", "webadmin"},
    "recorderd": set(LAYERS),
}
# capture/ is pure protocol code: no web, no database, no config loader
CAPTURE_THIRD_PARTY = {"numpy", "av", "pylibsrtp", "soundfile"}


def imported_roots(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def layer_files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_goes_against_the_flow(layer: str) -> None:
    problems = []
    for path in layer_files(layer):
        for line, root in imported_roots(path):
            if root in LAYERS and root not in ALLOWED[layer]:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    assert not problems, "back edges in the one-way import flow:\n" + "\n".join(problems)


def test_capture_uses_only_protocol_libraries() -> None:
    problems = []
    for path in layer_files("capture"):
        for line, root in imported_roots(path):
            if root in LAYERS or root in sys.stdlib_module_names or root == "__future__":
                continue
            if root not in CAPTURE_THIRD_PARTY:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    assert not problems, "capture/ must stay pure protocol code:\n" + "\n".join(problems)


def test_the_checker_sees_a_back_edge(tmp_path: Path) -> None:
    """The walker itself works: a storage import inside a function of capture is found."""
    sample = tmp_path / "bad.py"
    sample.write_text("def f():\n    from storage import vault\n    import webadmin.app\n")
    assert [root for _, root in imported_roots(sample)] == ["storage", "webadmin"]
