"""The shape of the package, checked: no import cycle between packages, the MCP package
standing without the gateway, every package with a docstring and ``__all__``, no class above
400 lines, and a test module for every module (tests mirror the package)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "proxyfleet"
TESTS = ROOT / "tests"


def _unit(path: Path) -> str:
    """The package a module belongs to (``gateway`` for ``gateway/app.py``), or the top-level
    module's own name (``cli`` for ``cli.py``)."""
    relative = path.relative_to(SRC)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "proxyfleet" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imports(path) - {unit, "__init__"})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    assert {"gateway", "pool", "transports", "mcpproxy"} <= graph.keys()
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_mcp_package_does_not_import_the_gateway() -> None:
    code = (
        "import sys, proxyfleet.mcpproxy; "
        "print(sorted(m for m in sys.modules if m.startswith('proxyfleet.gateway')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_every_package_says_what_it_is_and_what_it_exports() -> None:
    for directory in sorted(p for p in SRC.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        init = directory / "__init__.py"
        assert init.exists(), f"{directory.relative_to(ROOT)} has no __init__.py"
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} has no docstring"
        exported = [
            node
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ]
        assert exported, f"{init.relative_to(ROOT)} has no __all__"


def test_no_class_above_400_lines() -> None:
    big = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 400:
                    big.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not big, big


def mirror(path: Path) -> Path:
    """Where the tests of a module live: ``tests/<package>/test_<module>.py`` (a leading
    underscore dropped: ``_client.py`` → ``test_client.py``)."""
    relative = path.relative_to(SRC)
    name = relative.stem.strip("_")  # __main__.py → test_main.py
    return TESTS.joinpath(*relative.parts[:-1], f"test_{name}.py")


def test_every_module_has_its_test_module() -> None:
    missing = [
        f"{path.relative_to(ROOT)} → {mirror(path).relative_to(ROOT)}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "__init__.py" and not mirror(path).exists()
    ]
    assert not missing, "\n".join(missing)
