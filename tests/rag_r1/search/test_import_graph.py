"""rag_r1.search's modules import each other one way: the graph of their imports has no cycle.

Imports inside functions count too: a cycle hidden in a function still ties the modules together.
"""
from __future__ import annotations

import ast
from pathlib import Path

import rag_r1.search

PACKAGE = "rag_r1.search"
PACKAGE_DIR = Path(rag_r1.search.__file__).parent


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of the modules `source` (a module of `package`) may import, anywhere in it.

    `from a.b import c` yields a.b and a.b.c, since c may be a module of a.b."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            base = ".".join(part for part in (base, node.module) if part)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Each module of the package -> the modules of the same package it imports."""
    files = {package if path.stem == "__init__" else f"{package}.{path.stem}": path
             for path in package_dir.glob("*.py")}
    return {name: (imported_modules(path.read_text(), package) & files.keys()) - {name}
            for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a] (depth-first search), or None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_find_cycle_names_the_modules_of_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_and_relative_ones_are_read():
    source = ("import numpy as np\n"
              "from .text_encoder import TextEncoder\n"
              "def load():\n"
              "    from rag_r1.search.onnx_encoder import OnnxEncoder\n"
              "    from . import onnx_export\n")
    assert imported_modules(source, PACKAGE) & import_graph(PACKAGE_DIR, PACKAGE).keys() == {
        "rag_r1.search", "rag_r1.search.text_encoder", "rag_r1.search.onnx_encoder", "rag_r1.search.onnx_export"}


def test_the_encoder_modules_depend_one_way():
    graph = import_graph(PACKAGE_DIR, PACKAGE)
    assert graph["rag_r1.search.text_encoder"] == set()
    assert graph["rag_r1.search.onnx_export"] == {"rag_r1.search.text_encoder"}
    assert graph["rag_r1.search.onnx_encoder"] == {"rag_r1.search.onnx_export", "rag_r1.search.text_encoder"}
    assert {"rag_r1.search.onnx_encoder", "rag_r1.search.onnx_export"} <= graph["rag_r1.search.encoder"]


def test_rag_r1_search_has_no_import_cycle():
    cycle = find_cycle(import_graph(PACKAGE_DIR, PACKAGE))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
