"""The shape of the house: no import circles, and the runtime never imports build code.

The graph counts every import in edgesdk, including those inside functions (a lazy import
is still a dependency). ``from P import name`` points at ``P.name`` when that is a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgesdk

ROOT = Path(edgesdk.__file__).parent
# What the torch-free loader may use besides edgesdk.runtime itself: the floor every layer shares.
RUNTIME_MAY_IMPORT = {"edgesdk", "edgesdk.errors", "edgesdk.spec", "edgesdk.registry"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgesdk")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if not base.startswith("edgesdk"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) & set(modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_edgesdk_has_no_import_circles():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_runtime_imports_no_build_code():
    graph = _graph()
    outside = {f"{name} -> {dep}" for name, deps in graph.items() if name.startswith("edgesdk.runtime")
               for dep in deps if not dep.startswith("edgesdk.runtime") and dep not in RUNTIME_MAY_IMPORT}
    assert not outside, sorted(outside)


def test_the_graph_sees_lazy_and_relative_imports():
    graph = _graph()
    assert "edgesdk.runtime.runners" in graph["edgesdk.runtime.bundle"]  # a lazy import inside a method
    assert "edgesdk.runtime.runner" in graph["edgesdk.runtime.runners.onnx_runner"]  # from ..runner import
