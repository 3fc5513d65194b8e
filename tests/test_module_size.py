"""No module of the `mch` package over 500 lines (issue 15): a module that long holds several
things, each of which should be a module of its own."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


def test_no_module_of_the_package_is_over_500_lines():
    sizes = {
        str(f.relative_to(ROOT)): len(f.read_text().splitlines())
        for d in ("harness", "plugins")
        for f in sorted((ROOT / d).rglob("*.py"))
    }
    assert "harness/cli.py" in sizes and "plugins/analyses/probe.py" in sizes
    over = {m: n for m, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
