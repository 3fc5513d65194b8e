"""A stage subset (--stage) after a full run reads the full run's store entry instead of
extracting again (mch.run_entry): the numbers are those of a fresh subset extraction, the
store keeps its one entry, and an entry that differs in any other key field, lacks a stage
or is incomplete is never read. Through `mch extract`/`bench`/`analyze`, the Python API and
the data-parallel path. And --data-path refused for a dataset that reads no path."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_mch

from mch.api import MchError
from mch.plugins.models.toy import ToyModel
from mch.runner import RunConfig, extract, plan, run_analyze, run_bench, stored_entry
from mch.store_entry import key_hash

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SUBSET = ["llm.1", "encoder"]  # two of the toy's seven stages, not in forward order
PROBE = {"probe": {"n_splits": 3, "n_bootstrap": 20}}


def _cfg(tmp_path: Path, **kw) -> RunConfig:
    base = dict(limit=24, batch_size=4, store=tmp_path / "s", out_dir=tmp_path / "r", analyses=[], params={})
    return RunConfig(**{**base, **kw})


def _no_load(monkeypatch):
    monkeypatch.setattr(ToyModel, "load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))


def _manifests(store: Path) -> list[Path]:
    return sorted(store.rglob("manifest.json"))


@pytest.fixture(scope="module")
def full_store(tmp_path_factory):
    """A store holding one complete entry of every toy stage (24 samples)."""
    root = tmp_path_factory.mktemp("full")
    extract(plan(_cfg(root)))
    return root / "s"


def _store_copy(full_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(full_store, tmp_path / "s"))


def test_a_stage_subset_reads_the_full_entry_with_the_numbers_of_a_fresh_subset_extraction(
    tmp_path, monkeypatch, full_store
):
    store = _store_copy(full_store, tmp_path)
    cfg = _cfg(tmp_path, stages=SUBSET, analyses=["probe"], params=PROBE)
    said: list[str] = []
    with monkeypatch.context() as m:
        _no_load(m)
        p, written = run_bench(cfg, log=said.append)
    assert not p.loaded
    assert len(_manifests(store)) == 1  # no second entry: `mch store list` shows the one
    full = _manifests(store)[0].parent
    assert any(f"stages encoder, llm.1 read from store entry {full.name}" in s for s in said), said
    ext = written[0][1]["extraction"]
    assert ext["reused_from"] == ext["store_key"] == full.name and ext["model_loaded"] is False

    fresh_cfg = dataclasses.replace(cfg, store=tmp_path / "fresh", out_dir=tmp_path / "r2")
    fp, fresh = run_bench(fresh_cfg)
    assert fp.loaded and len(_manifests(tmp_path / "fresh")) == 1
    a, b = written[0][1], fresh[0][1]
    assert a["metrics"] == b["metrics"] and a["summary"] == b["summary"]  # bit-identical numbers
    assert sorted(a["extraction"]["stages"]) == sorted(SUBSET) == sorted(b["extraction"]["stages"])
    assert "reused_from" not in b["extraction"]
    # and the vectors themselves, bit for bit
    reused, _ = stored_entry(plan(cfg), "modal").read()
    own, _ = stored_entry(plan(fresh_cfg), "modal").read()
    for s in SUBSET:
        assert reused[s].dtype == own[s].dtype and np.array_equal(reused[s], own[s]), s

    # analyze (never extracts) reads it too
    p2, again = run_analyze(dataclasses.replace(cfg, out_dir=tmp_path / "r3"))
    assert again[0][1]["metrics"] == b["metrics"] and again[0][1]["extraction"]["reused_from"] == full.name


def _leaves(d: dict, at: tuple = ()) -> list[tuple]:
    out = []
    for k, v in d.items():
        out += _leaves(v, (*at, k)) if isinstance(v, dict) and v else [(*at, k)]
    return out


def _other(v):
    if isinstance(v, str):
        return v + "-other"
    if isinstance(v, list):
        return [*v, "other"]
    if isinstance(v, bool) or v is None:
        return "other"
    return v + 1 if isinstance(v, (int, float)) else "other"


def _plant(store: Path, entry_dir: Path, key: dict) -> Path:
    """`entry_dir` copied as the complete entry of `key` (another store key's directory)."""
    from mch.results import safe_name

    dest = store / safe_name(str(key["model"]["name"])) / key_hash(key)
    shutil.copytree(entry_dir, dest)
    man = json.loads((dest / "manifest.json").read_text())
    man.update(key=key, key_hash=key_hash(key))
    (dest / "manifest.json").write_text(json.dumps(man))
    return dest


def _full_key(full_store: Path) -> tuple[Path, dict]:
    (man,) = _manifests(full_store)
    return man.parent, json.loads(man.read_text())["key"]


def _field_cases(full_store: Path) -> list[tuple]:
    _, key = _full_key(full_store)
    return [f for f in _leaves(key) if f != ("stages",)]


def test_an_entry_differing_in_any_other_key_field_is_not_read(tmp_path, full_store, monkeypatch):
    """Every field of the full entry's key but `stages`, changed one at a time: never read for
    the subset. The same entry unchanged is read (the control)."""
    full_dir, key = _full_key(full_store)
    fields = _field_cases(full_store)
    named = {f[-1] for f in fields}  # the key's definition, as the toy's entry holds it
    assert {"checkpoint_fingerprint", "sample_ids_sha256", "media_fingerprint", "path", "split"} <= named
    assert {"prompt", "view", "span", "protocol", "dtype", "name", "checkpoint"} <= named
    p = plan(_cfg(tmp_path, stages=SUBSET))
    for n, field in enumerate(fields):
        store = tmp_path / f"s{n}"
        other = copy.deepcopy(key)
        parent = other
        for k in field[:-1]:
            parent = parent[k]
        parent[field[-1]] = _other(parent[field[-1]])
        _plant(store, full_dir, other)
        p.cfg.store = store
        got = stored_entry(p, "modal")
        assert got.reused_for is None and not got.complete, f"read an entry whose {'.'.join(field)} differs"
    control = tmp_path / "control"
    _plant(control, full_dir, key)
    p.cfg.store = control
    assert stored_entry(p, "modal").reused_for is not None


def test_an_incomplete_entry_or_one_lacking_a_stage_is_not_read(tmp_path, full_store):
    full_dir, key = _full_key(full_store)
    p = plan(_cfg(tmp_path, stages=SUBSET))
    p.cfg.store = tmp_path / "partial"
    d = _plant(p.cfg.store, full_dir, key)
    man = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**man, "complete": False}))
    assert not stored_entry(p, "modal").complete
    # an entry of other listed stages that lacks one asked for (llm.1)
    p.cfg.store = tmp_path / "lacking"
    d = _plant(p.cfg.store, full_dir, {**key, "stages": ["adapter", "encoder", "llm.0"]})
    man = json.loads((d / "manifest.json").read_text())
    (d / "manifest.json").write_text(json.dumps({**man, "stages": ["encoder", "adapter", "llm.0"]}))
    assert not stored_entry(p, "modal").complete
    # every stage (no --stage) is never answered by a listed-stage entry, even of them all
    p.cfg.store, p.cfg.stages = tmp_path / "listed", None
    _plant(p.cfg.store, full_dir, {**key, "stages": sorted(man["stages"])})
    assert not stored_entry(p, "modal").complete


def test_a_subset_of_a_checkpoint_not_on_this_machine_reads_its_full_entry(tmp_path, monkeypatch):
    from mch.plugins.models.toy import WEIGHTS

    ckpt = Path(shutil.copytree(WEIGHTS, tmp_path / "ck"))
    cfg = _cfg(tmp_path, checkpoint=str(ckpt))
    full = extract(plan(cfg)).dir
    shutil.rmtree(ckpt)
    _no_load(monkeypatch)
    said: list[str] = []
    got = extract(plan(dataclasses.replace(cfg, stages=SUBSET), log=said.append))
    assert got.dir == full and got.reused_for and _manifests(tmp_path / "s") == [full / "manifest.json"]
    assert any("not on this machine" in s and "holds more stages" in s for s in said), said


def test_cli_extract_bench_and_analyze_read_the_full_entry(tmp_path, full_store):
    store = _store_copy(full_store, tmp_path)
    env = {"MCH_STORE": str(store), "MCH_RESULTS": str(tmp_path / "r")}
    common = ["--limit", "24", "--batch-size", "4", "--stage", ",".join(SUBSET)]
    full = _manifests(store)[0].parent
    res = run_mch("extract", *common, env=env)
    assert res.returncode == 0, res.stderr
    assert f"store entry: {full}" in " ".join(res.stdout.split())
    assert f"read from store entry {full.name}" in " ".join(res.stderr.split())
    assert "loading model" not in res.stderr
    probe = ["--analysis", "probe", "--param", "probe.n_splits=3", "--param", "probe.n_bootstrap=20", "--json"]
    for cmd in ("bench", "analyze"):
        res = run_mch(cmd, *common, *probe, env=env)
        assert res.returncode == 0, res.stderr
        assert "loading model" not in res.stderr and json.loads(res.stdout)
    assert _manifests(store) == [full / "manifest.json"]
    listed = run_mch("store", "list", "--json", env=env)
    assert [e["key"] for e in json.loads(listed.stdout)] == [full.name]


def test_python_api_extract_and_bench_read_the_full_entry(tmp_path, full_store, monkeypatch):
    import mch

    store = _store_copy(full_store, tmp_path)
    _no_load(monkeypatch)
    vec = mch.extract(limit=24, batch_size=4, stages=SUBSET, store=store)
    assert sorted(vec.stages) == sorted(SUBSET) and len(vec) == 24
    full, _ = stored_entry(plan(_cfg(tmp_path)), "modal").read()
    for s in SUBSET:
        assert np.array_equal(vec[s], full[s])
    res = mch.bench(
        limit=24, batch_size=4, stages=SUBSET, store=store, analyses=["probe"], params=PROBE, out=tmp_path / "r"
    )
    assert res.model_loaded is False and len(_manifests(store)) == 1


# --------------------------------------------------------------------------- data-parallel (in one process)


def _fake_ranks(monkeypatch, rank: int, broadcasts: list | None = None):
    """Rank `rank` of two in this process; every meeting goes well; `broadcasts`: what rank 0
    sends, in order (None: this rank's own value)."""
    from mch import dist

    queue = list(broadcasts or [])
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "ranks", lambda: dist.Ranks(rank, 2, rank, 2))
    monkeypatch.setattr(dist, "gather", lambda v: [v, v])
    monkeypatch.setattr(dist, "broadcast", lambda v: queue.pop(0) if queue else v)


def test_ranks_read_the_entry_rank_zero_chose(tmp_path, full_store, monkeypatch):
    store = _store_copy(full_store, tmp_path)
    full = _manifests(store)[0].parent
    _no_load(monkeypatch)
    cfg = _cfg(tmp_path, stages=SUBSET)
    with monkeypatch.context() as m:  # rank 0 finds it and decides
        _fake_ranks(m, 0)
        e0 = extract(plan(cfg))
    assert e0.dir == full and e0.reused_for and _manifests(store) == [full / "manifest.json"]
    with monkeypatch.context() as m:  # rank 1 reads what rank 0 chose (never looks itself)
        _fake_ranks(m, 1, [("reuse", []), full.name])
        e1 = extract(plan(cfg))
    assert e1.dir == full and e1.reused_for
    with monkeypatch.context() as m:  # rank 0 chose an entry this rank's store does not hold complete
        _fake_ranks(m, 1, [("reuse", []), full.name])
        other = Path(shutil.copytree(store, tmp_path / "elsewhere"))
        man = _manifests(other)[0]
        man.write_text(json.dumps({**json.loads(man.read_text()), "complete": False}))
        with pytest.raises(MchError, match="was complete and is not here"):
            extract(plan(dataclasses.replace(cfg, store=other)))


# --------------------------------------------------------------------------- --data-path


def test_data_path_for_a_dataset_that_reads_no_path_is_one_sentence(tmp_path):
    with pytest.raises(MchError, match="dataset 'toy' reads no path.*drop --data-path"):
        plan(_cfg(tmp_path, data_path=str(tmp_path)))
    res = run_mch("extract", "--limit", "8", "--data-path", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "dataset 'toy' reads no path" in " ".join(res.stderr.split())
    assert not (tmp_path / "store").exists() or not _manifests(tmp_path / "store")


def test_reads_path_is_declared_where_samples_are_made_in_code():
    from mch.api import DatasetPlugin, load_entry
    from mch.manager import get_registry

    assert DatasetPlugin.reads_path is True  # a plugin that says nothing keeps taking --data-path
    reg = get_registry()
    reads = {name: load_entry(spec.entry).reads_path for name, spec in reg.datasets.items()}
    assert reads["toy"] is False
    assert all(reads[n] for n in ("librispeech", "coco", "synth-coco", "synth-librispeech"))


@pytest.mark.slow
def test_torchrun_two_ranks_read_the_full_entry_for_a_subset(tmp_path, full_store):
    """The in-process rank tests above, on a real launcher (gloo on the CPU)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    store = _store_copy(full_store, tmp_path)
    full = _manifests(store)[0].parent
    env = {**os.environ, "MCH_STORE": str(store), "MCH_CHUNK_SIZE": "8", "COLUMNS": "250"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launch, "-m", "mch", "extract", "--limit", "24", "--batch-size", "4", "--stage", ",".join(SUBSET)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"store entry: {full}" in " ".join(res.stdout.split())
    assert "loading model" not in res.stderr and _manifests(store) == [full / "manifest.json"]
