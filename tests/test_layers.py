"""The import graph of jaxdrr is one-way: no cycles, no upward imports, no private names across modules.

The package is layered, low -> high (docs/architecture.md)::

    errors, _compat, _compile_cache, _version, atomic  <  volume, geometry, physics  <  io, display, phantoms, models
    <  materials, ops  <  spectral, noise, scatter  <  render  <  jaxdrr (the facade, __init__)
    <  registration, datasets  <  training  <  cli (common < one module per command < main)

A module may import from its own layer and the layers below. Every import counts, also those inside
functions (they run later, but they still make the modules depend on each other). The graph is read
with ``ast``: nothing is imported or run. Self-contained: the checker and the layer table live here.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "jaxdrr"

# Longest prefix wins; "=name" ranks that module alone (a package's __init__), not its submodules.
LAYERS = {
    "jaxdrr._compat": 0,
    "jaxdrr._compile_cache": 0,
    "jaxdrr._version": 0,
    "jaxdrr.errors": 0,
    "jaxdrr.atomic": 0,
    "jaxdrr.volume": 1,
    "jaxdrr.geometry": 1,
    "jaxdrr.physics": 1,
    "jaxdrr.mesh": 1,
    "jaxdrr.io": 2,
    "jaxdrr.display": 2,
    "jaxdrr.phantoms": 2,
    "jaxdrr.models": 2,
    "jaxdrr.instruments": 2,
    "jaxdrr.materials": 3,
    "jaxdrr.ops": 3,
    "jaxdrr.spectral": 4,
    "jaxdrr.noise": 4,
    "jaxdrr.scatter": 4,
    "jaxdrr.render": 5,
    "jaxdrr.scene": 5,
    "=jaxdrr": 6,
    "jaxdrr.registration": 7,
    "jaxdrr.datasets": 7,
    "jaxdrr.training": 8,
    "jaxdrr.cli.common": 9,
    "jaxdrr.cli.timings": 9,
    "jaxdrr.cli": 10,
    "jaxdrr.cli.main": 11,
    "=jaxdrr.cli": 12,
    "jaxdrr.__main__": 13,
    "jaxdrr.cli.__main__": 13,
}


def module_names(package_dir: Path) -> dict[str, Path]:
    root = package_dir.parent
    out = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """Collects (target module, line, imported names) and attribute reads of private names."""

    def __init__(self, module: str, is_package: bool, modules: dict[str, Path]):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.edges: list[tuple[str, int, list[str]]] = []
        self.aliases: dict[str, str] = {}  # local name -> package module it refers to

    def _known(self, name: str) -> str | None:
        parts = name.split(".")
        while parts and ".".join(parts) not in self.modules:
            parts.pop()
        return ".".join(parts) or None

    def _absolute(self, node: ast.ImportFrom) -> str:
        if node.level == 0:
            return node.module or ""
        base = self.module.split(".")
        if not self.is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_Import(self, node):
        for alias in node.names:
            target = self._known(alias.name)
            if target:
                self.edges.append((target, node.lineno, []))
                if alias.asname:
                    self.aliases[alias.asname] = target

    def visit_ImportFrom(self, node):
        base = self._absolute(node)
        names = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.modules:  # a submodule: an edge to it, not a name of the package
                self.edges.append((sub, node.lineno, []))
                self.aliases[alias.asname or alias.name] = sub
            else:
                names.append(alias.name)
        target = self._known(base)
        if names and target:
            self.edges.append((target, node.lineno, names))

    def visit_Call(self, node):
        func = node.func
        name = getattr(func, "attr", None) or getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                target = self._known(arg.value)
                if target:
                    self.edges.append((target, node.lineno, []))
        self.generic_visit(node)

    def visit_Attribute(self, node):
        # module_alias._private: the same as importing the private name.
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                self.edges.append((self.aliases[node.value.id], node.lineno, [node.attr]))
        self.generic_visit(node)


def import_edges(package_dir: Path) -> tuple[dict[str, Path], list[tuple[str, str, int, list[str]]]]:
    modules = module_names(package_dir)
    edges = []
    for module, path in modules.items():
        visitor = _Imports(module, path.name == "__init__.py", modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        edges += [(module, dst, line, names) for dst, line, names in visitor.edges if dst != module]
    return modules, edges


def rank(module: str, layers: dict[str, float]) -> float | None:
    if "=" + module in layers:
        return layers["=" + module]
    best = None
    for prefix, r in layers.items():
        if not prefix.startswith("=") and (module == prefix or module.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, r)
    return None if best is None else best[1]


def cycles(modules, edges) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph = defaultdict(set)
    for src, dst, _, _ in edges:
        graph[src].add(dst)
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for start in sorted(modules):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def violations(package_dir: Path, layers: dict[str, float]) -> list[str]:
    modules, edges = import_edges(package_dir)
    problems = [f"module {m} has no layer: add it to LAYERS" for m in modules if rank(m, layers) is None]
    for component in cycles(modules, edges):
        inside = [f"{s}:{line} -> {d}" for s, d, line, _ in edges if s in component and d in component]
        problems.append("import cycle: " + "; ".join(inside))
    for src, dst, line, names in edges:
        rs, rd = rank(src, layers), rank(dst, layers)
        where = f"{modules[src].relative_to(package_dir.parent)}:{line}"
        if rs is not None and rd is not None and rd > rs:
            problems.append(f"upward import {where}: {src} (layer {rs}) -> {dst} (layer {rd})")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private:
            problems.append(f"private name {where}: {src} uses {dst}.{', '.join(private)}")
    return problems


def test_jaxdrr_imports_only_downward_without_cycles_or_private_names():
    problems = violations(PACKAGE_DIR, LAYERS)
    assert not problems, "\n".join(problems)


def test_training_and_cli_are_never_imported_by_the_runtime():
    _, edges = import_edges(PACKAGE_DIR)
    runtime = [
        (s, d)
        for s, d, _, _ in edges
        if d.startswith(("jaxdrr.training", "jaxdrr.cli"))
        and not s.startswith(("jaxdrr.training", "jaxdrr.cli", "jaxdrr.__main__"))
    ]
    assert not runtime, runtime


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.mark.parametrize(
    "files, expected",
    [
        # A cycle through an import inside a function.
        (
            {"pkg/a.py": "from pkg import b\n", "pkg/b.py": "def f():\n    from pkg.a import x\n"},
            "import cycle",
        ),
        # A low layer reaching up (relative import).
        ({"pkg/a.py": "from .b import y\n", "pkg/b.py": "y = 1\n"}, "upward import"),
        # Another module's private name, imported or read through a module alias.
        ({"pkg/b.py": "from pkg.a import _helper\n", "pkg/a.py": "def _helper(): pass\n"}, "private name"),
        ({"pkg/b.py": "import pkg.a as a\nz = a._helper\n", "pkg/a.py": "_helper = 1\n"}, "private name"),
        # importlib with a literal name counts too.
        ({"pkg/a.py": "import importlib\nm = importlib.import_module('pkg.b')\n", "pkg/b.py": ""}, "upward"),
        # A module missing from the layer table.
        ({"pkg/c.py": ""}, "has no layer"),
    ],
)
def test_the_checker_finds_planted_violations(tmp_path, files, expected):
    package = _write(tmp_path, {"pkg/__init__.py": "", **files})
    layers = {"=pkg": 9, "pkg.a": 0, "pkg.b": 1}
    problems = violations(package, layers)
    assert any(expected in p for p in problems), problems


def test_the_checker_accepts_a_clean_package(tmp_path):
    package = _write(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg.b import y\n",
            "pkg/a.py": "x = 1\n_private = 2\n",
            "pkg/b.py": "from pkg.a import x\nfrom . import a\ny = a.x\n",
        },
    )
    assert violations(package, {"=pkg": 9, "pkg.a": 0, "pkg.b": 1}) == []


if __name__ == "__main__":  # python tests/test_layers.py: print the current violations
    print("\n".join(violations(PACKAGE_DIR, LAYERS)) or "clean")
    sys.exit(0)
