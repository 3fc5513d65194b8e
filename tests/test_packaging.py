"""What `pip install` ships: pyproject.toml lists its packages one by one (two source roots,
harness/ as `mch` and plugins/ as `mch.plugins`), so a package folder left off the list would
be missing from every non-editable install while the tests, run from the source tree, still
pass. Read the list and the tree and compare."""

from __future__ import annotations

from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _folder(package: str, package_dir: dict[str, str]) -> Path:
    """The source folder of a dotted package name (the longest mapped prefix wins)."""
    root = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len)
    return ROOT / package_dir[root] / Path(*package[len(root) :].split(".")[1:])


def _source_packages(package_dir: dict[str, str]) -> set[str]:
    """Every folder under the package roots that is a package (has __init__.py) or holds
    files (the toy's weights folders, shipped as package data), as dotted names."""
    out = set()
    for name, folder in package_dir.items():
        root = ROOT / folder
        for d in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
            if "__pycache__" in d.parts or any(part.startswith(".") for part in d.relative_to(root).parts):
                continue
            if (d / "__init__.py").is_file() or any(f.is_file() for f in d.iterdir()):
                out.add(".".join([name, *d.relative_to(root).parts]))
    return out


def test_every_package_folder_is_listed_in_pyproject():
    st = _setuptools()
    listed = set(st["packages"])
    found = _source_packages(st["package-dir"])
    assert {
        "mch",
        "mch.plugins.models.prismatic",
        "mch.plugins.models.ultravox",
        "mch.plugins.models.weights.toy",
    } <= found  # the walk reads the tree
    assert not found - listed, f"package folders pyproject.toml does not ship: {sorted(found - listed)}"
    assert not listed - found, f"pyproject.toml lists packages that are not there: {sorted(listed - found)}"


def test_every_data_only_package_has_its_package_data():
    st = _setuptools()
    data_only = {p for p in st["packages"] if not (_folder(p, st["package-dir"]) / "__init__.py").is_file()}
    assert "mch.plugins.models.weights.toy" in data_only and "mch.plugins.models.prismatic" not in data_only
    assert data_only <= set(st["package-data"]), sorted(data_only - set(st["package-data"]))
