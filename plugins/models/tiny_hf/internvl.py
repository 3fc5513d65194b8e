"""A tiny internvl checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, chatml, save, token_config


def internvl(out: Path, seed: int) -> Path:
    """InternVL 3 (`OpenGVLab/InternVL3-1B-hf`): InternViT, pixel shuffle + LayerNorm-MLP
    projector, Qwen2 decoder; 56 px tiles of 4 tokens (<img> ... </img>) plus a thumbnail."""
    import torch
    import transformers
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
    )
    ip = GotOcr2ImageProcessorPil(
        size={"height": 56, "width": 56},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    vision = transformers.InternVLVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.Qwen2Config(**TEXT, **token_config(tok))
    cfg = transformers.InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_seq_length=4,
        downsample_ratio=0.5,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    video = {"video_processor_type": "InternVLVideoProcessor", "size": {"height": 56, "width": 56}}
    return save(
        out,
        transformers.InternVLForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "InternVLProcessor",
        chatml(image="<IMG_CONTEXT>\n"),
        processor_kwargs={"image_seq_length": 4},
        video=video,
    )
