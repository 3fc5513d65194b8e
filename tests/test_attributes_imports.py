"""The attribute datasets' modules import each other without a cycle, counting imports inside
functions too (a function-level import only postpones a cycle, it does not remove it)."""

from __future__ import annotations

from pathlib import Path

from import_graph import find_cycle, import_graph, modules

import mch.plugins.attributes as attributes

PACKAGE = "mch.plugins.attributes"


def test_attribute_modules_import_without_a_cycle():
    graph = import_graph(modules({PACKAGE: Path(attributes.__file__).parent}))
    assert len(graph) > 10 and f"{PACKAGE}.cremad" in graph  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_readers_never_import_the_writers():
    """A `Corpus` reads directories; only the generated entries, `mch data` and the writers
    themselves know the writers."""
    graph = import_graph(modules({PACKAGE: Path(attributes.__file__).parent}))
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
    (pkg / "_common.py").write_text(
        "class Corpus:\n    def locate(self):\n        from . import gen\n        return gen.ensure()\n"
    )
    (pkg / "cremad.py").write_text("from ._common import Corpus\nSENTENCES = {}\n")
    (pkg / "esc50.py").write_text("from pkg._common import Corpus\n")
    (pkg / "gen" / "__init__.py").write_text("from .speech import ensure\n")
    (pkg / "gen" / "speech.py").write_text(
        "def ensure():\n    if True:\n        from ..cremad import SENTENCES\n    import pkg.esc50\n"
    )
    graph = import_graph(modules({"pkg": pkg}))
    assert graph["pkg._common"] == {"pkg.gen"} and graph["pkg.gen"] == {"pkg.gen.speech"}
    assert graph["pkg.gen.speech"] == {"pkg.cremad", "pkg.esc50"} and graph["pkg.esc50"] == {"pkg._common"}
    assert find_cycle(graph) == ["pkg._common", "pkg.gen", "pkg.gen.speech", "pkg.cremad", "pkg._common"]
    (pkg / "_common.py").write_text("class Corpus:\n    pass\n")
    assert find_cycle(import_graph(modules({"pkg": pkg}))) is None
