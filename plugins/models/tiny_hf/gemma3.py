"""A tiny gemma3 checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, save, token_config, token_ids, turns


def gemma3(out: Path, seed: int) -> Path:
    """Gemma 3 (`google/gemma-3-4b-it`): SigLIP (56 px, 4x4 patches), average pool to 2x2
    tokens + RMSNorm + linear, Gemma 3 decoder (sliding + global layers), BOS `<bos>`."""
    import torch
    import transformers
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    specials = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ]
    tok = bpe_tokenizer(
        specials,
        bos="<bos>",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    ip = Gemma3ImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    vision = transformers.SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        vision_use_head=False,
    )
    text = transformers.Gemma3TextConfig(
        **{**TEXT, "num_hidden_layers": 2},
        head_dim=16,
        **token_config(tok),
        sliding_window=512,
        layer_types=["sliding_attention", "full_attention"],
    )
    ids = token_ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    cfg = transformers.Gemma3Config(
        vision_config=vision,
        text_config=text,
        mm_tokens_per_image=4,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    torch.manual_seed(seed)
    model = transformers.Gemma3ForConditionalGeneration(cfg)
    with torch.no_grad():  # transformers initialises the projection to zeros: the image would not reach the LLM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    template = turns("<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>model\n", "<start_of_image>")
    return save(
        out, model, tok, {"image_processor": ip}, "Gemma3Processor", template, processor_kwargs={"image_seq_length": 4}
    )
