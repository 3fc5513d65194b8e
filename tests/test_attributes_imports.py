"""The attribute datasets' modules import each other without a cycle, counting imports inside
functions too (a function-level import only postpones a cycle, it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

import mch.plugins.attributes as attributes

PACKAGE = "mch.plugins.attributes"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package rooted at `root`: dotted name -> file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = f
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports anywhere in its body (module level,
    functions, methods, conditional blocks)."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = ".".join(here[:len(here) - (node.level - 1)] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                # `from pkg import name` imports the submodule pkg.name when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[mod] |= {t for t in targets if t in modules and t != mod}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_attribute_modules_import_without_a_cycle():
    graph = import_graph(Path(attributes.__file__).parent, PACKAGE)
    assert len(graph) > 10 and f"{PACKAGE}.cremad" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_readers_never_import_the_writers():
    """A `Corpus` reads directories; only the generated entries, `mch data` and the writers
    themselves know the writers."""
    graph = import_graph(Path(attributes.__file__).parent, PACKAGE)
    synth = f"{PACKAGE}.synth"
    for mod, deps in graph.items():
        if mod.startswith(synth) or mod == f"{PACKAGE}.commands":
            continue
        assert not {d for d in deps if d == synth or d.startswith(synth + ".")}, mod


def test_the_walk_sees_a_cycle_held_apart_by_a_function_level_import(tmp_path):
    """The shape the package had: the corpus base imported the generators inside a method, the
    generators imported two loaders, the loaders imported the corpus base."""
    pkg = tmp_path / "pkg"
    (pkg / "gen").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_common.py").write_text("class Corpus:\n    def locate(self):\n        from . import gen\n"
                                    "        return gen.ensure()\n")
    (pkg / "cremad.py").write_text("from ._common import Corpus\nSENTENCES = {}\n")
    (pkg / "esc50.py").write_text("from pkg._common import Corpus\n")
    (pkg / "gen" / "__init__.py").write_text("from .speech import ensure\n")
    (pkg / "gen" / "speech.py").write_text("def ensure():\n    if True:\n        from ..cremad import SENTENCES\n"
                                           "    import pkg.esc50\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg._common"] == {"pkg.gen"} and graph["pkg.gen"] == {"pkg.gen.speech"}
    assert graph["pkg.gen.speech"] == {"pkg.cremad", "pkg.esc50"} and graph["pkg.esc50"] == {"pkg._common"}
    assert find_cycle(graph) == ["pkg._common", "pkg.gen", "pkg.gen.speech", "pkg.cremad", "pkg._common"]
    (pkg / "_common.py").write_text("class Corpus:\n    pass\n")
    assert find_cycle(import_graph(pkg, "pkg")) is None
