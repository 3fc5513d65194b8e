"""A tiny LLaVA-1.5 checkpoint in the `llava-hf` release layout (`make_tiny_llava`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import TEXT, bpe_tokenizer, mark_smoke, release_processor_files, token_config


def llava_tokenizer() -> Any:
    """LLaVA's Vicuna tokenizer: BOS `<s>`, `<image>` and `<pad>` tokens (LLaVA-1.5, LLaVA-NeXT)."""
    return bpe_tokenizer(
        ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        bos="<s>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def make_tiny_llava(out_dir: str | Path, image_size: int = 42, seed: int = 0) -> Path:
    """LLaVA-1.5 layout (`llava-hf/llava-1.5-7b-hf`): CLIP vision tower (3 layers, so the
    default feature layer -2 is not the last one), GELU-MLP projector, 2-layer Llama, BOS
    `<s>`, `<image>` and `<pad>` tokens; preprocessor_config.json names `CLIPImageProcessor`
    as the release does (mch must pick the PIL variant without torchvision)."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = llava_tokenizer()
    ip = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=14,
        projection_dim=16,
    )
    text = LlamaConfig(**TEXT, **token_config(tok), max_position_embeddings=512)
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // 14) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(cfg).eval().save_pretrained(out)
    proc.save_pretrained(out)
    release_processor_files(out, "image_processor")
    return mark_smoke(out)
