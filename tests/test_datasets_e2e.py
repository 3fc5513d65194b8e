"""Generated corpora through the real runner and tiny models of the right modality:
extraction works, and a bad file is skipped and recorded under --on-error skip."""

from __future__ import annotations

import shutil

import pytest

from mch.api import SampleError
from mch.plugins.attributes import synth
from mch.runner import RunConfig, extract, plan


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from mch.plugins.models import tiny as t

    base = tmp_path_factory.mktemp("tiny")
    made = {}

    def get(kind):
        if kind not in made:
            build = t.make_tiny_qwen2audio if kind == "speech" else t.make_tiny_llava
            made[kind] = str(build(base / kind))
        return made[kind]

    return get


CORPORA = {
    "cremad": dict(actors=2, sentences=["DFA", "IEO"], engine="numpy"),
    "esc50": dict(classes=2, folds=2, seconds=1.0),
    "librispeech": dict(speakers=2, chapters=1, utterances=2, engine="numpy"),
    "voxceleb1": dict(speakers=2, videos=1, utterances=2, engine="numpy"),
    "coco": dict(images=8),
    "gqa": dict(images=2),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return lambda name: synth.ensure(name, base / name, **CORPORA[name])


def run(tmp_path, model, ckpt, dataset, path, **kw):
    cfg = RunConfig(
        model=model,
        dataset=dataset,
        checkpoint=ckpt,
        data_path=str(path),
        store=tmp_path / "store",
        batch_size=4,
        analyses=(),
        **kw,
    )
    p = plan(cfg)
    return p, extract(p)


def test_speech_corpus_with_a_corrupt_file_is_skipped_and_recorded(tiny, data, tmp_path):
    from mch.manager import get_registry
    from mch.plugins.attributes.cremad import CremaD

    root = shutil.copytree(data("cremad"), tmp_path / "cremad")
    chosen = CremaD(get_registry().datasets["cremad"], path=str(root)).samples(None, 6, 0, "default")
    assert sorted(s.labels["emotion"] for s in chosen) == ["anger", "disgust", "fear", "happy", "neutral", "sadness"]
    sid = chosen[2].sample_id
    bad = root / "AudioWAV" / f"{sid}.wav"
    bad.write_bytes(bad.read_bytes()[:200])
    kw = dict(limit=6, stages=["adapter", "llm.final"])
    with pytest.raises(SampleError, match=sid):
        run(tmp_path, "qwen2audio", tiny("speech"), "cremad", root, **kw)
    p, entry = run(tmp_path, "qwen2audio", tiny("speech"), "cremad", root, on_error="skip", **kw)
    assert [s.sample_id for s in p.samples] == [s.sample_id for s in chosen]
    man = entry.manifest()
    assert [s["sample_id"] for s in man["skipped"]] == [sid]
    assert man["skipped"][0]["path"] == str(bad) and "truncated" in man["skipped"][0]["reason"]
    assert man["n_rows"] == 5
    reps, rows = entry.read()
    assert reps["adapter"].shape[0] == 5 and reps["llm.final"].shape[1] == 64 and 2 not in rows.tolist()
    assert extract(p, "text").manifest()["n_rows"] == 6  # the transcript of the broken clip is fine


def test_vision_corpus_through_tiny_llava(tiny, data, tmp_path):
    p, entry = run(tmp_path, "llava", tiny("vision"), "coco", data("coco"), stages=["encoder", "llm.final"])
    assert entry.manifest()["n_rows"] == 7 == len(p.samples)  # 8 scenes, the empty one dropped by default
    assert set(p.attributes) == {
        "lexical",
        "object_category",
        "super_category",
        "object_count",
        "avg_obj_size",
        "spatial_spread",
    }


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["esc50", "librispeech", "voxceleb1", "gqa"])
def test_other_corpora_extract(tiny, data, tmp_path, dataset):
    model, kind = ("llava", "vision") if dataset == "gqa" else ("qwen2audio", "speech")
    p, entry = run(tmp_path, model, tiny(kind), dataset, data(dataset), stages=["adapter"])
    assert entry.manifest()["n_rows"] == len(p.samples) > 0
