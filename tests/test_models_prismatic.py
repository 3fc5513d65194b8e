"""Prismatic plugins on tiny checkpoints in the TRI-ML run layout (built by
`mch.plugins.models.tiny.make_tiny_prismatic_*`), loaded through the plugin's real loader."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mch.api import MchError, ModelSpec, Sample
from mch.capture import capture
from mch.model import resolve_module
from mch.plugins.models.prismatic import (
    SYSTEM_PROMPT,
    ImageTransform,
    PrismaticModel,
    make_projector,
    vicuna_v15_prompt,
)
from mch.plugins.models.tiny import make_tiny_prismatic_dinov2, make_tiny_prismatic_siglip

PAPER_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. USER: Describe this image. "
    "ASSISTANT:"
)
FAMILIES = ("dinov2", "siglip")


def spec(family: str) -> ModelSpec:
    return ModelSpec(
        name=f"prismatic_{family}",
        entry="mch.plugins.models.prismatic:PrismaticModel",
        modality="vision",
        checkpoint="TRI-ML/prismatic-vlms",
        options={"variant": f"{family}-224px+7b", "vision_family": family},
    )


def load(path: Path, family: str, **kw) -> PrismaticModel:
    m = PrismaticModel(spec(family), checkpoint=str(path), **kw)
    m.load()
    return m


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prismatic")
    return {
        "dinov2": make_tiny_prismatic_dinov2(root / "dinov2"),
        "siglip": make_tiny_prismatic_siglip(root / "siglip"),
    }


@pytest.fixture(scope="session")
def models(runs) -> dict[str, PrismaticModel]:
    return {f: load(runs[f], f) for f in FAMILIES}


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    sizes = [(50, 30), (37, 61), (44, 44), (90, 20)]
    texts = [
        "a dog on the grass",
        "two people ride bikes in the street near a red building",
        "a cat",
        "a plate of food with a fork and a small chair",
    ]
    return [
        Sample(f"s{i}", t, {}, {}, _media=Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))
        for i, ((w, h), t) in enumerate(zip(sizes, texts, strict=True))
    ]


# --------------------------------------------------------------------------- prompts


def test_paper_prompt_renders_byte_for_byte(models):
    assert vicuna_v15_prompt("Describe this image.") == PAPER_PROMPT
    assert vicuna_v15_prompt("<image>\nDescribe this image.") == PAPER_PROMPT  # the builder drops <image>
    assert SYSTEM_PROMPT + " USER: Describe this image. ASSISTANT:" == PAPER_PROMPT
    m = models["dinov2"]
    assert m.prompt_text("paper") == PAPER_PROMPT
    # the default protocol keeps the model's own format; its message is an option
    other = PrismaticModel(spec("dinov2"), checkpoint="unused", message="What is shown?")
    assert other.prompt_text("default").endswith(" USER: What is shown? ASSISTANT:")
    assert other.prompt_text("paper") == PAPER_PROMPT


def test_sequence_is_bos_patches_prompt(models, samples):
    m = models["dinov2"]
    p = m.prepare(samples[:2], "paper", "modal")
    tok = m.tokenizer
    prompt_ids = tok(PAPER_PROMPT).input_ids
    assert prompt_ids[0] == tok.bos_token_id
    n = m.num_patches
    assert n == 16  # 56 px / 14
    ids = p.inputs["input_ids"][0].tolist()
    mask = p.inputs["image_mask"][0]
    assert ids[0] == tok.bos_token_id and ids[1 + n :] == prompt_ids[1:]
    assert mask.tolist() == [False] + [True] * n + [False] * (len(prompt_ids) - 1)
    labels = p.info["labels"][0].tolist()
    assert labels[0] == tok.bos_token_id and labels[1 : 1 + n] == [-100] * n and labels[1 + n :] == prompt_ids[1:]


# --------------------------------------------------------------------------- stages and spans


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("view", ["modal", "text"])
def test_every_stage_fires_once_with_declared_width(models, samples, family, view):
    m = models[family]
    p = m.prepare(samples[:3], "default", view)
    calls: dict[str, list[tuple[int, ...]]] = {}
    handles = []
    for stage, path in m.stage_map(view).items():

        def hook(_mod, _a, out, stage=stage):
            h = out[0] if isinstance(out, tuple) else out
            calls.setdefault(stage, []).append(tuple(h.shape))

        handles.append(resolve_module(m.module, path).register_forward_hook(hook))
    try:
        with torch.inference_mode():
            m.forward(p)
    finally:
        for h in handles:
            h.remove()
    dims = m.stage_dims(view)
    expected = {"llm.0", "llm.1", "llm.final", "adapter"} | ({"encoder"} if view == "modal" else set())
    assert set(calls) == expected == set(dims)
    for stage, shapes in calls.items():
        assert len(shapes) == 1, stage
        assert shapes[0][0] == 3 and shapes[0][-1] == dims[stage], stage
    if view == "modal":
        assert calls["encoder"][0][1] == m.num_patches
        assert dims["encoder"] == (32 if family == "dinov2" else 48)


@pytest.mark.parametrize("family", FAMILIES)
def test_spans_cover_exactly_the_modality_tokens(models, samples, family):
    m = models[family]
    p = m.prepare(samples, "default", "modal")
    llm = p.pools["llm"].masks
    assert (llm["modality"].sum(1) == m.num_patches).all()
    assert torch.equal(llm["modality"], p.inputs["image_mask"].cpu())
    assert torch.equal(llm["text"], llm["all"] & ~llm["modality"])
    # the decoder input at the modality positions is the projector output, elsewhere token embeddings
    with torch.inference_mode():
        x = {k: v for k, v in p.inputs.items() if k in ("input_ids", "pixel_values", "image_mask")}
        emb = m.module.embed(**x)
        patches = m.module.project(p.inputs["pixel_values"])
        tokens = m.module.lm.get_input_embeddings()(p.inputs["input_ids"])
    assert torch.allclose(emb[llm["modality"]], patches.reshape(-1, patches.shape[-1]))
    assert torch.allclose(emb[~llm["modality"]], tokens[~llm["modality"]])
    for group in ("encoder", "adapter"):
        assert p.pools[group].masks["modality"].shape == (len(samples), m.num_patches)
    # text view: the paired text's own tokens, right after BOS, in place of the patches
    t = m.prepare(samples, "default", "text")
    tm = t.pools["llm"].masks
    for i, s in enumerate(samples):
        n_text = len(m.tokenizer(s.text, add_special_tokens=False).input_ids)
        assert int(tm["modality"][i].sum()) == n_text
        row = t.inputs["input_ids"][i][tm["all"][i]].tolist()
        assert row[0] == m.tokenizer.bos_token_id
        assert row[1 : 1 + n_text] == m.tokenizer(s.text, add_special_tokens=False).input_ids
        assert row[1 + n_text :] == m.tokenizer(PAPER_PROMPT).input_ids[1:]
    assert t.pools["adapter"] is t.pools["llm"]
    # paper text view: BOS + raw text, no template
    pt = m.prepare(samples[:1], "paper", "text")
    assert pt.inputs["input_ids"][0].tolist() == m.tokenizer(samples[0].text).input_ids


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "view,span", [("modal", "modality"), ("modal", "all"), ("text", "modality"), ("text", "all"), ("text", "last")]
)
def test_pooled_vectors_do_not_change_with_batch_or_padding(models, samples, family, view, span):
    m = models[family]
    stages = m.stages(view)
    batch = capture(m, m.prepare(samples, "default", view), stages, span, view)
    for i, s in enumerate(samples):
        alone = capture(m, m.prepare([s], "default", view), stages, span, view)
        for st in stages:
            assert torch.allclose(batch[st][i], alone[st][0], atol=1e-5), (st, i)
    assert not torch.allclose(batch["llm.final"][0], batch["llm.final"][1])


def test_paper_span_all_includes_bos_and_template(models, samples):
    m = models["dinov2"]
    p = m.prepare(samples[:1], "paper", "modal")
    n_all = int(p.pools["llm"].masks["all"].sum())
    assert n_all == 1 + m.num_patches + len(m.tokenizer(PAPER_PROMPT).input_ids) - 1
    out_all = capture(m, p, ["llm.final"], "all")
    out_mod = capture(m, p, ["llm.final"], "modality")
    assert not torch.allclose(out_all["llm.final"], out_mod["llm.final"])


# --------------------------------------------------------------------------- scoring


def manual_logp(m: PrismaticModel, sample: Sample, prefix: str, cont: str, view: str = "modal") -> float:
    """log p(cont | [BOS, patches, prefix]) the way Prismatic builds the sequence: projected patches
    concatenated right after BOS; one full forward of the causal LM, no mask; logits aligned to
    the multimodal positions."""
    tok, lm = m.tokenizer, m.module.lm
    emb = lm.get_input_embeddings()
    ids_prefix = tok(prefix).input_ids
    ids_full = tok(prefix + " " + cont).input_ids
    assert ids_full[: len(ids_prefix)] == ids_prefix
    e = emb(torch.tensor(ids_full))
    if view == "modal":
        px = torch.from_numpy(m.transform(sample.media))[None]
        middle = m.module.projector(m.module.vision_backbone(px))[0]
    else:
        middle = emb(torch.tensor(tok(sample.text, add_special_tokens=False).input_ids))
    x = torch.cat([e[:1], middle, e[1:]], 0)[None]
    logp = torch.log_softmax(lm(inputs_embeds=x).logits[0].float(), -1)
    n = middle.shape[0]
    # token j of ids_full (j >= 1) sits at position j + n and is predicted by the logits at j + n - 1
    return float(sum(logp[j + n - 1, ids_full[j]] for j in range(len(ids_prefix), len(ids_full))))


@pytest.mark.parametrize("family", FAMILIES)
def test_score_agrees_with_a_manual_forward(models, samples, family):
    m = models[family]
    conts = ["a dog", "two cats on a chair", "food"]
    query = "The image shows"
    got = m.score(samples[:3], query, conts, "default")
    prefix = PAPER_PROMPT + " " + query
    with torch.inference_mode():
        want = np.array([[manual_logp(m, s, prefix, c) for c in conts] for s in samples[:3]])
    assert got.logp.shape == (3, 3)
    np.testing.assert_allclose(got.logp, want, atol=1e-4)
    assert list(got.n_tokens) == [
        len(m.tokenizer(prefix + " " + c).input_ids) - len(m.tokenizer(prefix).input_ids) for c in conts
    ]
    # the text view scores the paired text in the patches' place
    got_t = m.score(samples[:2], query, conts[:2], "default", view="text")
    with torch.inference_mode():
        want_t = np.array([[manual_logp(m, s, prefix, c, "text") for c in conts[:2]] for s in samples[:2]])
    np.testing.assert_allclose(got_t.logp, want_t, atol=1e-4)


def test_score_alignment_is_not_the_reference_one(models, samples):
    """The reference gathered the first T-1 logits against the input ids, i.e. scored prompt
    tokens from BOS/patch positions; the aligned log-probs of the prompt differ from that."""
    m = models["dinov2"]
    p = m.prepare(samples[:1], "paper", "modal")
    with torch.inference_mode():
        x = m.module.embed(p.inputs["input_ids"], p.inputs["pixel_values"], p.inputs["image_mask"])
        logits = m.module.lm(inputs_embeds=x).logits.float()
    labels = p.info["labels"]
    logp = torch.log_softmax(logits[:, :-1], -1)
    tgt = labels[:, 1:]
    keep = tgt != -100
    aligned = logp[keep].gather(-1, tgt[keep][:, None]).mean()
    ids = m.tokenizer(PAPER_PROMPT, return_tensors="pt").input_ids  # T tokens, no patches
    ref = torch.log_softmax(logits[:, : ids.shape[1] - 1], -1).gather(-1, ids[:, 1:, None]).mean()
    assert keep.sum() == ids.shape[1] - 1
    assert not torch.isclose(aligned, ref)


# --------------------------------------------------------------------------- weights: timm key map


def _timm_sd(run: Path, family: str) -> dict[str, torch.Tensor]:
    if family == "dinov2":
        from safetensors.torch import load_file

        return load_file(str(run / "vision" / "model.safetensors"))
    sd = torch.load(run / "vision" / "open_clip_pytorch_model.bin", weights_only=True)
    return {k[len("visual.trunk.") :]: v for k, v in sd.items() if k.startswith("visual.trunk.")}


def timm_reference_features(
    sd: dict[str, torch.Tensor], family: str, heads: int, px: torch.Tensor, grid: int
) -> torch.Tensor:
    """timm's ViT forward written from its parameter names, up to the second-to-last block
    (`get_intermediate_layers(n={depth-2})`, no norm, prefix tokens removed)."""
    w = sd["patch_embed.proj.weight"]
    d = w.shape[0]
    h = F.conv2d(px, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    pos = sd["pos_embed"]
    g0 = int(round(pos.shape[1] ** 0.5))
    if g0 != grid:
        pos = (
            F.interpolate(
                pos.reshape(1, g0, g0, d).permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", antialias=True
            )
            .permute(0, 2, 3, 1)
            .reshape(1, grid * grid, d)
        )
    h = h + pos
    prefix = 0
    if family == "dinov2":
        B = h.shape[0]
        h = torch.cat([sd["cls_token"].expand(B, -1, -1), sd["reg_token"].expand(B, -1, -1), h], 1)
        prefix = 1 + sd["reg_token"].shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth - 1):
        b = f"blocks.{i}."
        B, T, _ = h.shape
        y = F.layer_norm(h, (d,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-6)
        qkv = F.linear(y, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, T, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, d)
        a = F.linear(a, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        h = h + (a * sd[b + "ls1.gamma"] if family == "dinov2" else a)
        y = F.layer_norm(h, (d,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-6)
        y = F.linear(
            F.gelu(F.linear(y, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"])),
            sd[b + "mlp.fc2.weight"],
            sd[b + "mlp.fc2.bias"],
        )
        h = h + (y * sd[b + "ls2.gamma"] if family == "dinov2" else y)
    return h[:, prefix:]


@pytest.mark.parametrize("family,heads", [("dinov2", 2), ("siglip", 3)])
def test_timm_key_map_reproduces_the_timm_forward(models, runs, samples, family, heads):
    m = models[family]
    sd = _timm_sd(runs[family], family)
    px = torch.from_numpy(np.stack([m.transform(s.media) for s in samples[:2]]))
    grid = int(m.num_patches**0.5)
    with torch.inference_mode():
        got = m.module.vision_backbone(px)
        want = timm_reference_features(sd, family, heads, px, grid)
    assert got.shape == want.shape == (2, m.num_patches, sd["patch_embed.proj.weight"].shape[0])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if family == "siglip":  # the attention-pool head, mapped though Prismatic does not use it
        z = torch.randn(2, m.num_patches, 48, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            got_pool = m.module.vision_backbone.featurizer.head(z)
        a = "attn_pool."
        q = F.linear(sd[a + "latent"].expand(2, -1, -1), sd[a + "q.weight"], sd[a + "q.bias"])
        q = q.reshape(2, 1, heads, 16).transpose(1, 2)
        k, v = F.linear(z, sd[a + "kv.weight"], sd[a + "kv.bias"]).reshape(2, -1, 2, heads, 16).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 1, 48)
        o = F.linear(o, sd[a + "proj.weight"], sd[a + "proj.bias"])
        y = F.layer_norm(o, (48,), sd[a + "norm.weight"], sd[a + "norm.bias"], 1e-6)
        o = o + F.linear(
            F.gelu(F.linear(y, sd[a + "mlp.fc1.weight"], sd[a + "mlp.fc1.bias"])),
            sd[a + "mlp.fc2.weight"],
            sd[a + "mlp.fc2.bias"],
        )
        torch.testing.assert_close(got_pool, o[:, 0], atol=1e-5, rtol=1e-5)


def test_vision_weights_from_hf_dir_or_timm_file_give_the_same_features(models, runs, samples, tmp_path):
    base = models["dinov2"]
    px = torch.from_numpy(np.stack([base.transform(s.media) for s in samples[:2]]))
    with torch.inference_mode():
        want = base.module.vision_backbone(px)
    # an HF-format directory (as saved by transformers), given by the `vision` option
    hf_dir = tmp_path / "hf_vision"
    base.module.vision_backbone.featurizer.save_pretrained(hf_dir)
    via_hf = load(runs["dinov2"], "dinov2", vision=str(hf_dir))
    # ... also at its pretraining size (6x6 positions, like facebook/dinov2-with-registers-large at 518 px),
    # resampled at load time as timm resamples its own weights
    from transformers import Dinov2WithRegistersModel

    from mch.plugins.models.prismatic import timm_to_hf

    cfg84, sd84 = timm_to_hf("dinov2", _timm_sd(runs["dinov2"], "dinov2"), 2, 84)
    native = Dinov2WithRegistersModel(cfg84)
    native.load_state_dict(sd84)
    native.save_pretrained(tmp_path / "hf_native")
    via_native = load(runs["dinov2"], "dinov2", vision=str(tmp_path / "hf_native"))
    # a timm-format file given directly
    via_file = load(runs["dinov2"], "dinov2", vision=str(runs["dinov2"] / "vision" / "model.safetensors"))
    for other in (via_hf, via_native, via_file):
        with torch.inference_mode():
            torch.testing.assert_close(other.module.vision_backbone(px), want, atol=1e-5, rtol=1e-5)


def test_a_checkpoints_vision_backbone_is_ignored_as_the_release_does(models, samples, tmp_path):
    """TRI-ML's `prismatic.load` -> `PrismaticVLM.from_pretrained` loads only `projector` and
    `llm_backbone` from the checkpoint; the vision backbone always comes from timm's pretrained
    weights, even when the checkpoint (a full-finetune run) holds other `vision_backbone` weights."""
    base = models["dinov2"]
    px = torch.from_numpy(np.stack([base.transform(s.media) for s in samples[:2]]))
    with torch.inference_mode():
        want = base.module.vision_backbone(px)
    run = make_tiny_prismatic_dinov2(tmp_path / "ft", vision_in_checkpoint=True)  # same seed: same timm weights
    ck_path = run / "checkpoints" / "latest-checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    ck["model"]["vision_backbone"] = {
        k: v * 1.5 if v.is_floating_point() else v  # "fine-tuned"
        for k, v in ck["model"]["vision_backbone"].items()
    }
    torch.save(ck, ck_path)
    got = load(run, "dinov2")
    with torch.inference_mode():
        torch.testing.assert_close(got.module.vision_backbone(px), want, atol=1e-5, rtol=1e-5)
    assert "prismatic.load" in got.fidelity("default")[0]
    # without the pretrained weights, the checkpoint's copy is no fallback: one sentence says why
    (run / "vision" / "model.safetensors").unlink()
    with pytest.raises(MchError, match="checkpoint's own vision_backbone is not used"):
        load(run, "dinov2")


def test_image_transform_letterbox_and_normalisation():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    t = ImageTransform(56, "letterbox", mean, std)
    img = Image.new("RGB", (112, 56), (255, 0, 0))  # 2:1, padded to 112x112 then resized to 56
    x = t(img)
    assert x.shape == (3, 56, 56) and x.dtype == np.float32
    fill = np.array([int(v * 255) / 255 for v in mean])
    pad = (fill - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x[:, 0, 28], pad, atol=1e-6)  # top band: the letterbox fill
    np.testing.assert_allclose(x[:, 28, 28], (np.array([1.0, 0, 0]) - mean) / std, atol=1e-6)  # the image
    # a square image at the target size is only normalised
    arr = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    np.testing.assert_allclose(t(Image.fromarray(arr)), ((arr / 255.0 - mean) / std).transpose(2, 0, 1), atol=1e-6)
    naive = ImageTransform(56, "resize-naive", mean, std)(img)
    assert naive.shape == (3, 56, 56) and np.allclose(naive[:, 0, 28], (np.array([1.0, 0, 0]) - mean) / std)
    with pytest.raises(MchError):
        ImageTransform(56, "corner-pad", mean, std)


@pytest.mark.parametrize(
    "strategy,size,crop_box",
    [
        ("resize-crop", (100, 60), (18, 0, 74, 56)),  # short side -> 56: 93x56 (truncated), left = round(18.5) = 18
        ("resize-crop", (100, 61), (18, 0, 74, 56)),  # 91.8 -> 91 (not 92), left = round(17.5) = 18
        ("letterbox", (51, 50), (0, 0, 56, 56)),  # odd difference: int(1/2) = 0 padding, 57x56, left = round(0.5) = 0
    ],
)
def test_image_transform_follows_torchvision_resize_and_crop(strategy, size, crop_box):
    arr = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    got = ImageTransform(56, strategy, (0.5,) * 3, (0.5,) * 3)(img)
    w, h = size
    new = (int(56 * w / h), 56) if w > h else (56, int(56 * h / w))
    want = np.asarray(img.resize(new, Image.BICUBIC).crop(crop_box), np.float32).transpose(2, 0, 1) / 255.0
    np.testing.assert_allclose(got, (want - 0.5) / 0.5, atol=1e-6)


def test_fused_and_linear_projectors_map_to_their_last_linear():
    for arch, path, n in (
        ("no-align+fused-gelu-mlp", "projector.projector.4", 3),
        ("gelu-mlp", "projector.projector.2", 2),
        ("linear", "projector.projector", 1),
    ):
        proj, stage = make_projector(arch, 8, 16)
        assert stage == path  # gelu-mlp's first Linear is 16 wide too: the width alone cannot tell them apart
        root = torch.nn.Module()
        root.projector = proj
        last = resolve_module(root, stage)
        assert isinstance(last, torch.nn.Linear) and last.out_features == 16
        assert sum(isinstance(x, torch.nn.Linear) for x in proj.modules()) == n
    with pytest.raises(MchError):
        make_projector("qformer", 8, 16)


# --------------------------------------------------------------------------- errors and adapters


def test_missing_checkpoint_is_one_clear_error(tmp_path, monkeypatch, runs):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    t0 = time.time()
    with pytest.raises(MchError, match=r"dinov2-224px\+7b.*not in the local Hugging Face cache"):
        PrismaticModel(spec("dinov2")).load()
    with pytest.raises(MchError, match="does not exist"):
        PrismaticModel(spec("dinov2"), checkpoint=str(tmp_path / "nowhere")).load()
    with pytest.raises(MchError, match="not a Prismatic run directory"):
        PrismaticModel(spec("dinov2"), checkpoint=str(tmp_path)).load()
    # a run without its LLM files or vision weights: the error names the option to pass
    bare = tmp_path / "bare"
    shutil.copytree(runs["dinov2"], bare)
    shutil.rmtree(bare / "llm")
    with pytest.raises(MchError, match=r"lmsys/vicuna-7b-v1.5.*<run directory>/llm.*model option llm=PATH"):
        load(bare, "dinov2")
    shutil.copytree(runs["dinov2"] / "llm", bare / "llm")
    shutil.rmtree(bare / "vision")
    with pytest.raises(MchError, match=r"vit_large_patch14_reg4_dinov2.*bare/vision.*model option vision=PATH"):
        load(bare, "dinov2")
    assert time.time() - t0 < 20


def test_wrong_family_is_refused(runs):
    with pytest.raises(MchError, match="expects a dinov2 vision backbone"):
        load(runs["siglip"], "dinov2")


def _lora_dir(path: Path, config, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    peft = get_peft_model(
        LlamaForCausalLM(config),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft.save_pretrained(path)
    return path


def test_lora_adapter_merges_and_a_mismatched_one_is_refused(models, runs, samples, tmp_path):
    from safetensors.torch import load_file

    base = models["dinov2"]
    cfg = base.module.lm.config
    adir = _lora_dir(tmp_path / "lora", cfg, 0)
    tuned = load(runs["dinov2"], "dinov2", adapter=str(adir))
    w = load_file(str(adir / "adapter_model.safetensors"))
    a = next(v for k, v in w.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in w.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    delta = (
        tuned.module.lm.model.layers[0].self_attn.q_proj.weight - base.module.lm.model.layers[0].self_attn.q_proj.weight
    )
    torch.testing.assert_close(delta, (b @ a) * (8 / 4), atol=1e-5, rtol=1e-4)
    assert "lora" not in "".join(n for n, _ in tuned.module.named_modules())  # merged: stage paths unchanged
    out = capture(tuned, tuned.prepare(samples[:1], "default"), ["llm.final"], "modality")
    ref = capture(base, base.prepare(samples[:1], "default"), ["llm.final"], "modality")
    assert not torch.allclose(out["llm.final"], ref["llm.final"])

    from transformers import LlamaConfig

    small = LlamaConfig(**{**cfg.to_dict(), "hidden_size": 32, "intermediate_size": 64})
    bad = _lora_dir(tmp_path / "lora_bad", small, 1)
    with pytest.raises(MchError, match="adapter"):
        load(runs["dinov2"], "dinov2", adapter=str(bad))


def test_registry_lists_both_models():
    from mch.manager import get_registry

    reg = get_registry(refresh=True)
    for name, family in (("prismatic_dinov2", "dinov2"), ("prismatic_siglip", "siglip")):
        s = reg.get("model", name)
        assert s.modality == "vision" and s.checkpoint == "TRI-ML/prismatic-vlms"
        assert s.options["vision_family"] == family and s.options["variant"] == f"{family}-224px+7b"
        assert s.entry == "mch.plugins.models.prismatic:PrismaticModel"


def test_run_config_is_the_release_layout(runs):
    cfg = json.loads((runs["dinov2"] / "config.json").read_text())["model"]
    assert cfg["vision_backbone_id"] == "dinov2-vit-l" and cfg["llm_backbone_id"] == "vicuna-v15-7b"
    ck = torch.load(runs["dinov2"] / "checkpoints" / "latest-checkpoint.pt", weights_only=True)
    assert set(ck["model"]) == {"projector", "llm_backbone"}
    assert all(k.startswith("llm.") for k in ck["model"]["llm_backbone"])
    assert ck["model"]["llm_backbone"]["llm.model.embed_tokens.weight"].shape[0] % 64 == 0


# --------------------------------------------------------------------------- harness contract, losses


@pytest.mark.parametrize("family", FAMILIES)
def test_harness_contract(models, family):
    from mch.testing import assert_model_plugin_contract, tiny_samples

    report = assert_model_plugin_contract(models[family], samples=tiny_samples("vision", n=3))
    assert report.views == ["modal", "text"]
    assert report.widths["modal"]["encoder"] == (32 if family == "dinov2" else 48)
    assert report.max_batch_diff <= 1e-5


def _prompt_token_logp(m: PrismaticModel, sample: Sample) -> torch.Tensor:
    """log p of each prompt token after the first, read at its own position in [BOS, patches, prompt]."""
    tok, lm = m.tokenizer, m.module.lm
    ids = tok(PAPER_PROMPT).input_ids
    e = lm.get_input_embeddings()(torch.tensor(ids))
    patches = m.module.project(torch.from_numpy(m.transform(sample.media))[None])[0]
    logp = torch.log_softmax(lm(inputs_embeds=torch.cat([e[:1], patches, e[1:]])[None]).logits[0], -1)
    n = patches.shape[0]
    return torch.stack([logp[j + n - 1, ids[j]] for j in range(1, len(ids))])


def test_rotary_frequencies_stay_float32_under_default_and_take_the_release_cast_under_paper(runs, models, samples):
    """The release ran `vlm.to(device, dtype=torch.bfloat16)`, which also rounds the LLM's rotary
    `inv_freq` buffer to bf16 (cos off by up to 0.36 below position 300 at Vicuna's head size).
    `default` keeps float32 frequencies like the other plugins; `paper` reproduces the cast."""
    import copy

    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    m = load(runs["dinov2"], "dinov2", dtype="bfloat16")
    rot = m.module.lm.model.rotary_emb
    exact = LlamaRotaryEmbedding(m.module.lm.config).inv_freq  # float32 from the config
    assert exact.dtype == torch.float32
    pos = torch.arange(300)[None]
    x = torch.zeros(1, 300, 16, dtype=torch.bfloat16)
    truth = torch.cos(pos[0, :, None].double() * exact.double()[None])  # (300, 8), float64
    got = {}
    for protocol in ("default", "paper"):
        m.prepare(samples[:1], protocol)
        got[protocol] = rot(x, pos)[0][0, :, :8].double()
    assert torch.equal(rot.inv_freq, exact.to(torch.bfloat16))  # paper: the release's buffer
    m.prepare(samples[:1], "default")
    assert rot.inv_freq.dtype == torch.float32 and torch.equal(rot.inv_freq, exact)
    assert float((got["default"] - truth).abs().max()) < 0.005  # bf16 rounding of cos itself only
    assert float((got["paper"] - truth).abs().max()) > 0.03  # the rounded frequencies drift with position
    torch.testing.assert_close(
        got["paper"], torch.cos(pos[0, :, None].double() * exact.to(torch.bfloat16).double()[None]), atol=0.005, rtol=0
    )

    # end to end: paper == the release's whole-model cast of the same weights; default differs
    release = copy.deepcopy(models["dinov2"].module).to(torch.bfloat16)
    for protocol in ("paper", "default"):
        prep = m.prepare(samples[:2], protocol)
        with torch.inference_mode():
            ours = m.forward(prep).last_hidden_state.float()
            ref = release(**prep.inputs).last_hidden_state.float()
        if protocol == "paper":
            torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
        else:
            assert not torch.allclose(ours, ref, atol=1e-2)
    assert any("float32" in n for n in m.fidelity("default"))
    assert any("as the release" in n for n in m.fidelity("paper"))
    assert models["dinov2"].fidelity("paper") == models["dinov2"].fidelity("default")  # float32: no cast


def test_loss_terms_are_aligned_with_the_patch_layout(models, samples):
    m = models["dinov2"]
    batch = samples[:3]
    # default: the caption as the assistant's answer, scored on its own tokens
    got = m.loss(batch, "default")
    with torch.inference_mode():
        for i, s in enumerate(batch):
            n_tok = len(m.continuation_ids(PAPER_PROMPT, [s.text])[0])
            want = -manual_logp(m, s, PAPER_PROMPT, s.text) / n_tok
            assert abs(float(got[i]) - want) < 1e-4
    terms = m.loss_terms(batch, "default")
    assert terms.logits.shape[:2] == terms.targets.shape
    # paper: the prompt's own ids at their positions after the patches (not the reference's misreading)
    got_p = m.loss(batch, "paper")
    with torch.inference_mode():
        for i, s in enumerate(batch):
            assert abs(float(got_p[i]) + float(_prompt_token_logp(m, s).mean())) < 1e-4
    # grad=True keeps the graph back to the adapter output (what the gradient analysis needs)
    seen = {}

    def keep(_mod, _a, out):
        out.retain_grad()
        seen["z"] = out

    h = m.adapter_module.register_forward_hook(keep)
    try:
        m.loss(samples[:1], "default", grad=True).sum().backward()
    finally:
        h.remove()
        m.module.zero_grad(set_to_none=True)
    assert seen["z"].grad is not None and float(seen["z"].grad.abs().sum()) > 0


def test_score_parts_and_lora_target(models, samples):
    from mch.scoring import left_pad, score_full

    m = models["siglip"]
    conts = ["a dog", "food"]
    parts = m.score_parts(samples[:2], "The image shows", conts, "default")
    assert parts.lm is m.module.lm and len(parts.prefixes) == 2
    with torch.inference_mode():
        x, mask = left_pad(parts.prefixes)
        full, _ = score_full(parts.lm, x, mask, parts.continuations)
    np.testing.assert_allclose(full.numpy(), m.score(samples[:2], "The image shows", conts, "default").logp, atol=1e-4)
    assert resolve_module(m.module, m.lora_target()) is m.module.lm
    assert m.prompt_id("paper", "modal") != m.prompt_id("default", "text")


def test_bench_end_to_end_on_a_generated_coco(runs, tmp_path):
    """The runner on the tiny checkpoint and a generated COCO-layout corpus: both views extracted,
    the analyses that read them write schema-valid records."""
    from mch.plugins.attributes import synth
    from mch.runner import RunConfig, run_bench

    synth.make("coco", tmp_path / "coco", images=12)  # the cross-fitted TA/MS split needs 8 rows or more
    cfg = RunConfig(
        model="prismatic_siglip",
        checkpoint=str(runs["siglip"]),
        dataset="coco",
        data_path=str(tmp_path / "coco"),
        analyses=("modes", "distances"),
        batch_size=3,
        out_dir=tmp_path / "results",
        store=tmp_path / "store",
    )
    _plan, written = run_bench(cfg)
    assert [rec["analysis"]["name"] for _, rec in written] == ["modes", "distances"]
    assert all(path.exists() for path, _ in written)
    # each record says how the plugin's computation relates to the release's loader
    assert all("prismatic.load" in rec["model"]["fidelity"][0] for _, rec in written)


def test_timm_key_map_uses_every_key(runs):
    from mch.plugins.models.prismatic import timm_to_hf

    sd = _timm_sd(runs["dinov2"], "dinov2")
    _, hf = timm_to_hf("dinov2", {**sd, "mask_token": torch.ones(1, 1, 32)}, 2, 56)
    assert torch.equal(hf["embeddings.mask_token"], torch.ones(1, 32))
    assert hf["embeddings.position_embeddings"].shape == (1, 1 + 16, 32)  # 6x6 resampled to 4x4, + CLS slot
    with pytest.raises(MchError, match="do not belong"):
        timm_to_hf("dinov2", {**sd, "head.weight": torch.zeros(2, 32)}, 2, 56)
    with pytest.raises(MchError, match="missing"):
        timm_to_hf("siglip", {k: v for k, v in _timm_sd(runs["siglip"], "siglip").items() if k != "norm.weight"}, 3, 42)
