"""A tiny aya_vision checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, save, token_config, turns


def aya_vision(out: Path, seed: int) -> Path:
    """Aya Vision (`CohereLabs/aya-vision-8b`): SigLIP, 2x2 pixel shuffle + SwiGLU projector,
    Cohere2 decoder; 56 px tiles (4 tokens each) plus a global tile."""
    import torch
    import transformers
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = [
        "<PAD>",
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ]
    tok = bpe_tokenizer(
        specials, bos="<BOS_TOKEN>", bos_token="<BOS_TOKEN>", eos_token="<|END_OF_TURN_TOKEN|>", pad_token="<PAD>"
    )
    ip = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, min_patches=1, max_patches=4)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.Cohere2Config(
        **TEXT,
        **token_config(tok),
        sliding_window=4096,
    )
    cfg = transformers.AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        downsample_factor=2,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    template = turns(
        "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
        "<image>",
    )
    return save(
        out,
        transformers.AyaVisionForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "AyaVisionProcessor",
        template,
        processor_kwargs={"patch_size": 14, "img_size": 56, "downsample_factor": 2},
    )
