"""Every input is checked before any work (issue 12): analysis parameters, model and dataset
options, generator arguments, run flags and plugin loading each end, when wrong, in one
sentence (rc 2, the value named, no traceback), and the checks run before anything is
extracted or written."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_mch

from mch import api
from mch.api import MchError


def _no_work(tmp_path: Path) -> None:
    """Nothing was extracted, generated or written."""
    assert not (tmp_path / "store").exists(), list((tmp_path / "store").rglob("*"))
    # the results directory may have been made (it is checked first), but holds no file
    assert not [f for f in (tmp_path / "r").rglob("*") if f.is_file()], list((tmp_path / "r").rglob("*"))
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.wav"))


def _fails(res, *needles: str) -> None:
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out, out
    for n in needles:
        assert n in " ".join(res.stderr.split()), res.stderr  # rich wraps long lines


# --------------------------------------------------------------------------- Param


def test_types_come_from_the_default_and_declarations_add_ranges():
    t = api.param_table(
        {"n": 5, "tol": 1e-5, "name": "sum", "flag": True, "items": ["a", "b"], "any": None, "signed": -1.0},
        {"n": api.Param(int, ge=2), "name": api.Param(str, choices=("sum", "mean"))},
    )
    where = "analysis 'x' parameter"
    assert t["n"].check(3, where) == 3 and t["n"].check(4.0, where) == 4 and t["n"].check("7", where) == 7
    for bad in ("abc", 1, 2.5, True, None, [3]):
        with pytest.raises(MchError, match=r"must be an integer >= 2"):
            t["n"].check(bad, where)
    assert t["tol"].check(1, where) == 1.0 and isinstance(t["tol"].check(1, where), float)
    for bad in (-1e-3, "x", float("nan"), False):  # a non-negative default: never negative
        with pytest.raises(MchError, match="must be a number >= 0"):
            t["tol"].check(bad, where)
    assert t["signed"].check(-5, where) == -5.0  # a negative default: no inferred bound
    with pytest.raises(MchError, match="must be sum or mean, not 'max'"):
        t["name"].check("max", where)
    assert t["flag"].check("false", where) is False and t["flag"].check(1, where) is True
    with pytest.raises(MchError, match="true or false"):
        t["flag"].check("maybe", where)
    assert t["items"].check("x, y", where) == ["x", "y"] and t["items"].check(("z",), where) == ["z"]
    with pytest.raises(MchError, match="a list of strings"):
        t["items"].check([1, {}], where)
    assert t["any"].check({"k": [1]}, where) == {"k": [1]} and t["any"].check(None, where) is None


def test_unions_nullables_patterns_and_item_ranges():
    from mch.plugins.analyses._params import STAGE, TEXT_STAGE

    w = "x"
    u = api.Param((int, list), items=str, ge=1, le=3)
    assert u.check(2, w) == 2 and u.check(["a", "b"], w) == ["a", "b"]
    with pytest.raises(MchError, match="an integer or a list of strings"):
        u.check(4, w)
    counts = api.Param(list, items=int, ge=0, nullable=True).resolved()
    assert counts.check([0, 3], w) == [0, 3] and counts.check(None, w) is None
    with pytest.raises(MchError, match=r"\(-1 is out of range\)"):
        counts.check([1, -1], w)
    with pytest.raises(MchError, match="not '\\[1,2'"):  # a broken JSON list on the command line
        counts.check("[1,2", w)
    assert STAGE.resolved().check("llm.12", w) == "llm.12" and TEXT_STAGE.resolved().check(None, w) is None
    for bad in ("llm12", "adaptor", "llm.-1"):
        with pytest.raises(MchError, match="a stage name"):
            STAGE.resolved().check(bad, w)
    with pytest.raises(MchError, match="must be a string, not null"):
        api.Param(str).resolved().check(None, w)
    with pytest.raises(MchError, match="has no parameter 'n_split'; it takes: n_splits"):
        api.check_values("analysis 'probe'", {"n_split": 3}, api.param_table({"n_splits": 5}))


def test_options_are_checked_against_the_plugin_declaration():
    assert api.check_options("model", "m", None, {"anything": 1}) == {"anything": 1}  # undeclared: unchecked
    takes = {"batch_size": api.Param(int, ge=1)}
    assert api.check_options("model", "m", takes, {"batch_size": "4", "default_dataset": "coco"}) == {
        "batch_size": 4,
        "default_dataset": "coco",
    }
    with pytest.raises(MchError, match="model 'm' has no option 'batchsize'; it takes: batch_size, default_dataset"):
        api.check_options("model", "m", takes, {"batchsize": 4})
    with pytest.raises(MchError, match="dataset 'd' has no option 'x'; it takes: none"):
        api.check_options("dataset", "d", {}, {"x": 1})


def _analyses():
    from mch.api import load_entry
    from mch.manager import get_registry

    reg = get_registry()
    return [(spec.name, load_entry(spec.entry)(spec)) for spec in reg.analyses.values()]


def test_every_analysis_parameter_has_a_type_and_its_defaults_pass():
    """Both protocols' defaults pass their own declarations; a declaration names a real
    parameter; every number has a lower bound, every value a type (a parameter added with a
    None default and no declaration fails here: declare its type)."""
    from mch.plugins.analyses._params import DECLARED

    for name, analysis in _analyses():
        declared = getattr(analysis, "param_specs", {})
        assert declared == DECLARED.get(name, {}), f"{name}: param_specs is not what declare() registered"
        seen = set()
        for protocol in ("default", "paper"):
            defaults = analysis.default_params(protocol)
            seen |= set(defaults)
            table = api.param_table(defaults, declared)
            checked = api.check_values(f"analysis {name!r}", defaults, table)
            assert json.dumps(checked, sort_keys=True) == json.dumps(defaults, sort_keys=True), name
            for key, p in table.items():
                assert p.types, f"{name}.{key} (default {defaults[key]!r}) has no type: declare one"
                if int in p.types or float in p.types:
                    assert p.ge is not None or p.gt is not None, f"{name}.{key} has no lower bound"
        assert set(declared) <= seen, f"{name} declares parameters it does not have: {set(declared) - seen}"


def test_a_parameter_declared_only_by_its_default_is_still_checked(monkeypatch):
    """Parameters other engineers add with a default alone keep a type and a sign."""
    from mch.plugins.analyses import probe
    from mch.plugins.analyses._params import check_params

    defaults = {**probe.DEFAULT_PARAMS, "n_permutations": 1000, "alpha": 0.05}
    check_params("probe", {**defaults, "n_permutations": 10}, defaults)
    for key, bad, needle in (
        ("n_permutations", "abc", "an integer >= 0"),
        ("n_permutations", -1, "an integer >= 0"),
        ("alpha", "x", "a number >= 0"),
    ):
        with pytest.raises(MchError, match=needle):
            check_params("probe", {**defaults, key: bad}, defaults)


def test_a_number_parameter_refuses_inf_and_nan():
    """A record stores a non-finite number as null, so `--param gmi.s_max=1e999` ran with inf
    while the record said s_max: null (review): refused as not a number, string or float."""
    from mch.plugins.analyses import gmi
    from mch.plugins.analyses._params import check_params

    defaults = gmi.DEFAULT_PARAMS
    check_params("gmi", {**defaults, "s_max": "1e3"}, defaults)
    for bad in ("1e999", "inf", "-inf", "nan", float("inf"), float("nan")):
        with pytest.raises(MchError, match="s_max must be a number"):
            check_params("gmi", {**defaults, "s_max": bad}, defaults)


def test_parameters_of_an_analysis_outside_the_run():
    """lora re-runs probe and gmi with their --param values: those are checked up front too,
    except keys of the other protocol, which the analysis checks when it runs."""
    from mch.manager import get_registry
    from mch.runner import check_params

    reg = get_registry()
    assert check_params({"probe": {"min_samples": 8, "n_splits": "3"}}, reg, ["gmi"], "paper") == {
        "probe": {"min_samples": 8, "n_splits": 3}
    }
    with pytest.raises(MchError, match="analysis 'probe' has no parameter 'min_sample'"):
        check_params({"probe": {"min_sample": 8}}, reg, ["gmi"], "paper")
    with pytest.raises(MchError, match="analysis 'probe' parameter n_splits must be an integer >= 2"):
        check_params({"probe": {"n_splits": "x"}}, reg, ["gmi"], "paper")
    with pytest.raises(MchError, match="analysis 'probe' has no parameter 'min_samples'"):
        check_params({"probe": {"min_samples": 8}}, reg, ["probe"], "paper")


# --------------------------------------------------------------------------- probe preflight


def _samples(sizes: dict[str, list[int]]):
    from mch.api import Attribute, Sample

    n = sum(next(iter(sizes.values())))
    labels = {a: np.repeat([f"c{i}" for i in range(len(s))], s) for a, s in sizes.items()}
    samples = [Sample(str(i), "", {a: str(labels[a][i]) for a in sizes}, {}) for i in range(n)]
    attrs = {
        a: Attribute(a, [f"c{i}" for i in range(len(s))], {f"c{i}": [f"c{i}"] for i in range(len(s))}, "q", "g")
        for a, s in sizes.items()
    }
    return samples, attrs, labels


def test_probe_preflight_matches_the_runs_skip_rule():
    """n_splits / min_samples that skip every attribute fail before extraction; one probeable
    attribute is enough; at the boundary the preflight and the run agree."""
    from mch.api import AnalysisSpec
    from mch.context import AnalysisContext
    from mch.plugins.analyses.probe import DEFAULT_PARAMS, Probe

    probe = Probe(AnalysisSpec("probe", "mch.plugins.analyses.probe:Probe"))
    samples, attrs, labels = _samples({"a": [20, 20, 5], "b": [1, 44]})  # b: one class once kept
    p = dict(DEFAULT_PARAMS)
    probe.preflight({**p, "n_splits": 20}, "default", samples, attrs)  # a: 45 rows >= 40, a class of 20
    with pytest.raises(MchError, match=r"n_splits=21 .* the largest class has 44"):
        probe.preflight({**p, "n_splits": 21}, "default", samples, attrs)  # 45 rows >= 42, no class of 21
    probe.preflight({**p, "n_splits": 1000}, "paper", samples, attrs)  # paper: shuffle splits, any number
    with pytest.raises(MchError, match="n_splits >= 3"):
        probe.preflight({**p, "n_splits": 2}, "default", samples, attrs)
    tiny, tattrs, _ = _samples({"a": [2, 2]})
    probe.preflight({**p, "n_splits": 1000}, "default", tiny, tattrs)  # too few for any setting: the run says why

    rng = np.random.default_rng(0)
    reps = {"adapter": rng.normal(size=(45, 4)).astype(np.float32)}
    for min_samples, n_splits, probed in ((45, 3, True), (46, 3, False), (10, 20, True)):
        params = {**p, "n_splits": n_splits, "min_samples": min_samples, "n_bootstrap": 10}
        raised = False
        try:
            probe.preflight(params, "default", samples, attrs)
        except MchError:
            raised = True
        if n_splits > 3:  # 20 folds with nested CV: the preflight alone
            assert not raised
            continue
        ctx = AnalysisContext(
            protocol="default",
            params=params,
            seed=0,
            stages=["adapter"],
            reps=reps,
            samples=samples,
            attributes=attrs,
            labels={a: np.asarray(v, dtype=object) for a, v in labels.items()},
            groups={a: np.array([str(i) for i in range(45)], dtype=object) for a in attrs},
        )
        out = probe.run(ctx)
        ran = [a for a, info in out.summary["attributes"].items() if "skipped" not in info]
        assert (ran != []) == probed and raised == (not probed), (min_samples, ran, raised)


# --------------------------------------------------------------------------- the command line


BAD_INPUT = [
    (["--device", "tpu"], ["unknown --device 'tpu'; use cpu, cuda or cuda:N"]),
    (["--device", "cuda:x"], ["unknown --device 'cuda:x'"]),
    (["--seed", "-1"], ["--seed must be an integer from 0 to 2**32 - 1", "not -1"]),
    (["--param", "probe.n_splits=abc"], ["analysis 'probe' parameter n_splits must be an integer >= 2, not 'abc'"]),
    (["--param", "probe.n_bootstrap=-5"], ["parameter n_bootstrap must be an integer >= 1, not -5"]),
    (["--param", "probe.max_iter=0"], ["parameter max_iter must be an integer >= 1, not 0"]),
    (["--param", "gmi.batch_size=0"], ["analysis 'gmi' parameter batch_size must be an integer >= 1, not 0"]),
    (["--param", "gmi.normalize=max"], ["parameter normalize must be sum or mean, not 'max'"]),
    (
        ["--param", "probe.n_splits=1000", "--analysis", "probe"],
        ["n_splits=1000 and min_samples=20 leave no attribute", "the largest class has"],
    ),
    (["--param", "modes.stage=adaptor", "--analysis", "modes"], ["parameter stage must be a string (a stage name)"]),
    (["--model-option", "foo=1"], ["model 'toy' has no option 'foo'; it takes: default_dataset"]),
    (
        ["--data-option", "sample_rate=8000"],
        ["dataset 'toy' has no option 'sample_rate'; it takes: emotion_captions, split"],
    ),
    (["--data-option", "split=dev"], ["dataset 'toy' option split must be train or test, not 'dev'"]),
    (["--dataset", "cremad"], ["model 'toy' reads only dataset 'toy', not 'cremad'"]),
    (
        ["--model", "llava", "--dataset", "toy"],
        ["dataset 'toy' is read only by the models of plugin mch.plugins.models.toy:ToyModel, not 'llava'"],
    ),
    (["--model", "llava", "--dataset", "cremad"], ["model 'llava' reads vision and dataset 'cremad' is speech"]),
    (
        ["--model", "llava", "--model-option", "batch_size=0"],
        ["model 'llava' option batch_size must be an integer >= 1"],
    ),
    (  # the toy's stages are known without its weights: refused before it loads
        ["--stage", "adapter,nonesuch"],
        [
            "model 'toy' has no stage 'nonesuch' (--stage); it declares: encoder, adapter, llm.0, llm.1, llm.2, llm.3, llm.final"
        ],
    ),
    (
        ["--model", "llava", "--model-option", "prompt_text=hi"],
        ["model 'llava' has no option 'prompt_text'; it takes: batch_size, default_dataset, prompt"],
    ),
]


@pytest.mark.parametrize("args,needles", BAD_INPUT)
def test_bad_input_is_one_sentence_before_any_work(args, needles, cli_batch):
    _fails(cli_batch(["bench", *args, "--limit", "40"]), *needles)


@pytest.fixture(scope="module")
def cli_batch(tmp_path_factory):
    """The bad-input cases above, run by one `mch` process (cli.main once per case, as the
    console script does; one torch import instead of one per case), checked to have done no
    work at the end."""
    cases = [["bench", *a, "--limit", "40"] for a, _ in BAD_INPUT]
    tmp = tmp_path_factory.mktemp("bad_input")
    results = dict(zip(map(tuple, cases), run_many(cases, tmp), strict=True))
    yield lambda argv: results[tuple(argv)]
    _no_work(tmp)


class _Res:
    def __init__(self, d: dict):
        self.returncode, self.stdout, self.stderr = d["rc"], d["stdout"], d["stderr"]


def run_many(cases: list[list[str]], tmp: Path) -> list[_Res]:
    """Run `mch ARGS` for each case in one subprocess; rc, stdout and stderr per case (an
    exception that escapes cli.main is printed as the interpreter would: a traceback)."""
    import subprocess
    import sys

    from conftest import ROOT

    script = textwrap.dedent("""
        import contextlib, io, json, sys, traceback
        from mch import cli
        out = []
        for i, argv in enumerate(json.load(sys.stdin)):
            o, e = io.StringIO(), io.StringIO()
            rc = 0
            with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
                try:
                    cli.main(argv + ["--out", f"{sys.argv[1]}/r{i}"])
                except SystemExit as exc:
                    rc = exc.code if isinstance(exc.code, int) else 1
                except BaseException:
                    traceback.print_exc()
                    rc = 1
            cli._mount_optional = lambda: None  # mounted once, as in one process of the console script
            out.append({"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()})
        print(json.dumps(out))
    """)
    env = {**os.environ, "COLUMNS": "250", "MCH_STORE": str(tmp / "store"), "MCH_DATA": str(tmp / "data")}
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "r")],
        input=json.dumps(cases),
        text=True,
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return [_Res(d) for d in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_device_cuda_without_a_gpu_is_one_sentence(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here: --device cuda is valid")
    res = run_mch("bench", "--device", "cuda", "--out", str(tmp_path / "r"), env={"MCH_STORE": str(tmp_path / "store")})
    _fails(res, "--device cuda asks for a GPU", "use --device cpu")
    _no_work(tmp_path)


def test_data_option_values_are_json(tmp_path, monkeypatch):
    """`--data-option 'synth={...}'` reaches the dataset as a dict (it was a string), and the
    generator's arguments are checked before anything is generated."""
    from mch.cli import _options
    from mch.runner import RunConfig, plan

    opts = _options(
        ['synth={"classes": 2, "folds": 1, "seconds": 0.5}', "sample_rate=8000", "split=x y"], "--data-option"
    )
    assert opts == {"synth": {"classes": 2, "folds": 1, "seconds": 0.5}, "sample_rate": 8000, "split": "x y"}
    assert _options(["revision=1234567", "prompt=Describe it."]) == {"revision": 1234567, "prompt": "Describe it."}
    monkeypatch.setenv("MCH_DATA", str(tmp_path / "data"))
    p = plan(
        RunConfig(
            model="qwen2audio",
            dataset="synth-esc50",
            analyses=[],
            store=tmp_path / "store",
            dataset_options={"synth": opts["synth"]},
        )
    )
    manifest = json.loads((tmp_path / "data" / "synth-esc50" / "mch_synth.json").read_text())
    assert manifest["params"] == {"classes": 2, "folds": 1, "seconds": 0.5} and len(p.samples) == 2

    res = run_mch(
        "extract",
        "--model",
        "qwen2audio",
        "--dataset",
        "synth-cremad",
        "--data-option",
        'synth={"actors": 0}',
        env={"MCH_STORE": str(tmp_path / "store2"), "MCH_DATA": str(tmp_path / "d2")},
    )
    _fails(res, "synthetic corpus 'cremad' parameter actors must be an integer >= 1, not 0")
    assert not (tmp_path / "d2" / "synth-cremad").exists()


@pytest.mark.parametrize(
    "corpus,param,needle",
    [
        ("cremad", "actors=two", "synthetic corpus 'cremad' parameter actors must be an integer >= 1, not 'two'"),
        ("cremad", "actors=0", "parameter actors must be an integer >= 1, not 0"),
        ("coco", "images=abc", "parameter images must be an integer >= 1, not 'abc'"),
        ("coco", "images=-3", "parameter images must be an integer >= 1, not -3"),
        ("coco", "width=0", "parameter width must be an integer >= 16, not 0"),
        ("coco", "counts=[1,2", "parameter counts must be a list of integers"),
        ("esc50", "seconds=-1", "parameter seconds must be a number >= 0.5, not -1"),
        (
            "esc50",
            "seconds=0.2",
            "parameter seconds must be a number >= 0.5, not 0.2",
        ),  # a bark did not fit: ValueError
        ("librispeech", "speakers=0", "parameter speakers must be an integer >= 1, not 0"),
        ("voxceleb1", "speaker=3", "synthetic corpus 'voxceleb1' has no parameter 'speaker'; it takes:"),
    ],
)
def test_data_make_arguments_are_checked(corpus, param, needle, tmp_path):
    res = run_mch("data", "make", corpus, "--out", str(tmp_path / "out"), "-p", param)
    _fails(res, needle)
    assert not (tmp_path / "out").exists()


def test_data_make_out_that_cannot_be_written(tmp_path):
    """Root writes through permission bits, so the unwritable places tested are ones root
    cannot write either: a path under a regular file, and a file where the directory goes."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    _fails(
        run_mch("data", "make", "coco", "--out", str(afile / "sub"), "-p", "images=1"),
        f"the --out directory {afile / 'sub'} is under {afile}, which is a file, not a directory; "
        f"choose a writable --out",
    )
    _fails(run_mch("data", "make", "coco", "--out", str(afile), "-p", "images=1"), "is not an empty directory")


def test_a_generated_corpus_that_cannot_be_written(tmp_path):
    from mch.plugins.attributes import synth

    (tmp_path / "afile").write_text("x")
    with pytest.raises(
        MchError,
        match=r"directory where synthetic corpora are generated \(\$MCH_DATA or "
        r"~/.cache/mch/data\) .*afile is a file, not a directory; set MCH_DATA",
    ):
        synth.ensure("coco", tmp_path / "afile" / "synth-coco", images=1)
    with pytest.raises(MchError, match="parameter images must be an integer >= 1, not 0"):
        synth.ensure("coco", tmp_path / "data" / "synth-coco", images=0)
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through a read-only directory's permission bits")
def test_data_make_out_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _fails(run_mch("data", "make", "coco", "--out", str(ro / "c"), "-p", "images=1"), "is not writable")
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------- plugins that fail to load


def _install(tmp_path: Path, name: str, src: str) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(src))
    dist = site / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[mch]\n{name} = {name}\n")
    (dist / "RECORD").write_text("")
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_plugin_that_fails_to_load_is_named(tmp_path):
    env = _install(tmp_path, "mch_qwen2vl", "raise ImportError('No module named qwen_vl_utils')\n")
    res = run_mch("bench", "--model", "qwen2vl", "--out", str(tmp_path / "r"), env=env)
    _fails(
        res,
        "model 'qwen2vl' is not registered: plugin 'mch_qwen2vl' failed to load "
        "(ImportError: No module named qwen_vl_utils); `mch plugins`",
    )
    assert "did you mean" not in res.stderr
    res = run_mch("bench", "--model", "lava", "--out", str(tmp_path / "r"), env=env)  # another name: a typo
    _fails(res, "did you mean 'llava'", "plugin 'mch_qwen2vl' failed to load, see `mch plugins`")
    res = run_mch("list", "models", env={**env, "MCH_STRICT_PLUGINS": "1"})
    _fails(
        res,
        "plugin 'mch_qwen2vl' (mch_qwen2vl) failed to load: ImportError: No module named qwen_vl_utils",
        "MCH_STRICT_PLUGINS",
    )


EXTERNAL = """
from mch.hookspecs import hookimpl
from mch.api import Analysis, AnalysisOutput, AnalysisSpec, Metric

class Scaled(Analysis):
    '''An analysis that declares its parameters by default values only.'''
    def default_params(self, protocol):
        return {"scale": 2.0, "k": 3, "label": "x"}

    def run(self, ctx):
        return AnalysisOutput(metrics=[Metric("scaled", float(ctx.params["scale"]) * ctx.params["k"])])

@hookimpl
def mch_register_analyses(register):
    register(AnalysisSpec(name="scaled", entry="mch_scaled_plugin:Scaled"))
"""


def test_an_external_analysis_parameters_are_checked_by_their_defaults(tmp_path):
    env = {**_install(tmp_path, "mch_scaled_plugin", EXTERNAL), "MCH_STORE": str(tmp_path / "store")}
    _fails(
        run_mch("bench", "--analysis", "scaled", "--param", "scaled.k=three", "--out", str(tmp_path / "r"), env=env),
        "analysis 'scaled' parameter k must be an integer >= 0, not 'three'",
    )
    _fails(
        run_mch("bench", "--analysis", "scaled", "--param", "scaled.scale=-1", "--out", str(tmp_path / "r"), env=env),
        "parameter scale must be a number >= 0, not -1",
    )
    _no_work(tmp_path)


def test_a_checkpoint_directory_that_is_not_one_is_one_sentence_before_its_files_are_read(tmp_path):
    """`mch bench --checkpoint DIR` on a directory that is not a checkpoint (here holding a
    socket, which opening raises on): the plugin's checkpoint shape is checked before the
    fingerprint reads any file, so one sentence, no traceback, no work."""
    import socket

    d = tmp_path / "notckpt"
    d.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    try:
        res = run_mch(
            "bench", "--checkpoint", str(d), "--out", str(tmp_path / "r"), env={"MCH_STORE": str(tmp_path / "store")}
        )
    finally:
        s.close()
    _fails(res, f"model 'toy': --checkpoint {d} is not a toy checkpoint (no model.safetensors or organism.json)")
    _no_work(tmp_path)
