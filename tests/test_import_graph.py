"""No import circle in dtifast: no module imports one that imports it back, directly or through others,
counting imports inside functions too (they are circles that only wait for the right call order).

Edges are the modules an import statement names (``from .runs import load_run`` → ``dtifast.runs``;
``from . import geometry`` → ``dtifast.ops.geometry`` when that is a module, else the package). The
implicit import of a package's ``__init__`` by its submodules is not an edge: a package that imports its
own submodules is how packages work.
"""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"dtifast": ROOT / "dtifast", "dtifast.kernels": ROOT / "kernels"}


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _package_of(module: str, path: pathlib.Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The dtifast modules that ``module``'s import statements name, anywhere in the file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _package_of(module, path)
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in modules:
                    out.add(target)
                elif base in modules:
                    out.add(base)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "dtifast.runs" in graph["dtifast.evaluate"]                # from .runs import … (top level)
    assert "dtifast.ops.geometry" in graph["dtifast.ops.warp"]        # from . import geometry
    assert "dtifast.kernels.warp" in graph["dtifast.ops.warp"]        # inside a function
    assert "dtifast.ops" in graph["dtifast.model.dti_sprites"]        # from dtifast import ops


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_dtifast():
    found = cycles(import_graph())
    assert found == [], "modules that import each other (directly or through others): " + \
        "; ".join(" <-> ".join(c) for c in found)
