"""Tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Qwen2.5-Omni (thinker) checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..tiny.common import bpe_tokenizer, whisper_features
from ..tiny.qwen2audio import QWEN_AUDIO_SPECIALS, QWEN_AUDIO_TOKENS
from .common import TEXT, chatml, save, token_config, token_ids, video_config

# the special tokens of the Qwen2-VL family's tokenizers, in their id order
QWEN_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def qwen_vl(out: Path, seed: int, version: str) -> Path:
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = bpe_tokenizer(
        QWEN_VL_SPECIALS,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )
    # patch 14, 2x2 merge: one token per 28 px square; 1-6 tokens for the tiny samples
    ip = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 6, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = token_ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text = dict(
        TEXT,
        **token_config(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    vision: dict[str, Any] = dict(
        depth=2, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2
    )
    if version == "qwen2_vl":
        vision.update(embed_dim=32)
        cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2VLForConditionalGeneration, "Qwen2VLProcessor"
    elif version == "qwen2_5_vl":
        vision.update(
            hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=56, fullatt_block_indexes=[1]
        )
        cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor"
    else:  # qwen3_vl: patch 16, deepstack from vision layer 0
        ip = Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=32 * 32 * 6, patch_size=16, merge_size=2, temporal_patch_size=2
        )
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            out_hidden_size=64,
            num_heads=2,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0],
        )
        text.update(
            head_dim=16,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
        )
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen3VLForConditionalGeneration, "Qwen3VLProcessor"
    torch.manual_seed(seed)
    video = video_config(ip, "Qwen2VLVideoProcessor")
    return save(
        out,
        cls(cfg),
        tok,
        {"image_processor": ip},
        proc,
        chatml(image="<|vision_start|><|image_pad|><|vision_end|>"),
        video=video,
    )


def qwen2_5_omni(out: Path, seed: int) -> Path:
    """The Qwen2.5-Omni thinker (`Qwen2_5OmniThinkerForConditionalGeneration`): Whisper-style
    audio tower (2x avg pool, then `proj` into the LLM width), a vision tower it does not use
    here, Qwen2 decoder with time-aligned M-RoPE; 128-bin Whisper features, clips padded to 30 s."""
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = [*QWEN_AUDIO_SPECIALS, "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]
    tok = bpe_tokenizer(
        specials,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            **QWEN_AUDIO_TOKENS,
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
        },
    )
    fe = whisper_features()
    ip = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=28 * 28 * 6, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    ids = token_ids(
        tok,
        "<|AUDIO|>",
        "<|IMAGE|>",
        "<|VIDEO|>",
        "<|audio_bos|>",
        "<|audio_eos|>",
        "<|vision_bos|>",
        "<|vision_eos|>",
        "<|im_start|>",
    )
    audio = dict(
        num_mel_bins=128,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        d_model=32,
        output_dim=64,
        n_window=50,
        max_source_positions=1500,
    )
    vision = dict(
        depth=1,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        fullatt_block_indexes=[0],
        window_size=56,
    )
    text = dict(
        TEXT,
        **token_config(tok),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    cfg = transformers.Qwen2_5OmniThinkerConfig(
        audio_config=audio,
        vision_config=vision,
        text_config=text,
        audio_token_index=ids["<|AUDIO|>"],
        image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"],
        vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"],
        user_token_id=ids["<|im_start|>"],
    )
    torch.manual_seed(seed)
    video = video_config(ip, "Qwen2VLVideoProcessor")
    return save(
        out,
        transformers.Qwen2_5OmniThinkerForConditionalGeneration(cfg),
        tok,
        {"feature_extractor": fe, "image_processor": ip},
        "Qwen2_5OmniProcessor",
        chatml(audio="<|audio_bos|><|AUDIO|><|audio_eos|>", image="<|vision_bos|><|IMAGE|><|vision_eos|>"),
        video=video,
    )
