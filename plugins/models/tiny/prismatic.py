"""Tiny Prismatic runs in the TRI-ML release layout (`make_tiny_prismatic_dinov2`,
`make_tiny_prismatic_siglip`): run config, checkpoint, the LLM's files, timm-format vision weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .common import TEXT, mark_smoke

_PRISMATIC_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions. USER: Describe this image. ASSISTANT:",
    "a photo of a dog on the grass",
    "a cat sits on a red chair",
    "two people ride bikes in the street",
    "a plate of food with a fork",
    "The image shows a man holding a kite",
    "a bus parked near a building",
    "there are one two three four many objects",
    "they are small medium large",
    "concentrated moderate dispersed",
    "person animal vehicle food furniture",
    "0 1 2 3 4 5 6 7 8 9",
]


def _vicuna_like_tokenizer(vocab_size: int = 360) -> Any:
    """A SentencePiece-style BPE (Metaspace, '▁' word prefix) with Llama-2's special tokens
    <unk>=0, <s>=1, </s>=2 and BOS added like Vicuna's tokenizer; no pad token (Prismatic adds
    `<PAD>` itself)."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = list(string.ascii_letters + string.digits + string.punctuation) + ["▁"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_PRISMATIC_CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def _tiny_timm_vit(family: str, dim: int, depth: int, heads: int, grid: int, gen: Any) -> dict[str, Any]:
    """Random weights under timm's ViT key names (DINOv2 with 4 registers, or SigLIP with its
    attention-pool head), scaled so that a wrong key map changes the outputs visibly."""
    import torch

    def rnd(*shape: int, std: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 0.5 + torch.rand(dim, generator=gen), f"{prefix}.bias": rnd(dim, std=0.1)}

    def linear(prefix: str, out: int, inp: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rnd(out, inp, std=inp**-0.5), f"{prefix}.bias": rnd(out, std=0.1)}

    mlp = 4 * dim if family == "dinov2" else int(dim * 3.7362)
    sd: dict[str, torch.Tensor] = {
        "patch_embed.proj.weight": rnd(dim, 3, 14, 14, std=0.05),
        "patch_embed.proj.bias": rnd(dim, std=0.1),
        "pos_embed": rnd(1, grid * grid, dim, std=0.5),
    }
    if family == "dinov2":
        sd["cls_token"] = rnd(1, 1, dim, std=0.5)
        sd["reg_token"] = rnd(1, 4, dim, std=0.5)
    for i in range(depth):
        b = f"blocks.{i}"
        sd.update(norm(f"{b}.norm1"))
        sd.update(linear(f"{b}.attn.qkv", 3 * dim, dim))
        sd.update(linear(f"{b}.attn.proj", dim, dim))
        sd.update(norm(f"{b}.norm2"))
        sd.update(linear(f"{b}.mlp.fc1", mlp, dim))
        sd.update(linear(f"{b}.mlp.fc2", dim, mlp))
        if family == "dinov2":
            sd[f"{b}.ls1.gamma"] = 0.2 + torch.rand(dim, generator=gen)
            sd[f"{b}.ls2.gamma"] = 0.2 + torch.rand(dim, generator=gen)
    sd.update(norm("norm"))
    if family == "siglip":
        sd["attn_pool.latent"] = rnd(1, 1, dim, std=0.5)
        sd.update(linear("attn_pool.q", dim, dim))
        sd.update(linear("attn_pool.kv", 2 * dim, dim))
        sd.update(linear("attn_pool.proj", dim, dim))
        sd.update(norm("attn_pool.norm"))
        sd.update(linear("attn_pool.mlp.fc1", mlp, dim))
        sd.update(linear("attn_pool.mlp.fc2", dim, mlp))
    return {k: v.contiguous() for k, v in sd.items()}


def _make_tiny_prismatic(out_dir: str | Path, family: str, seed: int, vision_in_checkpoint: bool) -> Path:
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if family == "dinov2":
        vb_id, model_id, arch, dim, heads, native, size = (
            "dinov2-vit-l",
            "dinov2-224px+7b",
            "vit_large_patch14_reg4_dinov2",
            32,
            2,
            6,
            56,
        )
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    else:
        vb_id, model_id, arch, dim, heads, native, size = (
            "siglip-vit-so400m",
            "siglip-224px+7b",
            "vit_so400m_patch14_siglip_224",
            48,
            3,
            3,
            42,
        )
        mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    depth = 3  # the featurizer reads block 1, the second-to-last
    vision = _tiny_timm_vit(family, dim, depth, heads, native, gen)

    # LLM: Vicuna's files (config + tokenizer) in llm/, fine-tuned weights in the checkpoint
    tok = _vicuna_like_tokenizer()
    llm_cfg = LlamaConfig(
        **dict(TEXT, num_key_value_heads=4),  # Vicuna-7B: no grouped-query attention
        vocab_size=len(tok),
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        initializer_range=0.1,
    )
    llm_cfg.save_pretrained(out / "llm")
    tok.save_pretrained(out / "llm")
    # Prismatic adds <PAD> and resizes the embeddings to a multiple of 64
    vocab = -(-(len(tok) + 1) // 64) * 64
    trained = LlamaConfig(**{**llm_cfg.to_dict(), "vocab_size": vocab})
    llm = LlamaForCausalLM(trained)
    projector = {
        "projector.0.weight": torch.randn(64, dim, generator=gen) * dim**-0.5,
        "projector.0.bias": torch.randn(64, generator=gen) * 0.1,
        "projector.2.weight": torch.randn(64, 64, generator=gen) * 0.125,
        "projector.2.bias": torch.randn(64, generator=gen) * 0.1,
    }
    model: dict[str, Any] = {
        "projector": projector,
        "llm_backbone": {f"llm.{k}": v.detach().clone() for k, v in llm.state_dict().items()},
    }
    if vision_in_checkpoint:
        model["vision_backbone"] = {f"featurizer.{k}": v for k, v in vision.items()}
    torch.save({"model": model}, out / "checkpoints" / "latest-checkpoint.pt")

    # vision weights as timm's hub repositories hold them
    vdir = out / "vision"
    vdir.mkdir(exist_ok=True)
    timm_cfg = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": dim,
        "global_pool": "token" if family == "dinov2" else "map",
        "model_args": {"embed_dim": dim, "depth": depth, "num_heads": heads, "img_size": native * 14},
        "pretrained_cfg": {
            "input_size": [3, native * 14, native * 14],
            "interpolation": "bicubic",
            "crop_pct": 1.0 if family == "dinov2" else 0.9,
            "crop_mode": "center",
            "mean": list(mean),
            "std": list(std),
            "num_classes": 0,
        },
    }
    (vdir / "config.json").write_text(json.dumps(timm_cfg, indent=2) + "\n")
    if family == "dinov2":
        save_file(vision, str(vdir / "model.safetensors"))
    else:  # open_clip layout (timm 0.9's source of SigLIP weights): the ViT under visual.trunk.
        clip = {f"visual.trunk.{k}": v for k, v in vision.items()}
        clip.update({"logit_scale": torch.tensor(2.3), "text.token_embedding.weight": torch.randn(8, dim)})
        torch.save(clip, vdir / "open_clip_pytorch_model.bin")

    run_cfg = {
        "model": {
            "model_id": model_id,
            "arch_specifier": "no-align+gelu-mlp",
            "vision_backbone_id": vb_id,
            "llm_backbone_id": "vicuna-v15-7b",
            "image_resize_strategy": "letterbox",
            "llm_max_length": 2048,
            "default_image_size": size,
        },
        "run_id": f"{model_id}-tiny",
        "seed": seed,
    }
    (out / "config.json").write_text(json.dumps(run_cfg, indent=2) + "\n")
    return mark_smoke(out)


def make_tiny_prismatic_dinov2(out_dir: str | Path, seed: int = 0, vision_in_checkpoint: bool = False) -> Path:
    """A tiny Prismatic run directory in the TRI-ML layout (`dinov2-224px+7b`): config.json,
    checkpoints/latest-checkpoint.pt ({"model": {"projector", "llm_backbone"}}), the Vicuna-style
    config + tokenizer in llm/, and timm-format DINOv2-with-registers weights (3 blocks x 32,
    4 registers, position grid 6x6 resampled to 4x4 at the run's 56 px) in vision/.
    `vision_in_checkpoint` also stores them in the checkpoint as `vision_backbone`."""
    return _make_tiny_prismatic(out_dir, "dinov2", seed, vision_in_checkpoint)


def make_tiny_prismatic_siglip(out_dir: str | Path, seed: int = 0, vision_in_checkpoint: bool = False) -> Path:
    """A tiny Prismatic run (`siglip-224px+7b` layout) whose SigLIP weights (3 blocks x 48, with
    the attention-pool head, 3x3 patches at 42 px) are an open_clip-format
    open_clip_pytorch_model.bin (timm keys under `visual.trunk.`) in vision/."""
    return _make_tiny_prismatic(out_dir, "siglip", seed, vision_in_checkpoint)
