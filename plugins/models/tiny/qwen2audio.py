"""A tiny Qwen2-Audio checkpoint in the release layout (`make_tiny_qwen2audio`)."""

from __future__ import annotations

from pathlib import Path

from .common import TEXT, bpe_tokenizer, mark_smoke, release_processor_files, token_config, whisper_features

# the special tokens of the Qwen audio tokenizers (Qwen2-Audio; Qwen2.5-Omni adds vision's), in id order
QWEN_AUDIO_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
QWEN_AUDIO_TOKENS = {"audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>"}


def make_tiny_qwen2audio(out_dir: str | Path, seed: int = 0) -> Path:
    """Qwen2-Audio layout (`Qwen/Qwen2-Audio-7B-Instruct`): Whisper-style encoder (2 layers x
    32 but the real 1500 positions, so every clip is still padded to 3000 mel frames),
    linear projector, 2-layer Qwen2, 128-bin Whisper feature extractor, the processor's
    ChatML template, no BOS (like the release)."""
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(
        QWEN_AUDIO_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=QWEN_AUDIO_TOKENS
    )
    fe = whisper_features()
    proc = Qwen2AudioProcessor(feature_extractor=fe, tokenizer=tok)  # no template given: the class's ChatML one
    audio = Qwen2AudioEncoderConfig(
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        num_mel_bins=128,
        max_source_positions=1500,
    )
    text = Qwen2Config(**TEXT, **token_config(tok), max_position_embeddings=2048)
    cfg = Qwen2AudioConfig(
        audio_config=audio, text_config=text, audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>")
    )
    torch.manual_seed(seed)
    Qwen2AudioForConditionalGeneration(cfg).eval().save_pretrained(out)
    proc.save_pretrained(out)
    release_processor_files(out, "feature_extractor")
    return mark_smoke(out)
