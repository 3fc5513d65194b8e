"""--device-map / --max-memory (accelerate's big-model inference) on the CPU: every HF-based
plugin gives the same vectors and scores as its plain load; the flags are checked before any
work; a model that does not fit is refused before its weights are read; maps over (pretend)
GPUs keep decoder layers whole; the placement is recorded with the stored vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_mch

from mch.api import AnalysisOutput, MchError, Metric, load_entry
from mch.capture import capture
from mch.manager import get_registry
from mch.testing import tiny_samples

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# registry name -> (tiny builder, modality)
MODELS = {
    "llava": ("make_tiny_llava", "vision"),
    "qwen2audio": ("make_tiny_qwen2audio", "speech"),
    "ultravox": ("make_tiny_ultravox", "speech"),
    "prismatic_dinov2": ("make_tiny_prismatic_dinov2", "vision"),
    "llama": ("make_tiny_llama", "text"),
    "qwen2-vl": ("qwen2_vl", "vision"),  # the generic plugin (hf_generic), one family
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from mch.plugins.models import tiny, tiny_hf

    root = tmp_path_factory.mktemp("placement")
    out = {}
    for name, (builder, _) in MODELS.items():
        if hasattr(tiny, builder):
            out[name] = getattr(tiny, builder)(root / name)
        else:
            out[name] = tiny_hf.make_tiny_hf(builder, root / name)
    return out


def _plugin(name: str, ckpt, **kw):
    spec = get_registry().get("model", name)
    m = load_entry(spec.entry)(spec, checkpoint=str(ckpt), **kw)
    m.load()
    return m


def _vectors(m, modality: str) -> dict[str, torch.Tensor]:
    view = "text" if modality == "text" else "modal"
    return capture(
        m,
        m.prepare(tiny_samples(modality, 3), "default", view),
        m.stages(view),
        "all" if modality == "text" else "modality",
        view,
    )


@pytest.mark.parametrize("name", list(MODELS))
def test_device_map_on_the_cpu_gives_the_plain_load_s_vectors(name, checkpoints):
    modality = MODELS[name][1]
    plain = _vectors(_plugin(name, checkpoints[name]), modality)
    for kw in ({"device_map": "auto", "max_memory": {"cpu": "2GiB"}}, {"device_map": "sequential"}):
        m = _plugin(name, checkpoints[name], **kw)
        mapped = _vectors(m, modality)
        assert mapped.keys() == plain.keys()
        for k in plain:
            assert torch.equal(mapped[k], plain[k]), (name, kw, k)
        where = m.placement()["device_map"]
        assert where["strategy"] == kw["device_map"] and set(where["modules"].values()) == {"cpu"}
        assert where.get("max_memory") == ({"cpu": "2GiB"} if "max_memory" in kw else None)


def test_scores_under_a_device_map_equal_the_plain_load_s(checkpoints):
    s = tiny_samples("vision", 3)
    plain = _plugin("llava", checkpoints["llava"]).score(s, "The image shows", ["a dog", "a cat"], "default")
    mapped = _plugin("llava", checkpoints["llava"], device_map="balanced").score(
        s, "The image shows", ["a dog", "a cat"], "default"
    )
    assert np.array_equal(plain.logp, mapped.logp)


def test_a_model_that_does_not_fit_is_refused_before_its_weights_are_read(checkpoints, monkeypatch):
    from transformers import LlavaForConditionalGeneration

    def never(*a, **k):
        raise AssertionError("weights read")

    monkeypatch.setattr(LlavaForConditionalGeneration, "from_pretrained", never)
    with pytest.raises(MchError, match="model 'llava' does not fit within --max-memory cpu=10KB .*raise --max-memory"):
        _plugin("llava", checkpoints["llava"], device_map="auto", max_memory={"cpu": "10KB"})
    # a module built in code (Ultravox) is placed by dispatch: refused alike
    with pytest.raises(MchError, match="model 'ultravox' does not fit within --max-memory cpu=10KB"):
        _plugin("ultravox", checkpoints["ultravox"], device_map="auto", max_memory={"cpu": "10KB"})


@pytest.mark.parametrize("strategy", ["sequential", "balanced"])
def test_maps_over_two_gpus_keep_each_decoder_layer_whole(checkpoints, strategy):
    """accelerate's map for two (pretend) GPUs of a model built in code: the layers transformers
    declares unsplittable stay whole, and both GPUs get a share."""
    from mch import placement

    m = _plugin("ultravox", checkpoints["ultravox"])
    size = sum(p.numel() * p.element_size() for p in m.module.parameters())
    dmap = placement.infer_map(m.module, strategy, {0: size // 2, 1: size // 2 + 300_000}, [], torch.float32)
    assert set(dmap.values()) == {0, 1}
    no_split = set(placement.no_split_classes(m.module))
    assert {"LlamaDecoderLayer", "WhisperEncoderLayer"} <= no_split
    for path, mod in m.module.named_modules():
        if type(mod).__name__ in no_split:
            owners = {
                dev
                for key, dev in dmap.items()
                if key == "" or path == key or path.startswith(key + ".") or key.startswith(path + ".")
            }
            assert len(owners) == 1, (path, owners)


def test_the_flags_are_checked_before_any_work(tmp_path):
    from mch.runner import RunConfig, plan

    bad = {
        "unknown --device-map 'everywhere'": {"device_map": "everywhere"},
        "--max-memory only limits a model split by --device-map": {"max_memory": "cpu=1GiB"},
        "--max-memory 0=lots: not a size": {"device_map": "auto", "max_memory": "0=lots"},
        "'gpu0' is not a device": {"device_map": "auto", "max_memory": "gpu0=1GiB"},
        "names GPU 0 but --device is cpu": {"device_map": "auto", "max_memory": "0=1GiB,cpu=1GiB"},
        "model 'toy' loads on one device and cannot be split by --device-map": {"device_map": "auto"},
    }
    for message, kw in bad.items():
        with pytest.raises(MchError, match=message.replace("(", "\\(").replace(")", "\\)")):
            plan(RunConfig(limit=4, store=tmp_path / "s", analyses=[], **kw))
    assert not (tmp_path / "s").exists()
    res = run_mch("extract", "--limit", "4", "--device-map", "auto", "--max-memory", "cpu=1GiB,cpu=2GiB")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "--max-memory names device cpu twice" in " ".join(res.stderr.split())


def test_the_placement_is_kept_with_the_stored_vectors_and_in_records(checkpoints, tmp_path, monkeypatch):
    from mch.plugins.attributes import synth
    from mch.results import validate
    from mch.runner import RunConfig, extract, plan, record_for

    coco = synth.make("coco", tmp_path / "coco", images=4)
    cfg = RunConfig(
        model="llava",
        checkpoint=str(checkpoints["llava"]),
        dataset="coco",
        data_path=str(coco),
        limit=4,
        batch_size=2,
        store=tmp_path / "s",
        analyses=[],
        device_map="auto",
        max_memory="cpu=1GiB",
    )
    p = plan(cfg)
    entry = extract(p)
    info = entry.manifest()["info"]
    assert info["world_size"] == 1
    assert info["device_map"] == {"strategy": "auto", "modules": {"": "cpu"}, "max_memory": {"cpu": "1GiB"}}
    plain = plan(
        RunConfig(
            model="llava",
            checkpoint=str(checkpoints["llava"]),
            dataset="coco",
            data_path=str(coco),
            limit=4,
            batch_size=2,
            store=tmp_path / "s",
            analyses=[],
        )
    )
    assert extract(plain).dir == entry.dir and not plain.loaded  # the same vectors: the same entry
    rec = record_for(plain, entry, "x", AnalysisOutput(metrics=[Metric("m", 1.0)]), {}, 0.0, 0.0)
    validate(rec)
    assert rec["extraction"]["device_map"]["strategy"] == "auto" and rec["extraction"]["world_size"] == 1
    json.dumps(rec)


def test_the_python_api_and_run_configs_take_the_placement_flags(checkpoints, tmp_path):
    """mch.extract(device_map=..., max_memory={...}) splits the model as the flags do (the same
    entry as the plain load, its placement in the manifest); the record's run_config keeps both
    and is a valid run config again; a bad value in a config file is one sentence."""
    import mch
    from mch.configs import check_config, make_run_config, resolved
    from mch.plugins.attributes import synth

    coco = synth.make("coco", tmp_path / "coco", images=4)
    common = dict(
        model="llava", checkpoint=str(checkpoints["llava"]), dataset="coco", data_path=str(coco), limit=4, batch_size=2
    )
    split = mch.extract(**common, store=tmp_path / "s1", device_map="sequential", max_memory={"cpu": "1GiB"})
    plain = mch.extract(**common, store=tmp_path / "s2")
    assert split.key == plain.key and plain.stages == split.stages
    info = split.manifest["info"]
    assert info["device_map"]["strategy"] == "sequential" and info["device_map"]["max_memory"] == {"cpu": "1GiB"}
    assert "device_map" not in plain.manifest["info"]
    for name in plain.stages:
        np.testing.assert_array_equal(np.asarray(split[name]), np.asarray(plain[name]))

    cfg = make_run_config({"device_map": "auto", "max_memory": "cpu=1GiB"}, model="llava")
    assert (cfg.device_map, cfg.max_memory) == ("auto", "cpu=1GiB")
    again = resolved(cfg)
    assert again["device_map"] == "auto" and again["max_memory"] == "cpu=1GiB"
    assert make_run_config(check_config(again, "(record)")).device_map == "auto"
    with pytest.raises(MchError, match="key device_map: 'everywhere' is not one of"):
        make_run_config({"device_map": "everywhere"})
    with pytest.raises(MchError, match="model 'toy' loads on one device and cannot be split by --device-map"):
        mch.extract(model="toy", limit=4, store=tmp_path / "t", device_map="auto")

    (tmp_path / "run.yaml").write_text("device_map: auto\nmax_memory: cpu=1GiB\nlimit: 4\n")
    res = run_mch("extract", "--config", str(tmp_path / "run.yaml"), "--store", str(tmp_path / "t"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model 'toy' loads on one device and cannot be split by --device-map" in " ".join(res.stderr.split())
