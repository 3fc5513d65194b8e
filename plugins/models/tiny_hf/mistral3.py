"""A tiny mistral3 checkpoint."""

from __future__ import annotations

from pathlib import Path

from ..tiny.common import bpe_tokenizer
from .common import TEXT, save, token_config, turns


def mistral3(out: Path, seed: int) -> Path:
    """Mistral Small 3.1 (`mistralai/Mistral-Small-3.1-24B-Instruct-2503`): Pixtral encoder,
    RMSNorm + 2x2 patch merger + MLP projector, Mistral decoder; [IMG] per merged patch,
    [IMG_BREAK] per row, [IMG_END]."""
    import torch
    import transformers
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>"]
    tok = bpe_tokenizer(specials, bos="<s>", bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    ip = PixtralImageProcessorPil(size={"longest_edge": 56}, patch_size=14)
    vision = transformers.PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
        image_size=56,
        patch_size=14,
    )
    text = transformers.MistralConfig(
        **TEXT,
        **token_config(tok),
        head_dim=16,
    )
    cfg = transformers.Mistral3Config(
        vision_config=vision,
        text_config=text,
        spatial_merge_size=2,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    return save(
        out,
        transformers.Mistral3ForConditionalGeneration(cfg),
        tok,
        {"image_processor": ip},
        "PixtralProcessor",
        turns("[INST]", "[/INST]", "", "[IMG]"),
        processor_kwargs={
            "patch_size": 14,
            "spatial_merge_size": 2,
            "image_token": "[IMG]",
            "image_break_token": "[IMG_BREAK]",
            "image_end_token": "[IMG_END]",
        },
    )
