"""The import rules of shim's layers (docs/ARCHITECTURE.md, "Layers"), read from the code.

Every import counts, module level or inside a function (a cycle hidden in a function is still a
cycle); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import shim

ROOT = Path(shim.__file__).parent
# Entry points: each starts a process of its own, so something has to put the parts together.
ENTRY_POINTS = {"shim.__main__", "shim.cli", "shim.procs.worker"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                pending.extend(child.orelse)
                continue
            pending.append(child)
    return found


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (for ``from a import b``: a, and a.b)."""
    names: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    return {
        _module_name(path): _imports(path)
        for path in sorted(ROOT.rglob("*.py"))
        if "pb" not in path.relative_to(ROOT).parts[:1]  # generated code
    }


GRAPH = _graph()


def _importers(target: str) -> set[str]:
    """Modules that import ``target`` or anything inside it."""
    return {
        module for module, names in GRAPH.items()
        if module != target and not module.startswith(target + ".")
        and any(name == target or name.startswith(target + ".") for name in names)
    }


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read() -> None:
    # Guards the rules below against passing on an empty or broken graph.
    assert "shim.mvcc.store" in GRAPH and "shim.app" in GRAPH
    assert "shim.api.kv" in _importers("shim.mvcc")
    assert "shim.backend.sqlite" in _importers("apsw")


def test_no_module_imports_the_cli() -> None:
    assert _importers("shim.cli") <= {"shim.__main__"}


def test_the_mvcc_core_does_not_import_replication() -> None:
    # Replication plugs into the write path through shim.mvcc.replica, which mvcc owns.
    assert not {m for m in _importers("shim.replication") if _inside(m, "shim.mvcc")}


def test_database_drivers_only_inside_the_backend() -> None:
    for driver in ("apsw", "asyncpg"):
        outside = {m for m in _importers(driver) if not _inside(m, "shim.backend")}
        assert not outside, f"{driver} imported outside shim.backend: {sorted(outside)}"


def test_the_composition_root_is_imported_only_by_entry_points() -> None:
    assert _importers("shim.app") <= ENTRY_POINTS
    assert not {m for m in _importers("shim.app") if _inside(m, "shim.api")}


def test_no_import_cycles_between_modules() -> None:
    modules = set(GRAPH)
    edges = {
        module: {name for name in names if name in modules and name != module}
        for module, names in GRAPH.items()
    }
    # Depth-first search for a back edge; reports the first cycle found.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(edges[module]):
            if state.get(other) == 1:
                return [*path[path.index(other):], other]
            if other not in state and (cycle := visit(other)) is not None:
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(modules):
        if module not in state and (cycle := visit(module)) is not None:
            raise AssertionError("import cycle: " + " -> ".join(cycle))
