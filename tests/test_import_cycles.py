"""No import cycles in the `mch` package: every module's imports are read from its source
(module level and inside functions alike; `if TYPE_CHECKING:` blocks excepted, they never
run) and the graph of `mch` modules must have no cycle. A cycle held apart only by
function-level imports still ties the modules together: each needs the other to work."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the package's source folders as installed: harness/ is `mch`, plugins/ is `mch.plugins`
PACKAGES = {"mch": ROOT / "harness", "mch.plugins": ROOT / "plugins"}

# Cycles owned by work under way on another branch, each to be deleted from here when that
# branch is merged (the test then keeps it from coming back).
KNOWN: dict[frozenset[str], str] = {}


def modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Module name -> source file, for every .py under the packages' folders."""
    out: dict[str, Path] = {}
    for pkg, root in packages.items():
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree, skipping `if TYPE_CHECKING:` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the `mch` modules it imports (the longest known module each import names)."""

    def known(name: str) -> str | None:
        while name:
            if name in mods:
                return name
            name = name.rpartition(".")[0]
        return None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                k = known(t)
                if k is not None and k != mod:
                    graph[mod].add(k)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[frozenset[str], list[str]]]:
    """The strongly connected components of more than one module (Tarjan), each with one
    cycle through it (start -> ... -> start, in import order)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [(frozenset(comp), _one_cycle(graph, comp)) for comp in comps]


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A path start -> ... -> start inside `comp` (breadth-first: the shortest from start)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:  # v -> start closes the cycle: walk back from v
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)  # pragma: no cover - a component always has a cycle


def test_the_mch_package_has_no_import_cycle():
    mods = modules(PACKAGES)
    assert "mch.runner" in mods and "mch.plugins.analyses.probe" in mods and "mch.plugins" in mods
    new = [path for comp, path in cycles(import_graph(mods)) if comp not in KNOWN]
    assert not new, "import cycles: " + "; ".join(" -> ".join(c) for c in new)


# The run's orchestration and the command line: a plugin gets what it needs through its
# context (mch.context) or a core function, never from these.
ORCHESTRATOR = ("mch.runner", "mch.cli", "mch.terminal", "mch.leaderboard_cli", "mch.store_cli")


def test_plugins_never_import_the_orchestrator_and_analyses_never_import_each_other():
    graph = import_graph(modules(PACKAGES))
    assert "mch.runner" in graph and "mch.plugins.analyses.lora" in graph
    reaching = sorted((m, t) for m, ts in graph.items() if m.startswith("mch.plugins.") for t in ts
                      if t in ORCHESTRATOR)
    assert not reaching, reaching

    def analysis(m: str) -> bool:  # an analysis module, not a shared one (_stats, _linalg, ...)
        return m.startswith("mch.plugins.analyses.") and not m.rpartition(".")[2].startswith("_")

    between = {(m, t) for m, ts in graph.items() if analysis(m) for t in ts if analysis(t)}
    assert not between, sorted(between)


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return modules({"mch": tmp_path / "harness", "mch.plugins": tmp_path / "plugins"})


@pytest.mark.parametrize("a_imports", [
    "from .b import f\n",                               # module level, relative
    "def g():\n    from mch.b import f\n",              # function level, absolute
    "def g():\n    from . import b\n",                  # the sibling module by name
    "import mch.b\n",
])
def test_the_walker_finds_a_cycle_at_module_or_function_level(tmp_path, a_imports):
    mods = _tree(tmp_path, {"harness/a.py": a_imports, "harness/b.py": "from .a import g\n",
                            "harness/c.py": "from .a import g\nfrom typing import TYPE_CHECKING\n"
                                            "if TYPE_CHECKING:\n    from .d import x\n",
                            "harness/d.py": "from .c import y\n"})
    assert [path for _, path in cycles(import_graph(mods))] == [["mch.a", "mch.b", "mch.a"]]  # c, d: TYPE_CHECKING


def test_the_walker_reads_plugin_packages_and_relative_imports_in_them(tmp_path):
    mods = _tree(tmp_path, {"harness/api.py": "", "plugins/__init__.py": "",
                            "plugins/analyses/__init__.py": "", "plugins/analyses/x.py": "from ._s import f\n",
                            "plugins/analyses/_s.py": "def f():\n    from mch.plugins.analyses import x\n"})
    assert sorted(mods) == ["mch.api", "mch.plugins", "mch.plugins.analyses", "mch.plugins.analyses._s",
                            "mch.plugins.analyses.x"]
    assert [path for _, path in cycles(import_graph(mods))] == [
        ["mch.plugins.analyses._s", "mch.plugins.analyses.x", "mch.plugins.analyses._s"]]
