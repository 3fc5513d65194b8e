"""Qwen2-Audio plugin on a tiny checkpoint in the Qwen2-Audio-7B-Instruct release format (built here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mch.api import MchError, ModelSpec, Sample
from mch.capture import capture
from mch.plugins.models.qwen2audio import Qwen2Audio, audio_tokens
from mch.plugins.models.tiny import make_tiny_qwen2audio
from mch.testing import assert_model_plugin_contract, make_lora_adapter, tiny_samples

SPEC = ModelSpec(
    name="qwen2audio",
    entry="mch.plugins.models.qwen2audio:Qwen2Audio",
    modality="speech",
    checkpoint="Qwen/Qwen2-Audio-7B-Instruct",
)
PAPER_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nDescribe this audio.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory):
    return make_tiny_qwen2audio(tmp_path_factory.mktemp("tiny_qwen2audio"))


@pytest.fixture(scope="module")
def plugin(ckpt):
    p = Qwen2Audio(SPEC, checkpoint=str(ckpt))
    p.load()
    return p


@pytest.fixture(scope="module")
def samples():
    return tiny_samples("speech", 3)  # 0.3 s and 0.67 s at 16 kHz, 1.04 s at 22.05 kHz


def _tone(seconds: float, sr: int, f: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)


def test_release_layout(ckpt, plugin):
    fe = json.loads((ckpt / "preprocessor_config.json").read_text())
    assert fe["feature_extractor_type"] == "WhisperFeatureExtractor" and fe["feature_size"] == 128
    assert plugin.sampling_rate == 16000


def test_contract(plugin, samples):
    report = assert_model_plugin_contract(plugin, samples=samples)
    assert report.widths["modal"]["encoder"] == 32 and report.widths["modal"]["adapter"] == 64
    assert report.max_batch_diff <= 1e-5


def test_paper_prompt_renders_byte_for_byte(plugin, samples):
    assert plugin.render_prompt("paper")[0] == PAPER_PROMPT
    prep = plugin.prepare(samples[:1], "paper")
    n = prep.info["n_audio_tokens"][0]
    expanded = PAPER_PROMPT.replace("<|AUDIO|>", "<|AUDIO|>" * n)
    assert prep.inputs["input_ids"][0].tolist() == plugin.tokenizer(expanded)["input_ids"]  # no BOS
    text, span = plugin.render_prompt("default", "text", "it is eleven")
    assert text == PAPER_PROMPT.replace("<|AUDIO|>", "it is eleven") and text[span[0] : span[1]] == "it is eleven"


def test_every_clip_is_padded_to_30s_and_only_real_frames_reach_the_llm(plugin):
    clips = [
        Sample("a", "", {}, {}, _media=(_tone(1.0, 16000), 16000)),
        Sample("b", "", {}, {}, _media=(_tone(2.5, 16000), 16000)),
    ]
    prep = plugin.prepare(clips, "default")
    assert tuple(prep.inputs["input_features"].shape) == (2, 128, 3000)
    real = prep.inputs["feature_attention_mask"].sum(1).tolist()
    n = [audio_tokens(L) for L in real]
    assert n == [25, 62] == prep.info["n_audio_tokens"]  # about 25 tokens per second
    assert (prep.inputs["input_ids"].cpu() == plugin.audio_token_id).sum(1).tolist() == n
    enc = prep.pools["encoder"].masks
    assert enc["all"].shape == (2, 750) and enc["modality"].sum(1).tolist() == n
    assert enc["modality"][0, :25].all() and not enc["modality"][0, 25:].any()

    # default pools the real rows only; the paper's `all` pools all 750, padding included
    seen = {}
    tower = plugin.module.model.audio_tower.layer_norm
    h = tower.register_forward_hook(lambda m, a, out: seen.__setitem__("x", out.detach()))
    try:
        mod = capture(plugin, prep, ["encoder", "adapter"], "modality")
        alls = capture(plugin, prep, ["encoder"], "all")
    finally:
        h.remove()
    x = seen["x"]
    for i, k in enumerate(n):
        torch.testing.assert_close(mod["encoder"][i], x[i, :k].mean(0), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(alls["encoder"][i], x[i].mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mod["encoder"], alls["encoder"], atol=1e-3)
    # the projector rows the LLM receives are exactly the scattered decoder inputs
    from mch.plugins.models._hf_common import decoder_inputs

    with torch.inference_mode():
        emb = decoder_inputs(plugin.inner(), plugin.decoder(), prep.inputs)
        proj = plugin.module.model.multi_modal_projector(x)
    audio = prep.pools["llm"].masks["modality"]
    for i, k in enumerate(n):
        torch.testing.assert_close(emb[i][audio[i]], proj[i, :k], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mod["adapter"][i], proj[i, :k].mean(0), atol=1e-5, rtol=1e-5)


def test_audio_is_resampled_to_16k(plugin):
    wav44 = _tone(1.0, 44100, 330.0)
    from scipy.signal import resample_poly

    a = plugin.prepare([Sample("x", "", {}, {}, _media=(wav44, 44100))], "default")
    b = plugin.prepare(
        [Sample("x", "", {}, {}, _media=(resample_poly(wav44, 160, 441).astype(np.float32), 16000))], "default"
    )
    assert a.info["n_audio_tokens"] == [25]
    torch.testing.assert_close(a.inputs["input_features"], b.inputs["input_features"])


def test_audio_over_30s_is_truncated_like_the_processor(plugin):
    prep = plugin.prepare([Sample("long", "", {}, {}, _media=(_tone(31.0, 16000), 16000))], "default")
    assert prep.info["n_audio_tokens"] == [750]


def _manual_logp(plugin, sample, prompt, cont_ids, view):
    if view == "modal":
        wav, sr = sample.media
        from mch.plugins.models._hf_common import resample

        enc = plugin.processor(text=prompt, audio=resample(wav, sr, 16000), sampling_rate=16000, return_tensors="pt")
        ids = torch.cat([enc["input_ids"], torch.tensor([cont_ids])], 1)
        kw = {"input_features": enc["input_features"], "feature_attention_mask": enc["feature_attention_mask"]}
    else:
        ids = torch.tensor([plugin.tokenizer(prompt)["input_ids"] + cont_ids])
        kw = {}
    with torch.inference_mode():
        logits = plugin.module(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    n = len(cont_ids)
    return float(lp[torch.arange(ids.shape[1] - n - 1, ids.shape[1] - 1), ids[0, -n:]].sum())


@pytest.mark.parametrize("view", ["modal", "text"])
def test_score_matches_a_manual_forward_pass(plugin, samples, view):
    query, conts = "The speaker sounds", ["happy", "very sad"]
    sc = plugin.score(samples[:2], query, conts, "default", view)
    assert sc.logp.shape == (2, 2)
    tok = plugin.tokenizer
    for i, s in enumerate(samples[:2]):
        prompt = plugin.render_prompt("default", view, s.text, query)[0]
        for k, c in enumerate(conts):
            full = tok(prompt + " " + c, add_special_tokens=False)["input_ids"]
            cont_ids = full[len(tok(prompt, add_special_tokens=False)["input_ids"]) :]
            assert len(cont_ids) == sc.n_tokens[k]
            assert abs(_manual_logp(plugin, s, prompt, cont_ids, view) - sc.logp[i, k]) < 1e-4


def test_loss_terms_target_the_transcript(plugin, samples):
    lt = plugin.loss_terms(samples, "default")
    for i, s in enumerate(samples):
        assert plugin.tokenizer.decode(lt.targets[i][lt.valid[i]].tolist()) == s.text
    paper = plugin.loss_terms(samples[:1], "paper")
    assert torch.equal(paper.targets, plugin.prepare(samples[:1], "paper").inputs["input_ids"][:, 1:])


def test_too_short_clip_is_a_sample_error(plugin):
    from mch.api import SampleError

    with pytest.raises(SampleError):
        plugin.prepare([Sample("tiny", "", {}, {}, _media=(_tone(0.02, 16000), 16000))], "default")


def test_missing_checkpoint_is_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(MchError) as err:
        Qwen2Audio(SPEC).load()
    msg = str(err.value)
    assert "Qwen/Qwen2-Audio-7B-Instruct" in msg and "--checkpoint" in msg and "\n" not in msg


def test_lora_adapter_merges_and_a_mismatched_one_is_refused(ckpt, plugin, tmp_path):
    adapter, expected = make_lora_adapter(plugin.module.model.language_model, tmp_path / "lora")
    tuned = Qwen2Audio(SPEC, checkpoint=str(ckpt), adapter=str(adapter))
    tuned.load()
    state = tuned.module.model.language_model.state_dict()
    for k, w in expected.items():
        torch.testing.assert_close(state[k], w)
    tuned.validate_stage_map("modal")
    # same key names, other shapes (an adapter for a wider LLM)
    from transformers import Qwen2Config, Qwen2Model

    other = Qwen2Model(
        Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            vocab_size=64,
        )
    )
    wrong, _ = make_lora_adapter(other, tmp_path / "wrong")
    with pytest.raises(MchError, match="adapter"):
        Qwen2Audio(SPEC, checkpoint=str(ckpt), adapter=str(wrong)).load()


def test_end_to_end_through_the_runner_and_cli(ckpt, tmp_path, monkeypatch):
    """`mch extract`/`mch bench` on the tiny checkpoint and the offline CREMA-D-layout corpus."""

    from bench_runs import bench_probe

    from mch.runner import RunConfig, extract, plan

    monkeypatch.setenv("MCH_DATA", str(tmp_path / "data"))
    cfg = RunConfig(
        model="qwen2audio",
        checkpoint=str(ckpt),
        dataset="synth-cremad",
        limit=4,
        batch_size=4,
        store=tmp_path / "store",
        out_dir=tmp_path / "results",
    )
    p = plan(cfg)
    reps, rows = extract(p, "modal").read()
    assert len(rows) == 4 and reps["encoder"].shape == (4, 32) and reps["llm.final"].shape == (4, 64)
    assert np.isfinite(np.asarray(reps["adapter"])).all()
    assert bench_probe("qwen2audio", ckpt, "synth-cremad", 12, tmp_path)
