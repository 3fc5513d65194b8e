"""Tiny LLaVA-NeXT and LLaVA-OneVision checkpoints (anyres tiles)."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from ..tiny.llava import llava_tokenizer
from .common import TEXT, chatml, save, token_config

VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %} "
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# anyres grids of 42 px tiles: a 1x1, 1x2, 2x1 or 2x2 layout plus the base tile
PINPOINTS = [[42, 42], [42, 84], [84, 42], [84, 84]]


def llava_next(out: Path, seed: int) -> Path:
    """LLaVA-NeXT (`llava-hf/llava-v1.6-vicuna-7b-hf`): CLIP (3 layers, feature layer -2, CLS
    dropped), anyres tiles of 42 px, GELU MLP, Llama with BOS `<s>`."""
    import torch
    import transformers
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tok = llava_tokenizer()
    ip = LlavaNextImageProcessorPil(
        size={"shortest_edge": 42}, crop_size={"height": 42, "width": 42}, image_grid_pinpoints=PINPOINTS
    )
    vision = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=42,
        patch_size=14,
        projection_dim=16,
    )
    text = transformers.LlamaConfig(**TEXT, **token_config(tok))
    cfg = transformers.LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=9,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    return save(
        out,
        transformers.LlavaNextForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "LlavaNextProcessor",
        VICUNA_TEMPLATE,
        processor_kwargs={
            "patch_size": 14,
            "vision_feature_select_strategy": "default",
            "num_additional_image_tokens": 1,
            "image_token": "<image>",
        },
    )


def llava_onevision(out: Path, seed: int) -> Path:
    """LLaVA-OneVision (`llava-hf/llava-onevision-qwen2-7b-ov-hf`): SigLIP (last layer, all
    patches), anyres-max-9 tiles of 42 px, GELU MLP, Qwen2 with ChatML."""
    import torch
    import transformers
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
    )
    ip = LlavaOnevisionImageProcessorPil(size={"height": 42, "width": 42}, image_grid_pinpoints=PINPOINTS)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=42, patch_size=14
    )
    text = transformers.Qwen2Config(**TEXT, **token_config(tok))
    cfg = transformers.LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_grid_pinpoints=PINPOINTS,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )
    torch.manual_seed(seed)
    video = {"video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 42, "width": 42}}
    return save(
        out,
        transformers.LlavaOnevisionForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "LlavaOnevisionProcessor",
        chatml(image="<image>\n"),
        processor_kwargs={"num_image_tokens": 9, "vision_feature_select_strategy": "full"},
        video=video,
    )
