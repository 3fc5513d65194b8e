"""Every analysis end to end on each tiny paper-architecture checkpoint (random weights, real
on-disk formats, generated corpora in the real layouts): the real code paths run and write
schema-valid records, including Prismatic's patch layout and Ultravox's multi-chunk audio
(one clip is longer than 30 s). Numbers mean nothing here. Also: each plugin's `loss`
against a forward pass built by hand from its `score_parts`."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from mch.manager import get_registry
from mch.runner import RunConfig, run_bench, text_plan

ANALYSES = ["probe", "gmi", "ablation", "swap", "gradient", "lora"]
CAUSAL = ["ablation", "swap", "gradient"]
SPEECH = ("qwen2audio", "ultravox")
MODELS = ("llava", "prismatic_dinov2", "prismatic_siglip", "qwen2audio", "ultravox")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mch.plugins.attributes import synth
    from mch.plugins.models import tiny

    root = tmp_path_factory.mktemp("tiny")
    ck = {
        "llava": tiny.make_tiny_llava(root / "llava"),
        "prismatic_dinov2": tiny.make_tiny_prismatic_dinov2(root / "dinov2"),
        "prismatic_siglip": tiny.make_tiny_prismatic_siglip(root / "siglip"),
        "qwen2audio": tiny.make_tiny_qwen2audio(root / "qwen2audio"),
        "ultravox": tiny.make_tiny_ultravox(root / "ultravox"),
        # the paper protocol's separate text-only models (registry text_baseline)
        "llama": tiny.make_tiny_llama(root / "llama"),
        "vicuna": tiny.make_tiny_vicuna(root / "vicuna"),
    }
    coco = synth.make("coco", root / "coco", images=40)
    crema = synth.make("cremad", root / "crema", actors=4, sentences=2, engine="numpy")
    # one clip longer than 30 s: Ultravox cuts it into two chunks (Qwen2-Audio truncates it)
    wavs = sorted((crema / "AudioWAV").glob("*.wav"))
    with wave.open(str(wavs[0])) as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    reps = int(np.ceil(31 * params.framerate / params.nframes))
    with wave.open(str(wavs[0]), "wb") as w:
        w.setparams(params)
        w.writeframes(frames * reps)
    return {"ck": ck, "coco": coco, "crema": crema, "root": root}


def config(world, model: str, analyses, out: Path, protocol: str = "default") -> RunConfig:
    speech = model in SPEECH
    attr = "emotion" if speech else "super_category"
    params = {
        "probe": {"n_splits": 3, "n_bootstrap": 50, "min_samples": 8},
        "gmi": {"n_bootstrap": 50},
        "ablation": {"n_samples": 6, "batch_size": 3, "n_boot": 50},
        "swap": {"n_samples": 6, "batch_size": 3, "n_boot": 50, "attribute": "speaker" if speech else attr},
        "gradient": {"n_samples": 6, "batch_size": 3, "n_boot": 50},
        "lora": {"attribute": attr, "max_epochs": 1, "batch_size": 4, "lr": 1e-3, "save_every": 0},
    }
    text = get_registry().get("model", model).text_baseline
    return RunConfig(
        model=model,
        checkpoint=str(world["ck"][model]),
        dataset="cremad" if speech else "coco",
        data_path=str(world["crema"] if speech else world["coco"]),
        analyses=analyses,
        limit=40,
        batch_size=4,
        protocol=protocol,
        params=params,
        out_dir=out / "results",
        store=out / "store",
        text_checkpoint=str(world["ck"][text]),
    )


def check_records(written, analyses):
    names = [rec["analysis"]["name"] for _, rec in written]
    assert names == list(analyses)
    for path, rec in written:
        assert path.exists() and rec["metrics"], rec["analysis"]["name"]
        assert any(m["value"] is not None for m in rec["metrics"])


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_every_analysis_runs_on_each_tiny_checkpoint(world, model, tmp_path):
    plan, written = run_bench(config(world, model, ANALYSES, tmp_path))
    check_records(written, ANALYSES)
    lora = [r for _, r in written if r["analysis"]["name"] == "lora"][0]
    tuned = [json.loads(f.read_text()) for f in (tmp_path / "results").glob("*.json")]
    assert {r["analysis"]["name"] for r in tuned if r["model"]["adapter"]} == {"probe", "gmi"}
    assert Path(lora["summary"]["adapter"], "adapter_model.safetensors").exists()
    if model == "ultravox":  # the long clip really went through as two chunks
        long = [s for s in plan.samples if s.media[0].size > 30 * s.media[1]]
        assert long and plan.plugin.prepare(long[:1], "default").info["n_chunks"] == [2]


@pytest.mark.parametrize("model", ["prismatic_dinov2", "ultravox"])
def test_causal_tests_run_on_patch_layout_and_chunked_audio(world, model, tmp_path):
    """The fast variant: the causal tests under both protocols on the two layouts a decoder
    input can have that differ most from the toy's (patches after BOS; audio in chunks)."""
    for protocol in ("default", "paper"):
        plan, written = run_bench(config(world, model, CAUSAL, tmp_path / protocol, protocol))
        check_records(written, CAUSAL)
        # the text baseline: the model's own text view (default), the separate text-only model (paper)
        want = get_registry().get("model", model).text_baseline if protocol == "paper" else model
        assert text_plan(plan).model_spec.name == want
    if model == "ultravox":  # the long clip was among the samples, as two chunks
        long = [s for s in plan.samples if s.media[0].size > 30 * s.media[1]]
        assert long and plan.plugin.prepare(long[:1], "default").info["n_chunks"] == [2]


@pytest.mark.parametrize("model", MODELS)
def test_loss_matches_a_forward_pass_built_by_hand(world, model):
    """plugin.loss (default): its targets are the paired text's tokens, and its value is the
    cross-entropy of the LM run by hand on the plugin's scoring prefix (media merged in) plus
    those tokens, read at the positions that predict them (for Prismatic: after BOS and the
    patches)."""
    from mch.api import load_entry
    from mch.manager import get_registry

    spec = get_registry().get("model", model)
    plugin = load_entry(spec.entry)(spec, checkpoint=str(world["ck"][model]))
    plugin.load()
    speech = model in SPEECH
    dspec = get_registry().get("dataset", "cremad" if speech else "coco")
    ds = load_entry(dspec.entry)(dspec, path=str(world["crema"] if speech else world["coco"]))
    samples = [s for s in ds.samples(None, 40, 0, "default") if s.text]
    samples = sorted(samples, key=lambda s: -s.media[0].size)[:3] if speech else samples[:3]
    with torch.no_grad():
        terms = plugin.loss_terms(samples, "default")
        loss = plugin.loss(samples, "default")
        parts = plugin.score_parts(samples, "", ["x"], "default")
        for i, s in enumerate(samples):
            tgt = terms.targets[i][terms.valid[i]].cpu()
            assert plugin.tokenizer.decode(tgt.tolist()).strip() == s.text.strip()
            emb = parts.lm.get_input_embeddings()(tgt).to(parts.prefixes[i].dtype)
            x = torch.cat([parts.prefixes[i], emb])[None]
            logits = parts.lm(inputs_embeds=x).logits[0].float()
            P = parts.prefixes[i].shape[0]
            manual = torch.nn.functional.cross_entropy(logits[P - 1 : P - 1 + len(tgt)], tgt)
            assert torch.allclose(loss[i], manual, rtol=1e-4, atol=1e-5), (model, i, float(loss[i]), float(manual))


def test_paper_text_baseline_without_its_checkpoint_says_what_to_pass(world, tmp_path, monkeypatch):
    """Offline, the paper protocol's text-only model (Llama-3.1-8B base for ultravox) is not in
    the cache: one sentence naming --text-checkpoint, after the modal extraction."""
    from mch.api import MchError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MCH_ALLOW_DOWNLOAD", raising=False)
    cfg = config(world, "ultravox", ["modes"], tmp_path, "paper")
    cfg.text_checkpoint = None
    with pytest.raises(MchError, match="text baseline.*meta-llama/Llama-3.1-8B.*--text-checkpoint"):
        run_bench(cfg)
