"""A tiny GLM-4.1V checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, save, token_config, token_ids, video_config

GLM_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|begin_of_image|><|image|><|end_of_image|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def glm4v(out: Path, seed: int) -> Path:
    """GLM-4.1V (`zai-org/GLM-4.1V-9B-Thinking`): ViT + 2x2 conv + merger, GLM-4 decoder, M-RoPE."""
    import torch
    import transformers
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    specials = [
        "<|endoftext|>",
        "[gMASK]",
        "<sop>",
        "<|user|>",
        "<|assistant|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
        "<|video|>",
    ]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    )
    ip = Glm4vImageProcessorPil(
        size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 8}, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = token_ids(
        tok,
        "<|image|>",
        "<|video|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
    )
    text = dict(
        TEXT,
        **token_config(tok),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2, 3, 3],
            "partial_rotary_factor": 1.0,
        },
    )
    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        image_size=56,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    cfg = transformers.Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )
    torch.manual_seed(seed)
    video = video_config(ip, "Glm4vVideoProcessor")
    return save(
        out,
        transformers.Glm4vForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "Glm4vProcessor",
        GLM_TEMPLATE,
        video=video,
    )
