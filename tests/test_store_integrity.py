"""Every number comes from these weights and these inputs (issue 12): the store key follows a
checkpoint rebuilt in place and a media file edited in place; an unchanged rerun still never
loads the model; one writer per store entry; each record written as its analysis ends;
filesystem faults are one sentence before any work; files honour the umask; `mch store`."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_mch

from mch.api import MchError
from mch.plugins.models.toy import WEIGHTS, ToyModel
from mch.runner import RunConfig, extract, plan, run_bench, store_key

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _perturb(ckpt: Path, seed: int) -> None:
    """Other weights, same shapes, same path (as rebuilding a checkpoint in place does)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    gen = np.random.default_rng(seed)
    for k in state:
        if "adapter" in k:
            state[k] = state[k] + 0.5 * state[k].std() * __import__("torch").from_numpy(
                gen.standard_normal(tuple(state[k].shape)).astype(np.float32)
            )
    save_file(state, str(ckpt / "model.safetensors"))


def _no_load(monkeypatch):
    monkeypatch.setattr(ToyModel, "load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))


@pytest.mark.parametrize("weights", ["hashed", "stat"])
def test_checkpoint_rebuilt_in_place_is_extracted_again(tmp_path, monkeypatch, weights):
    if weights == "stat":  # weights above the whole-file-hash size: size + mtime + header decide
        import mch.fingerprint

        monkeypatch.setattr(mch.fingerprint, "SMALL_FILE", 0)
    ckpt = Path(shutil.copytree(WEIGHTS, tmp_path / "ck"))
    cfg = RunConfig(checkpoint=str(ckpt), limit=24, analyses=[], store=tmp_path / "s", out_dir=tmp_path / "r")
    p = plan(cfg)
    old = np.array(extract(p).read()[0]["adapter"])
    assert p.loaded

    with monkeypatch.context() as m:  # an unchanged rerun: the store, never the model
        _no_load(m)
        p2 = plan(cfg)
        assert np.array_equal(np.asarray(extract(p2).read()[0]["adapter"]), old) and not p2.loaded

    _perturb(ckpt, 1)
    p3 = plan(cfg)
    entry = extract(p3)
    assert p3.loaded, "the rebuilt checkpoint was not loaded: its old vectors were reused"
    new = np.asarray(entry.read()[0]["adapter"])
    fresh = plan(dataclasses.replace(cfg, store=tmp_path / "fresh"))
    assert np.array_equal(new, np.asarray(extract(fresh).read()[0]["adapter"]))  # the new weights' vectors
    assert not np.allclose(new, old)
    assert len(list((tmp_path / "s").glob("toy/*/manifest.json"))) == 2


def test_text_view_key_follows_the_paired_text_and_the_adapter(tmp_path):
    p = plan(RunConfig(limit=8, store=tmp_path))
    modal, text = store_key(p, "modal"), store_key(p, "text")
    p.samples[0].text = "the word is something else ."
    assert store_key(p, "text") != text and store_key(p, "modal") == modal
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"1")
    pa = plan(RunConfig(limit=8, store=tmp_path, adapter=str(adapter)))
    k1 = store_key(pa, "modal")
    (adapter / "adapter_model.safetensors").write_bytes(b"2")
    assert store_key(pa, "modal") != k1


def test_missing_checkpoint_reuses_its_one_store_entry_and_says_so(tmp_path, monkeypatch):
    ckpt = Path(shutil.copytree(WEIGHTS, tmp_path / "ck"))
    cfg = RunConfig(
        checkpoint=str(ckpt),
        limit=24,
        analyses=["probe"],
        store=tmp_path / "s",
        out_dir=tmp_path / "r",
        params={"probe": {"n_splits": 3, "n_bootstrap": 20}},
    )
    _, written = run_bench(cfg)
    fp_used = written[0][1]["model"]["checkpoint_fingerprint"]
    shutil.move(ckpt, tmp_path / "elsewhere")
    _no_load(monkeypatch)
    said = []
    p, written = run_bench(cfg, log=said.append)
    assert not p.loaded and any("not on this machine" in s for s in said)
    assert written[0][1]["model"]["checkpoint_fingerprint"] == fp_used  # the files the vectors came from
    # two extractions of that name from different files: which one is meant cannot be known
    shutil.move(tmp_path / "elsewhere", ckpt)
    _perturb(ckpt, 2)
    monkeypatch.undo()
    extract(plan(cfg))
    shutil.rmtree(ckpt)
    with pytest.raises(MchError, match="2 extractions of it"):
        extract(plan(cfg))


def test_records_carry_the_fingerprints(tmp_path):
    from mch.results import validate

    _, written = run_bench(
        RunConfig(
            limit=24,
            analyses=["probe"],
            store=tmp_path / "s",
            out_dir=tmp_path / "r",
            params={"probe": {"n_splits": 3, "n_bootstrap": 20}},
        )
    )
    rec = written[0][1]
    validate(rec)
    assert rec["model"]["checkpoint_fingerprint"].startswith("sha256:")  # builtin:toy: hashed, portable
    assert "media_fingerprint" not in rec["dataset"]  # the toy world makes its samples in code
    man = json.loads(next((tmp_path / "s").rglob("manifest.json")).read_text())
    assert man["key"]["model"]["checkpoint_fingerprint"] == rec["model"]["checkpoint_fingerprint"]
    from mch.results import schema_errors

    bad = json.loads(json.dumps(rec))
    bad["model"]["checkpoint_fingerprint"], bad["dataset"]["media_fingerprint"] = 5, ["x"]
    assert len(schema_errors(bad)) == 2  # declared fields, with types


# --------------------------------------------------------------------------- media files


@pytest.fixture(scope="module")
def llava_coco(tmp_path_factory):
    from mch.plugins.attributes import synth
    from mch.plugins.models import tiny

    base = tmp_path_factory.mktemp("media")
    return tiny.make_tiny_llava(base / "llava"), synth.make("coco", base / "coco", images=8)


def test_media_file_edited_or_truncated_in_place_is_extracted_again(llava_coco, tmp_path, monkeypatch):
    from PIL import Image

    ckpt, coco0 = llava_coco
    coco = Path(shutil.copytree(coco0, tmp_path / "coco"))
    cfg = RunConfig(
        model="llava",
        dataset="coco",
        checkpoint=str(ckpt),
        data_path=str(coco),
        store=tmp_path / "s",
        stages=["encoder", "llm.final"],
        batch_size=4,
        analyses=[],
        on_error="skip",
    )
    p = plan(cfg)
    entry = extract(p)
    before = np.array(entry.read()[0]["encoder"])
    rec = p.samples[2]
    image = Path(rec.meta["path"])

    with monkeypatch.context() as m:  # unchanged: the store answers, the model is never loaded
        from mch.plugins.models.llava import Llava

        m.setattr(Llava, "load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))
        p2 = plan(cfg)
        assert np.array_equal(np.asarray(extract(p2).read()[0]["encoder"]), before) and not p2.loaded

    with Image.open(image) as im:  # the same size (its annotation still fits), other pixels
        arr = 255 - np.asarray(im.convert("RGB"))
    Image.fromarray(arr).save(image)
    p3 = plan(cfg)
    after = np.asarray(extract(p3).read()[0]["encoder"])
    assert p3.loaded
    assert not np.allclose(after[2], before[2]) and np.allclose(
        np.delete(after, 2, 0), np.delete(before, 2, 0), atol=1e-5
    )

    image.write_bytes(image.read_bytes()[:100])  # truncated in place
    p4 = plan(cfg)
    entry = extract(p4)
    assert p4.loaded and [s["sample_id"] for s in entry.manifest()["skipped"]] == [rec.sample_id]
    assert entry.read()[0]["encoder"].shape[0] == before.shape[0] - 1
    assert rec.media_files == [str(image)]  # what the dataset says the media is read from


def _publish(repo: Path, src: Path, commit: str) -> None:
    """`src`'s files as a Hugging Face cache snapshot of `repo` at `commit` (blobs named by
    their content's hash, snapshot links into them, refs/main at the commit)."""
    import hashlib

    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for f in sorted(src.iterdir()):
        blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_checkpoint_updated_to_a_new_revision_is_extracted_again(llava_coco, tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    from mch.plugins.models import tiny
    from mch.plugins.models.llava import Llava
    from mch.runner import plugin_fingerprint

    ckpt, coco = llava_coco
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--org--tiny-llava"
    _publish(repo, ckpt, "a" * 40)
    cfg = RunConfig(
        model="llava",
        dataset="coco",
        checkpoint="org/tiny-llava",
        data_path=str(coco),
        store=tmp_path / "s",
        stages=["llm.final"],
        batch_size=4,
        analyses=[],
    )
    p = plan(cfg)
    first = extract(p)
    fp1 = first.key["model"]["checkpoint_fingerprint"]
    assert p.loaded and fp1.startswith("sha256:")  # from the blob names: the same on any machine
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub2"))  # another machine's download
    _publish(tmp_path / "hub2" / "models--org--tiny-llava", ckpt, "a" * 40)
    assert plugin_fingerprint(plan(cfg).plugin) == fp1

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with monkeypatch.context() as m:
        m.setattr(Llava, "load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))
        assert extract(plan(cfg)).hash == first.hash
    _publish(repo, tiny.make_tiny_llava(tmp_path / "v2", seed=1), "b" * 40)  # main moves to a new revision
    p3 = plan(cfg)
    second = extract(p3)
    assert p3.loaded and second.hash != first.hash
    assert not np.allclose(np.asarray(second.read()[0]["llm.final"]), np.asarray(first.read()[0]["llm.final"]))


# --------------------------------------------------------------------------- one writer per entry


def _extract_cmd(limit: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mch.cli", "extract", "--limit", str(limit), "--batch-size", "4", *extra]


def test_two_concurrent_extractions_load_the_model_once(tmp_path):
    """Two `mch extract` on one store key, started together: one extracts, the other waits
    for it (or finds the entry complete) and reuses it; no duplicated work, no crash."""
    env = {**os.environ, "MCH_STORE": str(tmp_path / "s"), "MCH_CHUNK_SIZE": "8", "COLUMNS": "250"}
    procs = [
        subprocess.Popen(_extract_cmd(96), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    err = "".join(e for _, e in outs)
    assert [p.returncode for p in procs] == [0, 0], err
    assert err.count("loading model") == 1, err
    assert "cannot finalize" not in err and "Traceback" not in err
    entry = next((tmp_path / "s").rglob("manifest.json")).parent
    assert json.loads((entry / "manifest.json").read_text())["n_rows"] == 96


def _toy_entry(tmp_path):
    """This test process's plan and store entry for `mch extract --limit 24 --batch-size 4`."""
    from mch.runner import stored_entry

    p = plan(RunConfig(limit=24, batch_size=4, store=tmp_path / "s", analyses=[]))
    return p, stored_entry(p, "modal")


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and text not in path.read_text():
        time.sleep(0.05)
    assert text in path.read_text(), path.read_text()


def test_a_second_process_waits_for_the_writer_then_reuses_the_entry(tmp_path):
    from mch.runner import _fill

    p, entry = _toy_entry(tmp_path)
    log = tmp_path / "second.err"
    env = {**os.environ, "MCH_STORE": str(tmp_path / "s"), "COLUMNS": "250"}
    with open(log, "w") as err, entry.writing():  # this process is the writer
        second = subprocess.Popen(_extract_cmd(24), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
        _wait_for(log, f"waiting for another mch process (pid {os.getpid()})", second)
        _fill(p, entry, "modal")
    second.communicate(timeout=600)
    text = log.read_text()
    assert second.returncode == 0 and "Traceback" not in text, text
    assert text.count("waiting for another mch process") == 1  # said once
    assert "written by another mch process meanwhile" in text and "loading model" not in text


def test_waiting_is_optional(tmp_path):
    p, entry = _toy_entry(tmp_path)
    with entry.writing():
        res = run_mch(
            "extract",
            "--limit",
            "24",
            "--batch-size",
            "4",
            env={"MCH_STORE": str(tmp_path / "s"), "MCH_STORE_WAIT": "0"},
        )
        listing = run_mch("store", "list", env={"MCH_STORE": str(tmp_path / "s")}).stdout
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = " ".join(res.stderr.split())
    assert f"another mch process is writing store entry {entry.hash}" in err and f"pid {os.getpid()}" in err
    assert "loading model" not in err
    assert f"being written (pid {os.getpid()})" in listing


def test_a_killed_writer_leaves_no_lock(tmp_path, monkeypatch):
    from mch.fsio import is_locked

    p, entry = _toy_entry(tmp_path)
    entry.dir.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from mch.fsio import locked\nwith locked(Path(sys.argv[1]), 'x'):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(entry.lock_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert is_locked(entry.lock_path) == str(holder.pid)
    holder.kill()
    holder.wait()
    assert is_locked(entry.lock_path) is None
    monkeypatch.setenv("MCH_STORE_WAIT", "0")
    assert extract(p).complete


# --------------------------------------------------------------------------- records as analyses end

FAILING = """
from mch.hookspecs import hookimpl
from mch.api import Analysis, AnalysisOutput, AnalysisSpec, MchError, Metric

class Norm(Analysis):
    def run(self, ctx):
        import numpy as np
        return AnalysisOutput(metrics=[Metric("norm", float(np.abs(np.asarray(ctx.reps[s])).mean()), stage=s)
                                       for s in ctx.stages])

class Fails(Analysis):
    def run(self, ctx):
        raise MchError("this analysis always fails")

class Interrupted(Analysis):
    def run(self, ctx):
        raise KeyboardInterrupt

@hookimpl
def mch_register_analyses(register):
    register(AnalysisSpec(name="norm", entry="mch_fail_plugin:Norm"))
    register(AnalysisSpec(name="fails", entry="mch_fail_plugin:Fails"))
    register(AnalysisSpec(name="interrupted", entry="mch_fail_plugin:Interrupted"))
"""


@pytest.fixture
def failing_plugin(tmp_path):
    from test_plugins_cli import _install_plugin

    return _install_plugin(tmp_path, "mch_fail_plugin", FAILING)


@pytest.mark.parametrize(
    "command,last,rc", [("bench", "fails", 2), ("bench", "interrupted", 130), ("analyze", "fails", 2)]
)
def test_records_are_written_as_each_analysis_ends(tmp_path, failing_plugin, command, last, rc):
    common = ["--limit", "24", "--store", str(tmp_path / "s")]
    extract(plan(RunConfig(limit=24, store=tmp_path / "s", analyses=[])))  # `mch extract --limit 24`, here
    res = run_mch(command, *common, "--analysis", f"norm,{last}", "--out", str(tmp_path / "r"), env=failing_plugin)
    assert res.returncode == rc, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    recs = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*.json")]
    assert [r["analysis"]["name"] for r in recs] == ["norm"]
    assert "records written before the stop: norm" in res.stderr and f"not written: {last}" in res.stderr


# --------------------------------------------------------------------------- filesystem faults


@pytest.fixture
def a_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("not a directory")
    return f


@pytest.mark.parametrize("where", ["results-is-file", "out-under-file", "store-is-file", "store-under-file"])
def test_unusable_directories_are_one_sentence_before_any_work(tmp_path, a_file, where):
    env = {"MCH_STORE": str(tmp_path / "s"), "MCH_RESULTS": str(tmp_path / "r")}
    args = ["bench", "--limit", "24", "--analysis", "probe"]
    if where == "results-is-file":
        env["MCH_RESULTS"], needle = str(a_file), f"results directory {a_file} is a file"
    elif where == "out-under-file":
        args += ["--out", str(a_file / "r")]
        needle = f"is under {a_file}, which is a file"
    elif where == "store-is-file":
        env["MCH_STORE"], needle = str(a_file), f"representation store {a_file} is a file"
    else:
        env["MCH_STORE"], needle = str(a_file / "store"), f"is under {a_file}, which is a file"
    res = run_mch(*args, env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    assert needle in " ".join(res.stderr.split()) and "Traceback" not in res.stderr
    assert "loading model" not in res.stderr and "running analysis" not in res.stderr


@pytest.mark.skipif(
    os.geteuid() == 0,
    reason="root writes into a mode-0500 directory: only a non-root user "
    "sees a read-only directory (the tests above use paths under a file)",
)
def test_read_only_directories(tmp_path):
    for name in ("s", "r"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o500)
    try:
        res = run_mch(
            "bench", "--limit", "24", env={"MCH_STORE": str(tmp_path / "s"), "MCH_RESULTS": str(tmp_path / "r")}
        )
        assert res.returncode == 2 and "is not writable" in res.stderr and "Traceback" not in res.stderr
        res = run_mch(
            "bench", "--limit", "24", env={"MCH_STORE": str(tmp_path / "s"), "MCH_RESULTS": str(tmp_path / "r2")}
        )
        assert res.returncode == 2 and "representation store" in res.stderr and "not writable" in res.stderr
    finally:
        for name in ("s", "r"):
            (tmp_path / name).chmod(0o700)


@pytest.mark.parametrize("damage", ["manifest", "npy", "npy-header"])
def test_damaged_store_entry_names_itself_and_the_fix(tmp_path, damage):
    entry = extract(plan(RunConfig(limit=24, store=tmp_path / "s", analyses=[])))  # what `mch bench --limit 24` reads
    if damage == "manifest":
        (entry.dir / "manifest.json").write_text('{"format": 1, "key": ')
    else:
        f = entry.dir / "adapter.npy"
        f.write_bytes(f.read_bytes()[: 40 if damage == "npy-header" else 500])
    env = {"MCH_STORE": str(tmp_path / "s")}
    res = run_mch("bench", "--limit", "24", "--analysis", "probe", "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 2, res.stdout + res.stderr
    err = " ".join(res.stderr.split())
    assert f"store entry {entry.hash}" in err and f"mch store rm {entry.hash}" in err and "Traceback" not in err
    assert "running analysis" not in err
    if damage == "manifest":  # the fix it names works
        assert run_mch("store", "rm", entry.hash, env=env).returncode == 0
        p = plan(RunConfig(limit=24, store=tmp_path / "s", analyses=[]))
        assert extract(p).read()[0]["adapter"].shape == (24, 64) and p.loaded


def test_damaged_cache_array_is_computed_again(tmp_path):
    from mch.store import Store

    entry = Store(tmp_path).entry({"model": {"name": "m"}}, ["a", "b"])
    calls = []

    def compute():
        calls.append(1)
        return np.arange(3.0)

    assert entry.cached("scores", {"k": 1}, compute).tolist() == [0, 1, 2]
    assert entry.cached("scores", {"k": 1}, compute).tolist() == [0, 1, 2] and len(calls) == 1
    f = next((tmp_path / "m").rglob("cache/*.npy"))
    f.write_bytes(f.read_bytes()[:20])
    assert entry.cached("scores", {"k": 1}, compute).tolist() == [0, 1, 2] and len(calls) == 2


# --------------------------------------------------------------------------- permissions


def test_written_files_honour_the_umask(tmp_path):
    from mch.leaderboard import submit
    from mch.results import build_record, write_record
    from mch.site import build_site

    old = os.umask(0o022)
    try:
        entry = extract(plan(RunConfig(limit=16, store=tmp_path / "s", analyses=[])))
        rec = build_record(
            model={"name": "toy", "modality": "speech", "checkpoint": "builtin:toy", "revision": "r"},
            dataset={"name": "toy", "n": 16, "sample_ids_sha256": "ab"},
            analysis={"name": "probe", "params": {}},
            protocol="default",
            extraction={},
            seeds=[0],
            config_hash="c",
            duration_s=1,
            metrics=[{"metric": "accuracy", "value": 0.5, "stage": "adapter", "attribute": "speaker"}],
        )
        path = write_record(rec, tmp_path / "r")
        submitted, _ = submit(path, tmp_path / "entries")
        build_site([], tmp_path / "site")
        files = [path, submitted, tmp_path / "site" / "leaderboard.json", entry.manifest_path, *entry.dir.glob("*.npy")]
        assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o644)}, {
            f.name: oct(f.stat().st_mode & 0o777) for f in files
        }
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- mch store


def _mch_here(capsys, *args: str) -> tuple[int, str, str]:
    """`mch ARGS` in this process (what a subprocess would print, without its start-up cost)."""
    from mch import cli

    try:
        cli.main(list(args))
        rc = 0
    except SystemExit as exc:
        rc = int(exc.code or 0)
    out = capsys.readouterr()
    return rc, out.out, " ".join(out.err.split())


def test_store_list_and_rm(tmp_path, monkeypatch, capsys):
    env = {"MCH_STORE": str(tmp_path / "s"), "COLUMNS": "80"}
    monkeypatch.setenv("MCH_STORE", str(tmp_path / "s"))
    assert "no entries" in _mch_here(capsys, "store", "list")[1]
    extract(plan(RunConfig(limit=16, store=tmp_path / "s", analyses=[])))
    p = plan(RunConfig(limit=24, store=tmp_path / "s", analyses=[]))
    extract(p, "modal")
    extract(p, "text")
    res = run_mch("store", "list", env=env, check=True)  # 80 columns, stdout not a terminal
    keys = sorted(d.name for d in (tmp_path / "s" / "toy").iterdir())
    assert len(keys) == 3 and all(k in res.stdout for k in keys)
    assert "toy on toy (modal view)" in res.stdout and "(text view)" in res.stdout
    assert "complete · 16 samples" in res.stdout and "checkpoint builtin:toy (sha256:" in res.stdout
    assert str(tmp_path / "s") in res.stdout  # a long path stays on one line, for grep
    info = json.loads(_mch_here(capsys, "store", "list", "--json")[1])
    assert sorted(i["key"] for i in info) == keys and all(i["complete"] for i in info)
    assert {i["n"] for i in info} == {16, 24} and all(i["size_bytes"] > 0 for i in info)

    rc, out, _ = _mch_here(capsys, "store", "rm", keys[0][:8])
    assert rc == 0 and f"removed {keys[0]}" in out and not (tmp_path / "s" / "toy" / keys[0]).exists()
    res = run_mch("store", "rm", "zzzz", env=env)
    assert res.returncode == 2 and "has no entry 'zzzz'" in " ".join(res.stderr.split())
    assert "Traceback" not in res.stderr
    for args, needle in [
        (["rm"], "say which store entries"),
        (["rm", "--model", "llava"], "no entries of model 'llava'; it holds toy"),
    ]:
        rc, _, err = _mch_here(capsys, "store", *args)
        assert rc == 2 and needle in err, err

    from mch.fsio import locked

    busy = tmp_path / "s" / "toy" / keys[1]
    with locked(busy / "lock", "test"):  # as if another process were writing it
        rc, _, err = _mch_here(capsys, "store", "rm", "--model", "toy")
    assert rc == 2 and "another mch process is writing" in err and f"pid {os.getpid()}" in err
    assert busy.exists() and not (tmp_path / "s" / "toy" / keys[2]).exists()
    assert _mch_here(capsys, "store", "rm", "--all")[0] == 0
    assert "no entries" in _mch_here(capsys, "store", "list")[1]


def test_makefile_clean_store_has_a_recipe():
    lines = (ROOT / "Makefile").read_text().splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("clean-store:"))
    assert lines[i + 1].startswith("\t") and "store rm --all" in lines[i + 1]


def test_a_store_path_that_is_a_file_is_one_sentence_everywhere(tmp_path):
    """`mch store list` / `store rm` / `analyze` with a store that is a file said "no entries"
    or "no complete extraction" (rc 0 for list: review); `bench` named it already."""
    f = tmp_path / "store"
    f.write_text("not a store")
    for args in (["store", "list"], ["store", "rm", "--all"], ["analyze"]):
        proc = run_mch(*args, env={"MCH_STORE": str(f), "MCH_RESULTS": str(tmp_path / "r")})
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert f"the representation store {f} is a file, not a directory" in proc.stderr, args
        assert "Traceback" not in proc.stderr
