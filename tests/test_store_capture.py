"""Capture (span pooling, early stop) and the store (resume after SIGKILL, no reload)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT

from mch.api import MchError, ModelSpec
from mch.capture import capture
from mch.plugins.attributes import toy as world
from mch.plugins.models.toy import ToyModel
from mch.runner import RunConfig, extract, plan


@pytest.fixture(scope="module")
def toy():
    m = ToyModel(ModelSpec("toy", "mch.plugins.models.toy:ToyModel", "speech", "builtin:toy"))
    m.load()
    return m


@pytest.fixture(scope="module")
def samples():
    return [world.make_sample("test", i) for i in range(24)]


def test_every_stage_fires_once_with_its_width(toy, samples):
    calls = {}
    handles = [
        toy.module.get_submodule(path).register_forward_hook(
            lambda m, a, o, s=stage: calls.__setitem__(s, calls.get(s, 0) + 1)
        )
        for stage, path in toy.stage_map().items()
    ]
    try:
        out = capture(toy, toy.prepare(samples[:5], "default"), toy.stages(), "modality")
    finally:
        for h in handles:
            h.remove()
    assert set(out) == set(toy.stages())
    assert all(calls[s] == 1 for s in toy.stages())
    assert out["encoder"].shape == (5, 32) and out["adapter"].shape == (5, 64) and out["llm.final"].shape == (5, 64)


@pytest.mark.parametrize("span", ["modality", "all", "text", "last"])
def test_pooling_ignores_batch_size_and_padding(toy, samples, span):
    one = [
        capture(toy, toy.prepare([s], "default"), ["encoder", "adapter", "llm.2", "llm.final"], span)
        for s in samples[:8]
    ]
    batch = capture(toy, toy.prepare(samples[:8], "default"), ["encoder", "adapter", "llm.2", "llm.final"], span)
    for stage, v in batch.items():
        ref = torch.cat([o[stage] for o in one])
        assert torch.allclose(v, ref, atol=1e-5), (stage, (v - ref).abs().max())


def test_modality_span_is_the_mean_over_audio_tokens(toy, samples):
    s = samples[3]
    prep = toy.prepare([s], "default")
    n = s.media.shape[0]
    assert int(prep.pools["llm"].masks["modality"].sum()) == n
    hidden = {}
    h = toy.module.llm.model.layers[1].register_forward_hook(
        lambda m, a, o: hidden.__setitem__("x", o[0] if isinstance(o, tuple) else o)
    )
    try:
        out = capture(toy, prep, ["llm.1", "llm.final"], "modality")
    finally:
        h.remove()
    ids = prep.inputs["input_ids"][0]
    manual = hidden["x"][0][ids == toy.tokenizer.audio_id].mean(0)
    assert torch.allclose(out["llm.1"][0], manual, atol=1e-6)


def test_forward_stops_after_the_deepest_stage(toy, samples):
    seen = []
    hooks = [
        toy.module.llm.model.layers[3].register_forward_hook(lambda *a: seen.append("llm.3")),
        toy.module.llm.lm_head.register_forward_hook(lambda *a: seen.append("lm_head")),
    ]
    try:
        capture(toy, toy.prepare(samples[:4], "default"), ["adapter", "llm.1"], "modality")
    finally:
        for h in hooks:
            h.remove()
    assert seen == []


def test_unknown_stage_is_a_clear_error(toy, samples):
    with pytest.raises(MchError, match="no stage 'llm.9'"):
        capture(toy, toy.prepare(samples[:2], "default"), ["llm.9"], "modality")


def _store_files(entry_dir: Path) -> dict[str, np.ndarray]:
    out = {p.name: np.load(p) for p in sorted(entry_dir.glob("*.npy"))}
    man = json.loads((entry_dir / "manifest.json").read_text())
    out["manifest"] = {k: v for k, v in man.items() if k not in ("info",)}
    return out


def test_killed_extraction_resumes_to_an_identical_store(tmp_path):
    """SIGKILL a real `mch extract` mid-way; the rerun finishes with the same store as a clean run."""
    args = [sys.executable, "-m", "mch.cli", "extract", "--limit", "600", "--batch-size", "4", "--quiet"]
    env_a = {**os.environ, "MCH_STORE": str(tmp_path / "a"), "MCH_CHUNK_SIZE": "8"}
    proc = subprocess.Popen(args, env=env_a, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    chunks = []
    while time.time() < deadline and proc.poll() is None:
        chunks = list((tmp_path / "a").rglob("chunks/*.npz"))
        if len(chunks) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entry = next((tmp_path / "a").rglob("manifest.json")).parent
    assert not json.loads((entry / "manifest.json").read_text())["complete"]
    n_before = len(list(entry.glob("chunks/*.npz")))
    assert 5 <= n_before < 75
    res = subprocess.run(args, env=env_a, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    env_b = {**env_a, "MCH_STORE": str(tmp_path / "b")}
    res = subprocess.run(args, env=env_b, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    a = _store_files(entry)
    b = _store_files(next((tmp_path / "b").rglob("manifest.json")).parent)
    assert a.keys() == b.keys()
    for k in a:
        if k == "manifest":
            assert a[k] == b[k]
        else:
            assert np.array_equal(a[k], b[k]), k
    assert a["rows.npy"].tolist() == list(range(600))


def test_second_run_reuses_the_store_and_never_loads_the_model(tmp_path, monkeypatch):
    cfg = RunConfig(limit=40, out_dir=tmp_path / "r", store=tmp_path / "s", analyses=[])
    p = plan(cfg)
    extract(p)
    assert p.loaded
    p2 = plan(cfg)
    monkeypatch.setattr(ToyModel, "load", lambda self: (_ for _ in ()).throw(AssertionError("model loaded")))
    entry = extract(p2)
    assert not p2.loaded
    reps, rows = entry.read()
    assert isinstance(reps["adapter"], np.memmap) and reps["adapter"].shape == (40, 64)
