"""The house's size limits (issue 19): no module of the package or of a plug-in over 400
lines, no function over 60 lines (the body a reader must hold at once), no import circle
between two modules. ruff holds complexity and statements (pyproject.toml); ruff counts no
lines, so this test does. Each limit is shown to fail on a constructed violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    files = sorted((ROOT / "bench").rglob("*.py"))
    for folder in ("methods", "datasets", "scorers"):
        files += sorted((ROOT / folder).glob("*.py"))
    return files


def oversized(path: Path, text: str | None = None) -> list[str]:
    """The module (if over the line limit) and each function over its limit, as lines."""
    text = path.read_text() if text is None else text
    out = []
    n = text.count("\n")
    if n > MAX_MODULE_LINES:
        out.append(f"{path.name}: {n} lines > {MAX_MODULE_LINES}")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{path.name}:{node.lineno} {node.name}: {length} lines > "
                           f"{MAX_FUNCTION_LINES}")
    return out


def test_no_module_or_function_over_its_limit():
    found = [line for p in _sources() for line in oversized(p)]
    assert len(_sources()) > 80 and not found, found


def test_the_limits_see_a_violation(tmp_path):
    long_fn = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    assert oversized(tmp_path / "a.py", long_fn) == [
        f"a.py:1 f: {MAX_FUNCTION_LINES + 1} lines > {MAX_FUNCTION_LINES}"]
    long_module = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert oversized(tmp_path / "b.py", long_module) == [
        f"b.py: {MAX_MODULE_LINES + 1} lines > {MAX_MODULE_LINES}"]
    assert oversized(tmp_path / "c.py", "def g():\n    return 1\n") == []


def _imports(path: Path) -> set[str]:
    """The bench modules ``path`` imports anywhere (also inside functions: a lazy import
    still ties two modules)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("bench.")}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def circles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of modules that import each other (a package importing its own submodule, as
    ``__init__`` does for lazy exports, is not a circle)."""
    return sorted((a, b) for a in graph for b in graph[a]
                  if a < b and a in graph.get(b, set())
                  and not b.startswith(a + ".") and not a.startswith(b + "."))


def test_no_two_modules_import_each_other():
    graph = {}
    for p in sorted((ROOT / "bench").rglob("*.py")):
        graph[_module(p)] = _imports(p)
    assert len(graph) > 80 and circles(graph) == []


@pytest.mark.parametrize("graph, expected", [
    ({"bench.a": {"bench.b"}, "bench.b": {"bench.a"}}, [("bench.a", "bench.b")]),
    ({"bench.a": {"bench.b"}, "bench.b": set()}, []),
    ({"bench": {"bench.lab"}, "bench.lab": {"bench"}}, []),
])
def test_circles_are_seen(graph, expected):
    assert circles(graph) == expected
