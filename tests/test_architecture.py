"""The house rules of DESIGN.md, checked on tokrl's source: no import cycles (imports
inside functions count), no function over 60 lines, no file over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import tokrl

PACKAGE = Path(tokrl.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def module_of(path: Path) -> str:
    parts = ["tokrl", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_of(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def imported(name: str, tree: ast.AST) -> set[str]:
    """The tokrl modules that importing ``name`` runs, through any import statement in it.

    ``from a.b import c`` runs a.b.c when c is a module, else a.b; importing a module also
    runs the __init__ of each package above it, except the packages ``name`` lies in
    (those are already being imported when ``name`` runs).
    """
    package = name if is_package(name) else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:                                   # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            if module in MODULES and not (name == module or name.startswith(module + ".")):
                edges.add(module)
    return edges


def import_graph() -> dict[str, set[str]]:
    return {name: imported(name, ast.parse(path.read_text())) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}                             # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_none_where_there_is_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_a_lazy_import_counts_and_a_package_init_is_run_by_its_submodules():
    tree = ast.parse("def f():\n    from tokrl.training.update import update\n")
    assert imported("tokrl.losses", tree) == {"tokrl.training", "tokrl.training.update"}
    # a submodule importing a sibling does not depend on its own package's __init__
    assert imported("tokrl.training.loop", tree) == {"tokrl.training.update"}


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_no_function_over_60_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_no_file_over_400_lines():
    big = [f"{p.relative_to(PACKAGE.parent)} ({n} lines)" for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not big, "\n".join(big)
