"""A tiny idefics3 checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, save, token_config, turns


def idefics3(out: Path, seed: int, smol: bool = False) -> Path:
    """Idefics3 (`HuggingFaceM4/Idefics3-8B-Llama3`) / SmolVLM (`HuggingFaceTB/SmolVLM-Instruct`):
    SigLIP-style encoder on 56 px tiles (image split into up to 2x2 tiles + a global view),
    connector = pixel shuffle (scale 2) + linear, Llama decoder; `<row_i_col_j>` tile tags."""
    import torch
    import transformers

    tags = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = [
        "<|endoftext|>",
        "<|begin_of_text|>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<end_of_utterance>",
        "<video>",
        *tags,
    ]
    tok = bpe_tokenizer(
        specials,
        bos="<|begin_of_text|>",
        bos_token="<|begin_of_text|>",
        eos_token="<end_of_utterance>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>"},
    )
    kw = dict(size={"longest_edge": 112}, max_image_size={"longest_edge": 56}, do_image_splitting=True)
    if smol:
        from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil as IP
    else:
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil as IP
    ip = IP(**kw)
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14
    )
    text = transformers.LlamaConfig(**TEXT, **token_config(tok))
    template = turns("User:", "<end_of_utterance>\n", "Assistant:", "<image>")
    torch.manual_seed(seed)
    if smol:
        cfg = transformers.SmolVLMConfig(
            vision_config=vision, text_config=text, scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>")
        )
        video = {"video_processor_type": "SmolVLMVideoProcessor", "size": {"longest_edge": 112}}
        return save(
            out,
            transformers.SmolVLMForConditionalGeneration(cfg),
            tok,
            {"image_processor": ip},
            "SmolVLMProcessor",
            template,
            processor_kwargs={"image_seq_len": 4},
            video=video,
        )
    cfg = transformers.Idefics3Config(
        vision_config=vision, text_config=text, scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>")
    )
    return save(
        out,
        transformers.Idefics3ForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "Idefics3Processor",
        template,
        processor_kwargs={"image_seq_len": 4},
    )
