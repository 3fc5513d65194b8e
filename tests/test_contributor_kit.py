"""The contributor guide's example works as written: the external package under
docs/examples/mch-example-plugin installs, mch finds it through the `mch` entry-point group,
it passes the contract check, and `mch bench` runs it end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_mch

EXAMPLE = ROOT / "docs" / "examples" / "mch-example-plugin"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install` the example (a copy: setuptools builds in the source tree) into a target dir."""
    root = tmp_path_factory.mktemp("example")
    src = root / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    target = root / "site"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    sys.path.insert(0, str(target))
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("mch_example_plugin")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def tiny(installed, tmp_path_factory):
    from mch_example_plugin.tiny import make_tiny_paligemma

    return make_tiny_paligemma(tmp_path_factory.mktemp("tiny_paligemma"))


def _env(installed: Path, tmp_path: Path) -> dict:
    return {
        "PYTHONPATH": os.pathsep.join([str(installed), os.environ.get("PYTHONPATH", "")]),
        "MCH_DATA": str(tmp_path / "data"),
    }


def test_the_guide_names_every_file_of_the_example():
    guide = (ROOT / "docs" / "contributing-a-model.md").read_text()
    for f in (
        "pyproject.toml",
        "mch_example_plugin/hooks.py",
        "mch_example_plugin/paligemma.py",
        "mch_example_plugin/tiny.py",
        "tests/test_paligemma.py",
    ):
        assert (EXAMPLE / f).exists() and f in guide
    assert "assert_model_plugin_contract" in guide and "[project.entry-points.mch]" in guide


def test_mch_finds_the_installed_plugin(installed, tmp_path):
    out = run_mch("list", "models", env=_env(installed, tmp_path), check=True).stdout
    assert "paligemma" in out
    plugins = run_mch("plugins", env=_env(installed, tmp_path), check=True).stdout
    assert "paligemma_example" in plugins


def test_contract_check(installed, tiny):
    from mch_example_plugin import hooks

    from mch.testing import assert_model_plugin_contract, load_plugin, tiny_samples

    specs = []
    hooks.mch_register_models(register=specs.append)
    plugin = load_plugin(specs[0], str(tiny))
    report = assert_model_plugin_contract(plugin, samples=tiny_samples("vision", 3))
    assert report.views == ["modal", "text"] and report.max_batch_diff <= 1e-5
    assert report.widths["modal"]["encoder"] == 32


def _guide_commands(prefix: str) -> list[list[str]]:
    """The shell commands of the guide's "Install and run" block that start with `prefix`."""
    import shlex

    guide = (ROOT / "docs" / "contributing-a-model.md").read_text()
    block = guide.split("## 5. Install and run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith(prefix)]


def test_the_guides_smoke_commands_measure_every_attribute(installed, tiny, tmp_path):
    """`mch data make` + `mch bench` exactly as the guide gives them (its paths swapped for
    temporary ones): the probe measures every attribute of the corpus at every stage."""
    env = {**_env(installed, tmp_path), "MCH_STORE": str(tmp_path / "store"), "MCH_RESULTS": str(tmp_path / "results")}
    paths = {"/tmp/tiny-paligemma": str(tiny), "/tmp/coco40": str(tmp_path / "coco40")}
    make, bench = _guide_commands("mch data make"), _guide_commands("mch bench")
    assert len(make) == 1 and len(bench) == 1
    run_mch(*[paths.get(a, a) for a in make[0][1:]], env=env, check=True)
    run_mch(*[paths.get(a, a) for a in bench[0][1:]], "--quiet", env=env, check=True)
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    assert [r["analysis"]["name"] for r in records] == ["probe"] and records[0]["model"]["name"] == "paligemma"
    measured = {
        (m["attribute"], m["stage"])
        for m in records[0]["metrics"]
        if m["metric"] == "accuracy" and m["value"] is not None
    }
    attributes = records[0]["dataset"]["attributes"]
    stages = {"encoder", "adapter", "llm.0", "llm.1", "llm.final"}
    assert len(attributes) == 6 and measured == {(a, s) for a in attributes for s in stages}
