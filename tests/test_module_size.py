"""No module of the model plugins is over 500 lines (issue 15: a module that long holds several
things, and its pieces belong in a package named by what they are). Other folders join
FOLDERS as their splits land."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 500
FOLDERS = ["plugins/models"]


def test_no_module_is_over_the_limit():
    files = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(files) > 20  # the walk found the plugins
    long = {str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > LIMIT}
    assert not long, f"modules over {LIMIT} lines: {long}"
