"""The Ultravox plugin on tiny checkpoints built here in the release's on-disk format."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mch.api import MchError, ModelSpec, Sample, SampleError
from mch.capture import capture
from mch.model import resolve_module
from mch.plugins.models.tiny import LLAMA31_CHAT_TEMPLATE, make_tiny_ultravox
from mch.plugins.models.ultravox import Ultravox

# extraction-and-labels.md §3.1: the stock Llama-3.1-Instruct template around a bare <|audio|> turn
PAPER_PROMPT = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<|audio|><|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
DEFAULT_PROMPT = PAPER_PROMPT.replace("<|audio|>", "Describe this audio.\n\n<|audio|>")

LENGTHS = [11201, 20801, 32000]  # 71, 131 and 200 mel frames (odd lengths exercise the conv edge)
TEXTS = ["the quick brown fox", "it's eleven o'clock", "don't forget a jacket"]


def spec(checkpoint) -> ModelSpec:
    return ModelSpec(
        name="ultravox", entry="mch.plugins.models.ultravox:Ultravox", modality="speech", checkpoint=str(checkpoint)
    )


def load(checkpoint, **kw) -> Ultravox:
    m = Ultravox(spec(checkpoint), **kw)
    m.load()
    return m


def clip(n: int, seed: int, sr: int = 16000) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    wave = 0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) + 0.05 * rng.standard_normal(n)
    return wave.astype(np.float32), sr


def sample(i: int, n: int, text: str = "", sr: int = 16000) -> Sample:
    return Sample(f"s{i}", text, {}, {}, _media=clip(n, i, sr))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny ops: a second thread only spins (5x the CPU time on the shared 2-core machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ultravox")
    return {
        "split": make_tiny_ultravox(root / "split", layout="split"),
        "full": make_tiny_ultravox(root / "full", layout="full"),
        "root": root,
    }


@pytest.fixture(scope="session")
def model(ckpts) -> Ultravox:
    return load(ckpts["split"])


@pytest.fixture(scope="session")
def samples():
    return [sample(i, n, t) for i, (n, t) in enumerate(zip(LENGTHS, TEXTS, strict=True))]


def n_tokens(n_samples: int) -> int:
    return math.ceil(math.ceil(n_samples / 160) / 16)


# --------------------------------------------------------------------------- stages and spans


@pytest.mark.parametrize("view", ["modal", "text"])
def test_every_stage_fires_once_with_its_width(model, samples, view):
    counts, widths = {}, {}
    handles = []
    for stage, path in model.stage_map(view).items():

        def hook(_m, _a, out, stage=stage):
            h = out[0] if isinstance(out, tuple) else out
            counts[stage] = counts.get(stage, 0) + 1
            widths[stage] = h.shape[-1]

        handles.append(resolve_module(model.module, path).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            model.forward(model.prepare(samples, "default", view))
    finally:
        for h in handles:
            h.remove()
    expected = {s: 64 for s in model.stage_map(view)}
    if view == "modal":
        expected["encoder"] = 32
        assert set(model.stages("modal")) == {"encoder", "adapter", "llm.0", "llm.1", "llm.final"}
    assert counts == {s: 1 for s in expected}
    assert widths == expected
    pooled = capture(model, model.prepare(samples, "default", view), model.stages(view), "modality", view)
    assert {s: tuple(v.shape) for s, v in pooled.items()} == {s: (3, d) for s, d in expected.items()}


def test_modality_span_is_exactly_where_the_audio_goes(model, samples):
    p = model.prepare(samples, "default")
    mask = p.pools["llm"].masks["modality"]
    seen = {}
    lm = model.module.language_model.model
    h = lm.register_forward_pre_hook(lambda _m, _a, kw: seen.update(emb=kw["inputs_embeds"]), with_kwargs=True)
    try:
        with torch.inference_mode():
            model.forward(p)
    finally:
        h.remove()
    plain = lm.embed_tokens(p.inputs["input_ids"])
    written = (seen["emb"] != plain).any(-1)
    assert torch.equal(written, mask)
    ids = p.inputs["input_ids"]
    n_prefix = len(model.tokenizer(DEFAULT_PROMPT.split("<|audio|>")[0], add_special_tokens=False)["input_ids"])
    for i in range(len(samples)):
        pos = torch.nonzero(mask[i]).flatten().tolist()
        assert pos == list(range(n_prefix, n_prefix + n_tokens(LENGTHS[i])))
        real = ids[i][p.inputs["attention_mask"][i].bool()].tolist()
        text = model.tokenizer.decode([t for j, t in enumerate(real) if j not in set(pos)])
        assert text == DEFAULT_PROMPT.replace("<|audio|>", "")
        enc = p.pools["encoder"].masks["modality"][i]
        assert int(enc.sum()) == math.ceil(math.ceil(LENGTHS[i] / 160) / 2)
        assert int(p.pools["adapter"].masks["modality"][i].sum()) == n_tokens(LENGTHS[i])
    assert torch.equal(p.pools["llm"].masks["text"], p.pools["llm"].masks["all"] & ~mask)


def test_text_view_spans_the_text_tokens(model, samples):
    p = model.prepare(samples, "default", "text")
    for i, s in enumerate(samples):
        ids = p.inputs["input_ids"][i]
        assert model.tokenizer.decode(ids[p.pools["llm"].masks["modality"][i]].tolist()) == s.text
        n = int(p.inputs["attention_mask"][i].sum())
        assert model.tokenizer.decode(ids[:n].tolist()) == DEFAULT_PROMPT.replace("<|audio|>", s.text)
    assert p.pools["adapter"] is p.pools["llm"]
    q = model.prepare(samples, "paper", "text")
    for i, s in enumerate(samples):
        n = int(q.inputs["attention_mask"][i].sum())
        assert q.inputs["input_ids"][i, 0] == model.tokenizer.bos_token_id
        assert model.tokenizer.decode(q.inputs["input_ids"][i, 1:n].tolist()) == s.text
    with pytest.raises(SampleError):
        model.prepare([Sample("x", "", {}, {}, _media=clip(4000, 0))], "default", "text")


@pytest.mark.parametrize(
    "span,protocol",
    [("modality", "default"), ("all", "default"), ("text", "default"), ("last", "default"), ("all", "paper")],
)
def test_pooled_vectors_do_not_depend_on_batch_or_padding(model, samples, span, protocol):
    stages = model.stages("modal")
    batch = capture(model, model.prepare(samples, protocol), stages, span)
    flipped = capture(model, model.prepare(samples[::-1], protocol), stages, span)
    for i, s in enumerate(samples):
        alone = capture(model, model.prepare([s], protocol), stages, span)
        for st in stages:
            torch.testing.assert_close(batch[st][i], alone[st][0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(flipped[st][len(samples) - 1 - i], alone[st][0], atol=1e-5, rtol=1e-5)


def test_text_view_pooling_does_not_depend_on_batch(model, samples):
    stages = model.stages("text")
    batch = capture(model, model.prepare(samples, "default", "text"), stages, "modality", "text")
    for i, s in enumerate(samples):
        alone = capture(model, model.prepare([s], "default", "text"), stages, "modality", "text")
        for st in stages:
            torch.testing.assert_close(batch[st][i], alone[st][0], atol=1e-5, rtol=1e-5)


def test_contract(model):
    from mch.testing import assert_model_plugin_contract, tiny_samples

    report = assert_model_plugin_contract(model, samples=tiny_samples("speech", n=3))
    assert report.views == ["modal", "text"]
    assert report.widths["modal"]["encoder"] == 32 and report.widths["modal"]["llm.final"] == 64
    assert report.max_batch_diff < 1e-5


# --------------------------------------------------------------------------- prompts


def test_paper_prompt_renders_byte_for_byte(model, samples):
    assert model.tokenizer.chat_template == LLAMA31_CHAT_TEMPLATE
    assert model.render_prompt("paper") == PAPER_PROMPT
    assert model.render_prompt("default") == DEFAULT_PROMPT
    p = model.prepare(samples[:1], "paper")
    ids = p.inputs["input_ids"][0].tolist()
    mask = p.pools["llm"].masks["modality"][0].tolist()
    assert all(t == model.tokenizer.eos_token_id for t, m in zip(ids, mask, strict=True) if m)
    start = mask.index(True)
    rest = (
        ids[:start]
        + model.tokenizer("<|audio|>", add_special_tokens=False)["input_ids"]
        + [t for t, m in zip(ids[start:], mask[start:], strict=True) if not m]
    )
    assert model.tokenizer.decode(rest) == PAPER_PROMPT
    # paper: every position, BOS and template included; one sample per forward in the reference
    assert torch.equal(p.pools["llm"].masks["all"], torch.ones_like(p.pools["llm"].masks["all"]))


# --------------------------------------------------------------------------- long audio


def release_chunk(
    model: Ultravox, mel: torch.Tensor, real: int, block: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One audio chunk through the released Ultravox code path, written out from fixie-ai/ultravox
    (`UltravoxProcessor._chunk_and_pad_audio`, `ModifiedWhisperEncoder.forward` with
    `init_latency_mask`, `UltravoxProjector`, `_prepare_audio_embeds`): the chunk as the processor
    hands it over (a continuation chunk zero-padded to 3000 frames), both convolutions over every
    frame, an additive mask on keys past the real length merged by torch.minimum with the
    streaming mask (a block-lower-triangular matrix over the 3000-long context, sliced), the
    projector over every encoder frame, then the first ceil(real / 16) tokens.
    Returns (encoder frames the LLM's tokens come from, the tokens the LLM receives)."""
    tower, proj = model.module.audio_tower, model.module.multi_modal_projector
    x = F.gelu(tower.conv2(F.gelu(tower.conv1(mel[None])))).permute(0, 2, 1)
    h = x + tower.embed_positions.weight[: x.shape[1]]
    T, n, lo = h.shape[1], (real - 1) // 2 + 1, torch.finfo(h.dtype).min
    mask = torch.zeros(1, 1, 1, T)
    mask[..., n:] = lo
    if block is not None:
        nb = 3000 // block
        stream = torch.tril(torch.ones(nb, nb)).repeat_interleave(block, 0).repeat_interleave(block, 1)
        mask = torch.minimum(((1.0 - stream) * lo)[None, None, :T, :T], mask)
    for layer in tower.layers:
        h = layer(h, mask)
    enc = tower.layer_norm(h)[0]
    return enc[:n], proj(enc[None])[0][: -(-real // 16)]


def release_clip(model: Ultravox, wave: np.ndarray, block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole clip at batch 1 as the release runs it: (encoder frames, LLM audio tokens), all chunks."""
    feats = torch.from_numpy(model._features(wave))
    encs, toks = [], []
    with torch.inference_mode():
        for off in range(0, feats.shape[1], 3000):
            mel = feats[:, off : off + 3000]
            real = mel.shape[1]
            if off > 0:  # the release pads continuation chunks (only) to the context size
                mel = F.pad(mel, (0, 3000 - real))
            e, t = release_chunk(model, mel, real, block)
            encs.append(e)
            toks.append(t)
    return torch.cat(encs), torch.cat(toks)


def llm_audio_input(model: Ultravox, samples: list[Sample], protocol: str) -> list[torch.Tensor]:
    """What the plugin writes into the LLM's input at each sample's audio slots."""
    p = model.prepare(samples, protocol)
    with torch.inference_mode():
        emb = model.module.embed(**p.inputs)
    mask = p.pools["llm"].masks["modality"]
    return [emb[i][mask[i]] for i in range(len(samples))]


def test_long_audio_default_pools_all_chunks_paper_keeps_chunk_one(model):
    n = 35 * 16000  # 3500 mel frames: a 3000-frame chunk and a 500-frame one
    s = sample(7, n)
    d = model.prepare([s], "default")
    assert d.pools["encoder"].owner.tolist() == [0, 0]
    assert int(d.pools["llm"].masks["modality"].sum()) == 188 + 32
    assert d.info["n_chunks"] == [2]
    pooled_d = capture(model, d, ["encoder", "adapter"], "modality")
    p = model.prepare([s], "paper")
    assert int(p.pools["llm"].masks["modality"].sum()) == 188 + 32  # the LLM sees both chunks
    pooled_p = capture(model, p, ["encoder", "adapter", "llm.final"], "all")

    enc, toks = release_clip(model, clip(n, 7)[0])
    assert enc.shape[0] == 1500 + 250 and toks.shape[0] == 188 + 32
    # paper (§7 item 11): chunk 1 only
    torch.testing.assert_close(pooled_p["encoder"][0], enc[:1500].mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_p["adapter"][0], toks[:188].mean(0), atol=1e-5, rtol=1e-5)
    # default: every real frame and token of both chunks, computed as the release computes them
    torch.testing.assert_close(pooled_d["encoder"][0], enc.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled_d["adapter"][0], toks.mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(pooled_d["encoder"][0], pooled_p["encoder"][0], atol=1e-3)
    # a long clip batched with a short one keeps its numbers
    both = capture(model, model.prepare([sample(1, 20801), s], "default"), ["encoder", "adapter"], "modality")
    torch.testing.assert_close(both["encoder"][1], pooled_d["encoder"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both["adapter"][1], pooled_d["adapter"][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seconds", [35.0, 30.1, 67.3])
def test_llm_receives_the_released_models_audio_tokens(model, seconds):
    """Under both protocols the decoder input at the audio slots is the release's, also for the
    continuation chunks of clips over 30 s (which the release runs zero-padded to 30 s: its last
    token stacks encoder outputs at padded positions), whatever the clip is batched with."""
    n = int(seconds * 16000)
    s, short = sample(9, n), sample(2, 11201)
    _, want = release_clip(model, s.media[0])
    _, want_short = release_clip(model, short.media[0])
    for protocol in ("default", "paper"):
        (alone,) = llm_audio_input(model, [s], protocol)
        batched = llm_audio_input(model, [short, s], protocol)
        torch.testing.assert_close(alone, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[1], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched[0], want_short, atol=1e-5, rtol=1e-5)
    # the padded positions matter: the continuation chunk run unpadded gives other tokens
    feats = torch.from_numpy(model._features(s.media[0]))
    real = feats.shape[1] - 3000 * ((feats.shape[1] - 1) // 3000)  # the last chunk's real frames
    with torch.inference_mode():
        _, unpadded = release_chunk(model, feats[:, -real:], real)
    assert not torch.allclose(unpadded, want[-unpadded.shape[0] :], atol=1e-3)


def with_config(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize("block", [100, 250])
def test_audio_latency_block_size_applies_the_release_streaming_mask(ckpts, model, tmp_path, block):
    m = load(with_config(ckpts["full"], tmp_path / "uv", audio_latency_block_size=block))
    s = [sample(3, 35 * 16000), sample(4, 12 * 16000 + 37)]
    got = llm_audio_input(m, s, "default")
    plain = llm_audio_input(model, s, "default")
    for i, x in enumerate(s):
        enc, want = release_clip(m, x.media[0], block)
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got[i], plain[i], atol=1e-3)  # the mask changes what the LLM receives
        pooled = capture(m, m.prepare([x], "default"), ["encoder"], "modality")
        torch.testing.assert_close(pooled["encoder"][0], enc.mean(0), atol=1e-5, rtol=1e-5)


def test_fidelity_notes_say_what_the_records_rest_on(ckpts, model, tmp_path):
    assert "batch 1" in model.fidelity("default")[0] and len(model.fidelity("default")) == 1
    assert any("first chunk only" in n for n in model.fidelity("paper"))
    m = Ultravox(spec(with_config(ckpts["full"], tmp_path / "uv", audio_latency_block_size=100)))
    assert any("audio_latency_block_size 100" in n for n in m.fidelity("default"))  # known before loading


@pytest.mark.parametrize("value", [0, -100, 7, "100", True, 1.5])
def test_an_impossible_audio_latency_block_size_is_one_sentence(ckpts, tmp_path, value):
    d = with_config(ckpts["full"], tmp_path / "uv", audio_latency_block_size=value)
    with pytest.raises(MchError, match=r"audio_latency_block_size to .* divides 3000"):
        load(d)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "cannot be read as JSON"),
        ("[1, 2]", "holds a JSON list, not an object"),
        (None, "malformed projector setting"),
        ("act", "cannot be built"),
    ],
)
def test_malformed_config_json_is_one_sentence(ckpts, tmp_path, text, match):
    d = tmp_path / "uv"
    if text is None:
        with_config(ckpts["full"], d, stack_factor="eight")
    elif text == "act":
        with_config(ckpts["full"], d, projector_act="no-such-activation")
    else:
        shutil.copytree(ckpts["full"], d)
        (d / "config.json").write_text(text)
    with pytest.raises(MchError, match=match) as err:
        load(d)
    assert "\n" not in str(err.value)


def test_malformed_config_json_from_the_cli_is_rc_2_without_traceback(ckpts, tmp_path):
    from conftest import run_mch

    d = tmp_path / "uv"
    shutil.copytree(ckpts["full"], d)
    (d / "config.json").write_text('{"model_type": "ultravox", ')
    from mch.plugins.attributes import synth

    data = synth.make("cremad", tmp_path / "cremad", actors=1, sentences=1)
    res = run_mch(
        "extract",
        "--model",
        "ultravox",
        "--checkpoint",
        str(d),
        "--dataset",
        "cremad",
        "--data-path",
        str(data),
        "--limit",
        "2",
    )
    out = res.stdout + res.stderr
    assert res.returncode == 2, out
    assert "Traceback" not in out and "cannot be read as JSON" in out


def test_release_auto_map_never_prompts_nor_runs_checkpoint_code(ckpts, tmp_path, monkeypatch):
    """The release's config.json names its remote code in `auto_map`; transformers asks on stdin
    whether to run it unless told. mch never asks, and runs it only with --trust-remote-code."""
    import builtins

    d = with_config(
        ckpts["full"],
        tmp_path / "uv",
        auto_map={
            "AutoConfig": "ultravox_config.UltravoxConfig",
            "AutoModel": "ultravox_model.UltravoxModel",
            "AutoProcessor": "ultravox_processing.UltravoxProcessor",
        },
    )
    marker = tmp_path / "ran"
    for mod in ("ultravox_config", "ultravox_model", "ultravox_processing"):
        (d / f"{mod}.py").write_text(f"open({str(marker)!r}, 'a').write({mod!r})\n")

    asked = []  # transformers swallows an exception raised here, so record the question and say no
    monkeypatch.setattr(builtins, "input", lambda *a, **_k: asked.append(a) or "n")
    m = load(d)
    assert asked == [] and not marker.exists()
    assert m.tokenizer.eos_token == "<|eot_id|>"


def test_resamples_to_16khz(model):
    s = sample(3, 44100, sr=44100)  # 1 s at 44.1 kHz
    p = model.prepare([s], "default")
    assert int(p.pools["llm"].masks["modality"].sum()) == n_tokens(16000)
    with pytest.raises(SampleError):
        model.prepare([Sample("bad", "", {}, {}, _media=np.zeros((10, 16), np.float32))], "default")


# --------------------------------------------------------------------------- scoring


def manual_logp(model: Ultravox, s: Sample, query: str, cont: list[int], view: str) -> float:
    """The full sequence through the HF causal LM, log-softmax, gather."""
    tok, m = model.tokenizer, model.module
    before, after = DEFAULT_PROMPT.split("<|audio|>")
    pre = tok(before, add_special_tokens=False)["input_ids"]
    post = tok(after + query, add_special_tokens=False)["input_ids"]
    emb = m.language_model.get_input_embeddings()
    with torch.inference_mode():
        if view == "text":
            mid = emb(torch.tensor(tok(s.text, add_special_tokens=False)["input_ids"]))
        else:  # the clip alone through the tower (batch 1, unpadded), then the projector
            feats = torch.from_numpy(model._features(s.media[0]))[None]
            mid = m.multi_modal_projector(m.audio_tower(feats).last_hidden_state)[0]
        x = torch.cat([emb(torch.tensor(pre)), mid, emb(torch.tensor(post + cont))])[None]
        logits = m.language_model(inputs_embeds=x).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    P = x.shape[1] - len(cont)
    return float(sum(logp[P - 1 + j, t] for j, t in enumerate(cont)))


@pytest.mark.parametrize("view", ["modal", "text"])
def test_score_agrees_with_a_manual_forward_pass(model, samples, view):
    query, conts = "The speaker sounds", ["angry", "happy", "calm or surprised"]
    sc = model.score(samples, query, conts, "default", view)
    assert sc.logp.shape == (3, 3)
    ids = model.continuation_ids(conts)
    assert len(ids[2]) > 1
    assert sc.n_tokens.tolist() == [len(c) for c in ids]
    for i, s in enumerate(samples):
        for k, c in enumerate(ids):
            assert sc.logp[i, k] == pytest.approx(manual_logp(model, s, query, c, view), abs=1e-4)


# --------------------------------------------------------------------------- checkpoints


def test_split_and_full_layouts_load_the_same_model(ckpts, model, samples):
    full = load(ckpts["full"])
    stages = model.stages("modal")
    a = capture(model, model.prepare(samples, "default"), stages, "modality")
    b = capture(full, full.prepare(samples, "default"), stages, "modality")
    for st in stages:
        torch.testing.assert_close(a[st], b[st], atol=1e-6, rtol=1e-6)


def test_v04_projector_has_rmsnorm_after_the_second_linear(ckpts, samples):
    from safetensors.torch import load_file

    d = make_tiny_ultravox(ckpts["root"] / "v04", layout="full", projector_ln_mid=False)
    m = load(d)
    proj = m.module.multi_modal_projector
    assert isinstance(proj.ln_mid, torch.nn.Identity)
    w = load_file(str(d / "model.safetensors"))["multi_modal_projector.ln_post.weight"]
    torch.testing.assert_close(proj.ln_post.weight.detach(), w)
    out = capture(m, m.prepare(samples[:1], "default"), ["adapter"], "modality")
    assert out["adapter"].shape == (1, 64)


def test_missing_checkpoint_is_one_clear_error(ckpts, tmp_path, monkeypatch):
    with pytest.raises(MchError, match="does not exist"):
        load(tmp_path / "nowhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MchError, match="local Hugging Face cache"):
        load("fixie-ai/ultravox-v0_6-llama-3_1-8b")
    # the base LLM the config names is missing
    d = tmp_path / "uv"
    shutil.copytree(ckpts["split"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_model_id"] = "meta-llama/Llama-3.1-8B-Instruct"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MchError, match="text_model="):
        load(d)
    # ... and an option points it at a local copy
    m = load(d, text_model=str(ckpts["split"].parent / "llama"))
    assert m.n_layers == 2


def test_wrong_weights_are_refused(ckpts, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "uv"
    shutil.copytree(ckpts["full"], d)
    state = load_file(str(d / "model.safetensors"))
    state.pop("multi_modal_projector.linear_1.weight")
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(MchError, match="multi_modal_projector.linear_1.weight"):
        load(d)
    state = load_file(str(ckpts["full"] / "model.safetensors"))
    state["multi_modal_projector.extra.weight"] = torch.zeros(2)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(MchError, match="extra"):
        load(d)


# --------------------------------------------------------------------------- LoRA


def make_peft_adapter(llm_dir: Path, out: Path, r: int = 4, alpha: int = 8, seed: int = 1, **cfg_kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    llm = LlamaForCausalLM.from_pretrained(str(llm_dir))
    pm = get_peft_model(
        llm,
        LoraConfig(
            r=r,
            lora_alpha=alpha,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
            **cfg_kw,
        ),
    )
    pm.save_pretrained(str(out))
    return out


def test_lora_adapter_loads_and_merges(ckpts, model, samples, tmp_path):
    from peft import PeftModel

    llama = ckpts["split"].parent / "llama"
    adir = make_peft_adapter(llama, tmp_path / "lora")
    merged = load(ckpts["split"], adapter=str(adir))
    stages = ["llm.0", "llm.final"]
    got = capture(merged, merged.prepare(samples, "default"), stages, "modality")
    base = capture(model, model.prepare(samples, "default"), stages, "modality")
    assert not torch.allclose(got["llm.final"], base["llm.final"], atol=1e-3)
    # the same adapter unmerged (PEFT's own forward) gives the same numbers
    ref = load(ckpts["split"])
    PeftModel.from_pretrained(ref.module.language_model, str(adir))
    want = capture(ref, ref.prepare(samples, "default"), stages, "modality")
    for st in stages:
        torch.testing.assert_close(got[st], want[st], atol=1e-5, rtol=1e-5)

    # an adapter made for another model is refused
    from transformers import LlamaConfig, LlamaForCausalLM

    other = tmp_path / "other_llm"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=420,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(str(other))
    bad = make_peft_adapter(other, tmp_path / "bad_lora")
    with pytest.raises(MchError):
        load(ckpts["split"], adapter=str(bad))


def test_reference_lora_file_is_accepted(ckpts, samples, tmp_path):
    """The reference saves the LoRA tensors of the wrapped model (keys with "lora") to
    DIR/model.safetensors (r 16, alpha 32, q/k/v/o)."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    ref = load(ckpts["split"])
    torch.manual_seed(2)
    # LoRA layers are injected in place: ref's own module tree now runs the unmerged adapter
    pm = get_peft_model(
        ref.module.language_model,
        LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        ),
    )
    # keys as the wrapped Ultravox model's state dict names them
    state = {f"language_model.{k}": v.contiguous() for k, v in pm.state_dict().items() if "lora" in k}
    assert next(iter(state)).startswith("language_model.base_model.model.model.layers.0.")
    d = tmp_path / "ultravox_emotion_lora"
    d.mkdir()
    save_file(state, str(d / "model.safetensors"))
    stages = ["llm.final"]
    want = capture(ref, ref.prepare(samples, "default"), stages, "modality")
    got_model = load(ckpts["split"], adapter=str(d))
    got = capture(got_model, got_model.prepare(samples, "default"), stages, "modality")
    torch.testing.assert_close(got["llm.final"], want["llm.final"], atol=1e-5, rtol=1e-5)
    (d / "model.safetensors").unlink()
    save_file({"x.weight": torch.zeros(2)}, str(d / "model.safetensors"))
    with pytest.raises(MchError, match="no LoRA"):
        load(ckpts["split"], adapter=str(d))


# --------------------------------------------------------------------------- causal-test losses


def manual_sequence(model: Ultravox, s: Sample, template: str, tail: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Decoder input and token ids of one clip alone: template ids with the projector output
    in place of the audio placeholders (EOS ids), then `tail`."""
    tok, m = model.tokenizer, model.module
    before, after = template.split("<|audio|>")
    pre, post = tok(before, add_special_tokens=False)["input_ids"], tok(after, add_special_tokens=False)["input_ids"]
    emb = m.language_model.get_input_embeddings()
    with torch.inference_mode():
        feats = torch.from_numpy(model._features(s.media[0]))[None]
        audio = m.multi_modal_projector(m.audio_tower(feats).last_hidden_state)[0]
        ids = pre + [tok.eos_token_id] * audio.shape[0] + post + tail
        x = emb(torch.tensor(ids))
        x[len(pre) : len(pre) + audio.shape[0]] = audio
    return x, ids


@pytest.mark.parametrize("protocol", ["default", "paper"])
def test_loss_terms_align_logits_with_targets(model, samples, protocol):
    terms = model.loss_terms(samples, protocol)
    got = terms.mean_nll()
    tok = model.tokenizer
    for i, s in enumerate(samples):
        answer = tok(s.text, add_special_tokens=False)["input_ids"] if protocol == "default" else []
        template = DEFAULT_PROMPT if protocol == "default" else PAPER_PROMPT
        x, ids = manual_sequence(model, s, template, answer)
        with torch.inference_mode():
            logp = torch.log_softmax(model.module.language_model(inputs_embeds=x[None]).logits[0].float(), -1)
        first = len(ids) - len(answer) if protocol == "default" else 1  # scored targets start here
        nll = [-logp[t - 1, ids[t]] for t in range(first, len(ids))]
        assert int(terms.valid[i].sum()) == len(nll)
        assert float(got[i]) == pytest.approx(float(torch.stack(nll).mean()), abs=1e-4)


def test_loss_gradient_reaches_the_adapter_output(model, samples):
    leaf = {}

    def hook(_m, _a, out):  # as the gradient analysis does: the adapter output becomes a leaf
        leaf["z"] = out.detach().requires_grad_(True)
        return leaf["z"]

    h = resolve_module(model.module, model.stage_map()["adapter"]).register_forward_hook(hook)
    try:
        model.loss(samples[:2], "default", grad=True).sum().backward()
    finally:
        h.remove()
    g = leaf["z"].grad
    assert g is not None and g.shape[-1] == 64
    mask = model.prepare(samples[:2], "default").pools["adapter"].masks["modality"]
    assert float(g[mask].abs().sum()) > 0 and float(g[~mask].abs().sum()) == 0  # only real tokens reach the LLM


def test_score_parts_are_what_score_runs_on(model, samples):
    from mch.scoring import left_pad, score_shared_prefix

    conts = ["angry", "calm or surprised"]
    parts = model.score_parts(samples, "The speaker sounds", conts, "default")
    assert parts.lm is model.module.language_model and parts.continuations == model.continuation_ids(conts)
    logp, _ = score_shared_prefix(parts.lm, *left_pad(parts.prefixes), parts.continuations)
    np.testing.assert_allclose(
        logp.numpy(), model.score(samples, "The speaker sounds", conts, "default").logp, atol=1e-5
    )
    assert model.lora_target() == "language_model"
    assert model.prompt_id("paper", "modal") != model.prompt_id("default", "modal")
