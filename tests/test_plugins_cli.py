"""The plugin system and the light CLI: entry points, defensive loading, registry validation."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT, run_mch


def _install_plugin(tmp_path: Path, name: str, module_src: str, ep_name: str | None = None) -> dict:
    """A throwaway installed distribution: a module plus a dist-info carrying an entry point in
    group `mch`, on PYTHONPATH. Returns the env to run mch with."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(module_src))
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mch]\n{ep_name or name} = {name}\n")
    (dist / "RECORD").write_text("")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


EXTERNAL = """
from mch.hookspecs import hookimpl
from mch.api import Analysis, AnalysisOutput, AnalysisSpec, Metric

class MeanNorm(Analysis):
    '''Mean L2 norm of the pooled vectors at each stage.'''
    def run(self, ctx):
        import numpy as np
        return AnalysisOutput(metrics=[Metric("mean_norm", float(np.linalg.norm(np.asarray(ctx.reps[s]), axis=1).mean()), stage=s)
                                       for s in ctx.stages])

@hookimpl
def mch_register_analyses(register):
    register(AnalysisSpec(name="meannorm", entry="mch_ext_plugin:MeanNorm", description="external test analysis"))

@hookimpl
def mch_register_commands(app):
    @app.command("hello-ext")
    def hello():
        print("hello from an external plugin")
"""


def test_help_is_fast_and_imports_no_torch():
    code = (
        "import sys, mch.cli as c; c._mount_optional();\n"
        "try:\n    c.app(args=['--help'], prog_name='mch', standalone_mode=False)\nexcept SystemExit: pass\n"
        "c.app(args=['list', 'models'], prog_name='mch', standalone_mode=False)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "bench" in out.stdout and "toy" in out.stdout
    assert out.stdout.strip().endswith("NO-TORCH")


def test_list_and_plugins_show_builtins():
    out = run_mch("list", "analyses", check=True).stdout
    assert "probe" in out and "gmi" in out
    out = run_mch("plugins", check=True).stdout
    assert "builtin" in out and "loaded" in out


def test_external_plugin_through_entry_point(tmp_path):
    env = _install_plugin(tmp_path, "mch_ext_plugin", EXTERNAL)
    out = run_mch("list", "analyses", env=env, check=True).stdout
    assert "meannorm" in out
    assert "hello from an external plugin" in run_mch("hello-ext", env=env, check=True).stdout
    res = run_mch(
        "bench", "--analysis", "meannorm", "--limit", "24", "--quiet", "--out", str(tmp_path / "r"), env=env, check=True
    )
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert len(recs) == 1 and recs[0]["analysis"]["name"] == "meannorm", res.stdout
    stages = {m["stage"] for m in recs[0]["metrics"]}
    assert {"encoder", "adapter", "llm.final"} <= stages
    assert all(m["value"] > 0 for m in recs[0]["metrics"])


def test_broken_plugin_is_reported_and_breaks_nothing(tmp_path):
    env = _install_plugin(tmp_path, "mch_broken_plugin", "raise ImportError('needs a library that is not here')\n")
    out = run_mch("plugins", env=env, check=True).stdout
    assert "mch_broken_plugin" in out and "failed" in out and "not here" in out
    assert "toy" in run_mch("list", "models", env=env, check=True).stdout


def test_load_plugins_allow_list(tmp_path):
    env = _install_plugin(tmp_path, "mch_ext_plugin", EXTERNAL)
    env["MCH_LOAD_PLUGINS"] = "builtin"
    assert "meannorm" not in run_mch("list", "analyses", env=env, check=True).stdout
    env["MCH_LOAD_PLUGINS"] = "mch_ext_plugin"
    out = run_mch("list", "analyses", env=env, check=True).stdout
    assert "meannorm" in out and "probe" not in out


def test_misspelled_hook_is_caught(tmp_path):
    src = "from mch.hookspecs import hookimpl\n@hookimpl\ndef mch_register_model(register):\n    pass\n"
    env = _install_plugin(tmp_path, "mch_typo_plugin", src)
    res = run_mch("list", "models", env=env)
    assert res.returncode == 2
    assert "mch_register_model" in res.stderr and "Traceback" not in res.stderr


def test_malformed_registry_names_line_and_key(tmp_path):
    bad = (ROOT / "registry.yaml").read_text().replace("needs_model: false", "needs_model: maybe", 1)
    path = tmp_path / "registry.yaml"
    path.write_text(bad)
    line = next(i for i, ln in enumerate(bad.splitlines(), 1) if "needs_model: maybe" in ln)
    res = run_mch("list", "models", env={"MCH_REGISTRY": str(path)})
    assert res.returncode == 2
    assert f"line {line}" in res.stderr and "needs_model" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["bench", "--model", "lava"], "did you mean 'llava'"),
        (["bench", "--analysis", "probee"], "did you mean 'probe'"),
        (["bench", "--dataset", "toyy"], "did you mean 'toy'"),
        (["bench", "--stage", "llm.99", "--limit", "4"], "no stage 'llm.99'"),
        (["bench", "--limit", "0"], "empty"),
        (["bench", "--attribute", "colour", "--limit", "4"], "no attribute 'colour'"),
        (["bench", "--protocol", "papr"], "unknown protocol"),
        (["bench", "--no-such-option"], "No such option"),  # usage errors: typer's own click copy too
        (["bench", "--limit", "abc"], "integer"),
        (["bench", "--param", "gmi.nosuch=1"], "has no parameter 'nosuch'"),  # before any extraction
        (["bench", "--param", "probee.n_splits=3"], "did you mean 'probe'"),
        (["bench", "--data-option", "sample_rate"], "--data-option 'sample_rate' must look like KEY=VALUE"),
    ],
)
def test_user_errors_are_one_sentence(args, needle, tmp_path):
    res = run_mch(*args, "--out", str(tmp_path / "r"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_paper_models_default_to_their_dataset(tmp_path):
    """`mch bench --model llava --analysis gmi` reads the model's default dataset (registry
    options: default_dataset); offline, without the data, one error says what to pass."""
    env = {"MCH_DATA": str(tmp_path / "data")}
    res = run_mch("bench", "--model", "llava", "--analysis", "gmi", "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "dataset 'coco'" in res.stderr and "--data-path" in res.stderr
    assert "Traceback" not in res.stderr
    res = run_mch("bench", "--model", "llama", "--analysis", "probe", "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 2 and "pass --dataset" in res.stderr


def test_exit_codes_survive_typer(tmp_path, monkeypatch, capsys):
    """typer returns, rather than raises, the code of a typer.Exit in non-standalone mode (and
    turns Ctrl-C into Exit(130)): a failed command must still exit non-zero."""
    res = run_mch("leaderboard", "--results", str(tmp_path / "missing"))
    assert res.returncode == 2 and "does not exist" in res.stderr

    from mch import cli, runner

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_bench", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--out", str(tmp_path / "r")])
    assert exc.value.code == 130
    assert "interrupted" in capsys.readouterr().err


def test_data_option_reaches_the_dataset_and_keys_the_store(tmp_path):
    """`--data-option` is passed to the dataset plugin and, since it can change a sample's
    content under the same id, becomes part of the store key (absent when not given); an
    option the dataset does not take is an error, not a silent change of the key."""
    from mch.api import MchError
    from mch.runner import RunConfig, plan, store_key

    p = plan(RunConfig(limit=8, store=tmp_path, dataset_options={"split": "train"}))
    assert p.dataset.options["split"] == "train" and p.samples[0].sample_id.startswith("toy-train-")
    assert store_key(p, "modal")["dataset"]["options"] == {"split": "train"}
    assert "options" not in store_key(plan(RunConfig(limit=8, store=tmp_path)), "modal")["dataset"]
    with pytest.raises(MchError, match="dataset 'toy' has no option 'sample_rate'; it takes: emotion_captions, split"):
        plan(RunConfig(limit=8, store=tmp_path, dataset_options={"sample_rate": "8000"}))


def test_list_params_shows_each_protocols_parameters():
    res = run_mch("list", "params", "probe", check=True)
    assert "inner_tol" in res.stdout and "weight_decay" not in res.stdout
    assert "an integer >= 2" in res.stdout and "majority or uniform" in res.stdout  # type and range
    res = run_mch("list", "params", "probe", "--protocol", "paper", check=True)
    assert "weight_decay" in res.stdout and "inner_tol" not in res.stdout
    res = run_mch("list", "params", "probee")
    assert res.returncode == 2 and "did you mean 'probe'" in res.stderr
