"""Tiny, randomly initialised checkpoints of the paper's models, saved in their real release
formats, for tests, the CLI and end-to-end analysis runs offline (`make_tiny_<name>(out_dir)`).

Numbers from these models mean nothing; they exist so the real loading, preprocessing,
pooling and scoring code runs on every machine in seconds. Each builder marks its
checkpoint's config.json (`mark_smoke`): runs on it record `model.smoke: true`, and the
leaderboard never shows them as a model's measurement.

Modules: `common` (the smoke mark, the decoder's size, the BPE tokenizer, the release layout
of processor files) and one builder module per plugin: `ultravox`, `llava`, `qwen2audio`,
`text` (the Llama-3.1 and Vicuna baselines), `prismatic`. The generic plugin's families
have theirs in `mch.plugins.models.tiny_hf`.
"""

from __future__ import annotations

from .common import TEXT, bpe_tokenizer, mark_smoke, release_processor_files, token_config
from .llava import make_tiny_llava
from .prismatic import make_tiny_prismatic_dinov2, make_tiny_prismatic_siglip
from .qwen2audio import make_tiny_qwen2audio
from .text import make_tiny_llama, make_tiny_vicuna
from .ultravox import LLAMA3_SPECIAL_TOKENS, LLAMA31_CHAT_TEMPLATE, make_tiny_ultravox

__all__ = [
    "LLAMA31_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "TEXT",
    "bpe_tokenizer",
    "make_tiny_llama",
    "make_tiny_llava",
    "make_tiny_prismatic_dinov2",
    "make_tiny_prismatic_siglip",
    "make_tiny_qwen2audio",
    "make_tiny_ultravox",
    "make_tiny_vicuna",
    "mark_smoke",
    "release_processor_files",
    "token_config",
]
