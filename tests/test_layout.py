"""
The package's layout rules, checked on the source (AST, nothing imported): no import cycle between art_latent's
modules, counting imports inside functions (a local import hides a cycle, it does not remove it), and no module
importing another module's private names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "art_latent"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.Module) -> set[ast.AST]:
    """Imports under ``if TYPE_CHECKING:`` (annotations only: they never run)."""
    return {node for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for stmt in block.body for node in ast.walk(stmt)}


def _imports(path: Path, modules: set[str]) -> list[tuple[str, str]]:
    """``(imported module, imported name)`` of every run-time art_latent import in `path`, wherever it stands."""
    tree = ast.parse(path.read_text())
    skipped = _type_checking_nodes(tree)
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith("art_latent")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("art_latent"):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    found.append((full, "") if full in modules else (base, alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        deps = set()
        for module, _ in _imports(path, modules):
            while module and module not in modules:
                module = module.rpartition(".")[0]
            parts = module.split(".")
            # importing a.b.c runs the packages a.b and a first
            deps.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph.get(node, ()):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_by_a_local_import():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_imports_inside_functions():
    graph = _graph()
    assert len(graph) > 50  # the whole package was read
    assert _cycles(graph) == []


def test_no_module_imports_another_modules_private_names():
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    private = [f"{path.relative_to(ROOT)}: {module}.{name}"
               for root in ("art_latent", "scripts", "benchmarks", "examples", "tests")
               for path in (ROOT / root).rglob("*.py")
               for module, name in _imports(path, modules)
               if name.startswith("_") and not name.startswith("__")]
    assert private == []
