"""mch from Python: a light `import mch`, Results as a table and a plot, the documented notebook
(docs/python-api.md) run end to end, exports that round-trip, run configs, the record-written
hook and its example plugin."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_mch

pytestmark = pytest.mark.usefixtures("torch_one_thread")

KEY = ["model", "checkpoint", "dataset", "analysis", "protocol", "stage", "attribute", "metric"]
TOY_STAGES = {"encoder", "adapter", "llm.0", "llm.1", "llm.2", "llm.3", "llm.final"}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """One toy run (probe + gmi, 120 samples) shared by the tests that only read it."""
    import mch

    root = tmp_path_factory.mktemp("toy_run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCH_STORE", str(root / "store"))
        mp.setenv("MCH_RESULTS", str(root / "results"))
        res = mch.bench(model="toy", analyses=["probe", "gmi"], limit=120)
    return res, root


def test_import_mch_is_light():
    code = (
        "import sys, mch; v = mch.__version__; h = mch.hookimpl; e = mch.MchError; s = mch.ModelSpec; "
        "a = mch.Attribute; p = mch.Param; "
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'pandas', 'matplotlib') if m in sys.modules]; "
        "print(v, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    version, heavy = out.stdout.split(" ", 1)
    assert heavy.strip() == "[]", heavy
    assert re.match(r"\d", version)
    import mch
    from mch.hookspecs import hookimpl

    assert mch.hookimpl is hookimpl and mch.MchError.__module__ == "mch.api"
    with pytest.raises(AttributeError):
        mch.no_such_thing  # noqa: B018


def test_results_table_one_row_per_key(toy_run):
    res, _ = toy_run
    df = res.to_frame()
    assert list(df.columns[:12]) == KEY + ["value", "ci_low", "ci_high", "n"]
    assert not df.duplicated(subset=KEY).any()
    assert set(df.analysis) == {"probe", "gmi"} and set(df.model) == {"toy"} and set(df.protocol) == {"default"}
    acc = df[(df.analysis == "probe") & (df.metric == "accuracy")]
    assert set(acc.stage) == TOY_STAGES and set(acc.attribute) == {"content", "speaker", "emotion"}
    assert len(acc) == 7 * 3 and acc.ci_low.notna().all() and (acc.ci_low <= acc.value).all()
    # the same numbers as the records
    rec = res["probe"]
    want = {(m["stage"], m["attribute"]): m["value"] for m in rec["metrics"] if m["metric"] == "accuracy"}
    assert {(r.stage, r.attribute): r.value for r in acc.itertuples()} == want
    assert rec["run_config"]["model"] == "toy" and rec["run_config"]["dataset"] == "toy"
    assert rec["run_config"]["limit"] == 120


def test_plot_layers(toy_run):
    import matplotlib

    matplotlib.use("Agg")
    res, _ = toy_run
    ax = res.plot_layers(metric="accuracy", attribute=["speaker", "emotion"])
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "encoder",
        "adapter",
        "llm.0",
        "llm.1",
        "llm.2",
        "llm.3",
        "llm.final",
    ]
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == ["emotion", "speaker"]
    speaker = next(line for line in ax.get_lines() if line.get_label() == "speaker")
    want = [
        m["value"]
        for m in sorted(
            (m for m in res["probe"]["metrics"] if m["metric"] == "accuracy" and m["attribute"] == "speaker"),
            key=lambda m: __import__("mch.api").api.stage_sort_key(m["stage"]),
        )
    ]
    assert list(speaker.get_ydata()) == want
    from mch.api import MchError

    with pytest.raises(MchError, match="no per-stage values of metric 'nope'"):
        res.plot_layers(metric="nope")


def test_missing_extras_are_one_sentence(toy_run, monkeypatch):
    from mch.api import MchError
    from mch.python_api import write_table

    res, root = toy_run
    for mod, extra, call in (
        ("pandas", "frames", res.to_frame),
        ("matplotlib", "plot", res.plot_layers),
        ("pyarrow", "parquet", lambda: write_table(res.rows(), "parquet", root / "x.parquet")),
    ):
        monkeypatch.setitem(sys.modules, mod, None)  # `import mod` now raises ImportError
        with pytest.raises(MchError, match=re.escape(f"pip install 'mch[{extra}]'")):
            call()
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "h5py", None)
    from mch.reference import read_file

    with pytest.raises(MchError, match=re.escape("pip install 'mch[hdf5]'")):
        read_file(root / "any.h5", "file")


def test_library_logs_are_plain_text(tmp_path, caplog):
    import logging

    import mch

    with caplog.at_level(logging.INFO, logger="mch"):
        mch.bench(model="toy", analyses=["probe"], limit=40, out=tmp_path / "r", params={"probe": {"n_bootstrap": 20}})
    msgs = [r.getMessage() for r in caplog.records if r.name == "mch"]
    assert any(m.startswith("running analysis probe") for m in msgs)
    assert not any("[bold]" in m or "[/]" in m for m in msgs)


def test_load_results_and_export_round_trip(toy_run, tmp_path):
    import pandas as pd

    import mch
    from mch.python_api import read_table

    res, root = toy_run
    back = mch.load_results(root / "results")
    assert len(back) == 2
    rows = back.rows()
    for fmt in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"m.{fmt}"
        run_mch("export", str(root / "results"), "--format", fmt, "--out", str(out), check=True)
        got = read_table(out)
        assert len(got) == len(rows)
        for a, b in zip(got, rows, strict=True):
            assert {k: a[k] for k in KEY + ["n", "smoke", "record"]} == {
                k: b[k] for k in KEY + ["n", "smoke", "record"]
            }
            for k in ("value", "ci_low", "ci_high"):
                assert (a[k] is None and b[k] is None) or math.isclose(a[k], b[k], rel_tol=1e-15), (fmt, k)
    frame = back.to_frame()
    csv = pd.read_csv(tmp_path / "m.csv")
    assert len(csv) == len(frame) and list(csv.columns) == list(frame.columns)
    assert (csv["value"].fillna(-1).values == frame["value"].fillna(-1).values).all()
    r = run_mch("export", str(root / "results"), "--format", "xlsx", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown --format" in r.stderr
    r = run_mch("export", str(tmp_path / "none"), "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no results at" in r.stderr


def test_export_store_round_trip(toy_run, tmp_path):
    import numpy as np
    from safetensors.numpy import load_file

    import mch

    res, root = toy_run
    key = res["probe"]["extraction"]["store_key"]
    vec = mch.store.load(key[:10], root / "store")
    assert vec.stages == sorted(TOY_STAGES, key=__import__("mch.api").api.stage_sort_key)
    assert len(vec.sample_ids) == 120 and set(vec.labels) == {"content", "speaker", "emotion"}
    assert (
        set(vec.labels["emotion"]) <= set(res["probe"]["summary"]["attributes"]["emotion"].get("classes", []))
        or len(set(vec.labels["emotion"])) > 1
    )
    env = {"MCH_STORE": str(root / "store")}
    run_mch("export-store", key[:8], "--format", "npz", "--out", str(tmp_path / "v.npz"), env=env, check=True)
    z = np.load(tmp_path / "v.npz")
    for s in vec.stages:
        np.testing.assert_array_equal(z[s], vec[s])
    assert list(z["sample_ids"]) == vec.sample_ids and list(z["label:speaker"]) == list(vec.labels["speaker"])
    run_mch("export-store", key, "--format", "safetensors", "--out", str(tmp_path / "v.st"), env=env, check=True)
    t = load_file(tmp_path / "v.st")
    from safetensors import safe_open

    with safe_open(tmp_path / "v.st", "np") as f:
        meta = f.metadata()
    np.testing.assert_array_equal(t["llm.final"], vec["llm.final"])
    assert json.loads(meta["sample_ids"]) == vec.sample_ids
    assert json.loads(meta["labels"])["emotion"] == list(vec.labels["emotion"])
    run_mch("export-store", key, "--format", "hdf5", "--out", str(tmp_path / "v.h5"), env=env, check=True)
    from mch.reference import read_file

    h = read_file(tmp_path / "v.h5", "file")
    assert h.sample_ids == vec.sample_ids and set(h.stages) == set(vec.stages)
    np.testing.assert_array_equal(h.read_stage("llm.2"), vec["llm.2"])
    assert h.columns["speaker_id"] == list(vec.labels["speaker"]) and h.columns["content"] == list(
        vec.labels["content"]
    )
    r = run_mch("export-store", "zzzz", env=env)
    assert r.returncode == 2 and "no entry 'zzzz'" in r.stderr


def test_run_config_file_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "model: toy\nanalyses: [probe]\nlimit: 40\nseed: 5\nparams:\n  probe: {n_bootstrap: 20, n_splits: 4}\n"
    )
    out = tmp_path / "res"
    r = run_mch(
        "bench",
        "--config",
        str(cfg),
        "--seed",
        "2",
        "--param",
        "probe.n_splits=3",
        "--out",
        str(out),
        "--json",
        check=True,
    )
    rec = json.loads(Path(json.loads(r.stdout)["records"][0]["path"]).read_text())
    assert rec["seeds"] == [2] and rec["dataset"]["n"] == 40
    assert rec["analysis"]["params"]["n_splits"] == 3 and rec["analysis"]["params"]["n_bootstrap"] == 20
    rc = rec["run_config"]
    assert rc["seed"] == 2 and rc["limit"] == 40 and rc["params"] == {"probe": {"n_bootstrap": 20, "n_splits": 3}}
    assert rc["analyses"] == ["probe"]
    # the resolved config runs the same thing again (from Python)
    import mch

    again = mch.bench(config={k: v for k, v in rc.items() if k != "out"}, out=tmp_path / "again")
    assert again["probe"]["analysis"]["params"] == rec["analysis"]["params"] and again["probe"]["seeds"] == [2]
    for text, want in (
        ("modle: toy\n", "modle"),
        ("limit: -3\n", "limit"),
        ("analyses: 3\n", "analyses"),
        ("- a\n- b\n", "must be a mapping"),
        ("model: [\n", "not valid YAML"),
    ):
        cfg.write_text(text)
        r = run_mch("bench", "--config", str(cfg))
        assert r.returncode == 2 and want in r.stderr and "Traceback" not in r.stderr, (text, r.stderr)


def test_record_written_hook_and_the_csv_log_example(tmp_path, monkeypatch):
    import mch
    from mch.manager import get_manager

    sys.path.insert(0, str(ROOT / "docs" / "examples" / "mch-csv-log"))
    try:
        import mch_csv_log
    finally:
        sys.path.pop(0)
    log = tmp_path / "log.csv"
    monkeypatch.setenv("MCH_CSV_LOG", str(log))
    calls = []

    class Broken:
        @mch.hookimpl
        def mch_record_written(self, record, path):
            calls.append(path)
            raise RuntimeError("upload failed")

    pm = get_manager()
    pm.register(mch_csv_log, name="csv_log_test")
    broken = Broken()
    pm.register(broken, name="broken_test")
    try:
        res = mch.bench(
            model="toy", analyses=["probe"], limit=40, out=tmp_path / "r", params={"probe": {"n_bootstrap": 20}}
        )
    finally:
        pm.unregister(name="csv_log_test")
        pm.unregister(name="broken_test")
    assert calls == res.paths  # called once per record, with its path, and the failure cost nothing
    import csv

    rows = list(csv.DictReader(log.open()))
    assert len(rows) == len(res["probe"]["metrics"])
    assert {r["record"] for r in rows} == {str(res.paths[0])} and rows[0]["model"] == "toy"
    acc = [r for r in rows if r["metric"] == "accuracy" and r["stage"] == "adapter" and r["attribute"] == "speaker"]
    want = next(
        m
        for m in res["probe"]["metrics"]
        if m["metric"] == "accuracy" and m["stage"] == "adapter" and m["attribute"] == "speaker"
    )
    assert float(acc[0]["value"]) == want["value"]


def test_data_path_spelling_is_one_store_key(tmp_path, monkeypatch):
    from mch.store_key import _key_path

    d = tmp_path / "data"
    d.mkdir()
    monkeypatch.chdir(tmp_path)
    assert _key_path("data") == _key_path("data/") == _key_path("./data") == _key_path(str(d) + "/.") == str(d)
    assert _key_path("org/hf-dataset-id") == "org/hf-dataset-id"
    # the store finds one entry whatever the spelling (a second spelling never re-extracts);
    # the toy world reads no path (--data-path refused): here it stands for one that does
    import mch
    from mch.plugins.attributes.toy import ToyWorld

    monkeypatch.setattr(ToyWorld, "reads_path", True)
    a = mch.extract(model="toy", limit=20, data_path="data/")
    b = mch.extract(model="toy", limit=20, data_path="./data")
    assert a.hash == b.hash and len(mch.store.entries()) == 1


def _blocks(md: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md, flags=re.S)


def test_the_python_api_page_runs_end_to_end(tmp_path, monkeypatch):
    """docs/python-api.md, every python block in order, in a fresh directory, on the toy."""
    import matplotlib

    matplotlib.use("Agg")
    from reference_files import make_reference_files

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MCH_RESULTS", "results")
    modal, text = make_reference_files(tmp_path / "src", n=160, seed=1)
    modal.rename(tmp_path / "ultravox_librispeech.h5")
    text.rename(tmp_path / "llama_from_ultravox_librispeech.h5")
    blocks = _blocks((ROOT / "docs" / "python-api.md").read_text())
    assert len(blocks) >= 10
    ns: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"python-api.md block {i + 1}", "exec"), ns)  # noqa: S102
    df = ns["df"]
    assert not df.duplicated(subset=KEY).any()
    acc = df[(df.analysis == "probe") & (df.metric == "accuracy")]
    assert set(acc.stage) == TOY_STAGES and set(acc.attribute) == {"content", "speaker", "emotion"}
    assert set(df[df.analysis == "gmi"].metric) >= {"gmi_bits"}
    assert list(ns["layers"].columns) == ["content", "emotion", "speaker"] and len(ns["layers"]) == 7
    assert (tmp_path / "probe-accuracy.png").stat().st_size > 0 and (tmp_path / "metrics.csv").exists()
    assert ns["res2"]["probe"]["run_config"]["seed"] == 1
    ref = ns["ref"]
    assert [r["analysis"]["name"] for r in ref] == ["probe", "modes", "per_type", "distances"]
    assert {r["protocol"] for r in ref} == {"paper"}


def test_newest_record_per_measurement_never_hides_another_sample_set(toy_run, tmp_path):
    """`to_frame()` keeps the newest record of each measurement: a rerun replaces its older
    record, but a run on other samples (`--limit`) or with an adapter is another measurement
    (the leaderboard shows both) and must not disappear from the table."""
    import mch

    res, root = toy_run
    src = sorted((root / "results").glob("*probe*.json"))[0]
    rec = json.loads(src.read_text())
    d = tmp_path / "results"
    d.mkdir()

    def write(name: str, created: str, **dataset: object) -> None:
        r = json.loads(json.dumps(rec))
        r["created_at"] = created
        r["dataset"].update(dataset)
        (d / name).write_text(json.dumps(r))

    write("full.json", "2026-01-01T00:00:00+00:00")
    write("rerun.json", "2026-01-02T00:00:00+00:00")  # the same measurement again: replaces full
    write("limit.json", "2026-01-03T00:00:00+00:00", n=60, sample_ids_sha256="0" * 64)
    rows = mch.load_results(d).rows()
    assert {Path(r["record"]).name for r in rows} == {"rerun.json", "limit.json"}
    # an adapter on the same base checkpoint is other weights
    r = json.loads(json.dumps(rec))
    r["created_at"] = "2026-01-04T00:00:00+00:00"
    r["model"]["adapter"] = str(tmp_path / "lora")
    (d / "adapter.json").write_text(json.dumps(r))
    rows = mch.load_results(d).rows()
    assert {Path(r["record"]).name for r in rows} == {"rerun.json", "limit.json", "adapter.json"}
    out = tmp_path / "m.csv"
    run_mch("export", str(d), "--format", "csv", "--out", str(out), check=True)
    assert len(out.read_text().splitlines()) == 1 + len(rows)


def test_export_out_that_is_a_directory_or_under_a_file_is_one_sentence(toy_run, tmp_path):
    """`--out DIR` or `--out FILE/x` for `mch export` and `mch export-store` is one sentence
    naming --out (it was an IsADirectoryError / FileExistsError traceback)."""
    res, root = toy_run
    key = res["probe"]["extraction"]["store_key"]
    env = {"MCH_STORE": str(root / "store")}
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, says in ((tmp_path, "is a directory"), (a_file / "x.csv", "is a file")):
        for cmd in (
            ["export", str(root / "results"), "--format", "csv"],
            ["export", str(root / "results"), "--format", "parquet"],
            ["export-store", key, "--format", "npz"],
        ):
            r = run_mch(*cmd, "--out", str(out), env=env)
            assert r.returncode == 2 and "Traceback" not in r.stderr, (cmd, r.stderr)
            assert r.stderr.startswith("error: ") and "--out" in r.stderr and says in r.stderr, (cmd, r.stderr)


def test_stored_labels_follow_annotations_edited_in_place(tmp_path, monkeypatch):
    """Labels live beside the vectors (mch.store.load, export-store). An annotation edited in
    place changes no media fingerprint, so the entry's vectors are reused, but its labels must
    follow (they were written once per entry and stayed stale: review)."""
    import mch
    from mch.plugins.attributes import toy as world

    store = tmp_path / "store"
    first = mch.extract("toy", store=store, limit=40)
    real = world.make_sample

    def relabelled(split, i, emotion_captions=0.0):
        s = real(split, i, emotion_captions)
        s.labels["emotion"] = "angry" if i % 2 else "calm"
        return s

    monkeypatch.setattr(world, "make_sample", relabelled)
    second = mch.extract("toy", store=store, limit=40)
    assert second.dir == first.dir  # the same entry, not extracted again
    want = ["angry" if int(sid.rsplit("-", 1)[1]) % 2 else "calm" for sid in second.sample_ids]
    assert list(second.labels["emotion"]) == want != list(first.labels["emotion"])
    assert list(second.labels["speaker"]) == list(first.labels["speaker"])
