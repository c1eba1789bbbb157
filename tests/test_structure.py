"""The shape of the code, checked: imports between podium's modules form no cycle, and `cli`
is imported by nothing (it parses and dispatches; stages never reach back into it)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def podium_imports() -> dict[str, set[str]]:
    """module -> the podium modules it imports (any import, top-level or inside a function)."""
    modules = {module_name(p): p for p in (SRC / "podium").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                names = [f"{base}.{a.name}" for a in node.names]
                targets |= {n for n in names if n in modules} or ({base} & set(modules))
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[name] = targets - {name, "podium"}  # the package root only re-exports
    return graph


def test_imports_between_modules_form_no_cycle() -> None:
    graph = podium_imports()
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            # A package's modules may import their package's __init__ names: not a cycle.
            if node.startswith(target + ".") or state.get(target) == "done":
                continue
            assert state.get(target) != "open", "import cycle: " + " -> ".join(
                [*path[path.index(target) :], target]
            )
            visit(target)
        path.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert len(graph) > 30  # the walk saw the whole package


def test_nothing_imports_the_cli() -> None:
    importers = [m for m, targets in podium_imports().items() if "podium.cli" in targets]
    assert importers == []
