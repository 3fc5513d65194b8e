"""Tiny, randomly initialised checkpoints of the generic plugin's families (`hf_families`),
saved in their releases' on-disk layout (config + safetensors + tokenizer + processor files:
preprocessor_config.json, chat_template.jinja, video_preprocessor_config.json where the
release has a video processor), for tests and offline runs: `make_tiny_hf(family, out_dir)`.

Two decoder layers of width 64, vision towers of width 32, a byte-level BPE tokenizer with
the family's special tokens, the release's processor class with its PIL image processor,
and a chat template of the release's shape (system/user/assistant turns, the media marker
where the release puts it). Numbers from these models mean nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .tiny import bpe_tokenizer

TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=4096)

CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
          "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
          "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
          "{% if content['type'] == 'image' %}{IMAGE}{% elif content['type'] == 'audio' %}{AUDIO}"
          "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chatml(image: str = "", audio: str = "") -> str:
    return CHATML.replace("{IMAGE}", image).replace("{AUDIO}", audio)


def _save(out: Path, model: Any, tokenizer: Any, parts: dict[str, Any], processor_class: str,
          chat_template: str | None, processor_kwargs: dict[str, Any] | None = None,
          video: dict[str, Any] | None = None) -> Path:
    """The release layout: weights and config, tokenizer files, each sub-processor's
    preprocessor config naming the processor class, the chat template, processor kwargs in
    processor_config.json, and the video processor's config (which mch never loads)."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    for part in parts.values():
        part.save_pretrained(out)
        cfg_file = out / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["processor_class"] = processor_class
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    if chat_template is not None:
        (out / "chat_template.jinja").write_text(chat_template)
    if processor_kwargs:
        (out / "processor_config.json").write_text(json.dumps({**processor_kwargs, "processor_class": processor_class},
                                                              indent=2) + "\n")
    if video is not None:
        (out / "video_preprocessor_config.json").write_text(json.dumps({**video, "processor_class": processor_class},
                                                                       indent=2) + "\n")
    return out


def _ids(tok: Any, *names: str) -> dict[str, int]:
    return {n: tok.convert_tokens_to_ids(n) for n in names}


# --------------------------------------------------------------------------- Qwen2-VL family


def _qwen_vl(out: Path, seed: int, version: str) -> Path:
    import torch
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tok = bpe_tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                                              "vision_bos_token": "<|vision_start|>",
                                              "vision_eos_token": "<|vision_end|>"})
    # patch 14, 2x2 merge: one token per 28 px square; 1-6 tokens for the tiny samples
    ip = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=28 * 28 * 6, patch_size=14, merge_size=2,
                                  temporal_patch_size=2)
    ids = _ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    text = dict(TEXT, vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision: dict[str, Any] = dict(depth=2, hidden_size=64, num_heads=2, patch_size=14, spatial_merge_size=2,
                                  temporal_patch_size=2)
    if version == "qwen2_vl":
        vision.update(embed_dim=32)
        cfg = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2VLForConditionalGeneration, "Qwen2VLProcessor"
    elif version == "qwen2_5_vl":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=56,
                      fullatt_block_indexes=[1])
        cfg = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor"
    else:  # qwen3_vl: patch 16, deepstack from vision layer 0
        ip = Qwen2VLImageProcessorPil(min_pixels=32 * 32, max_pixels=32 * 32 * 6, patch_size=16, merge_size=2,
                                      temporal_patch_size=2)
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2, patch_size=16,
                      spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                      deepstack_visual_indexes=[0])
        text.update(head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                  "mrope_section": [2, 3, 3], "mrope_interleaved": True})
        cfg = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        cls, proc = transformers.Qwen3VLForConditionalGeneration, "Qwen3VLProcessor"
    torch.manual_seed(seed)
    video = {**ip.to_dict(), "video_processor_type": "Qwen2VLVideoProcessor"}
    video.pop("image_processor_type", None)
    return _save(out, cls(cfg), tok, {"image_processor": ip}, proc,
                 chatml(image="<|vision_start|><|image_pad|><|vision_end|>"), video=video)


BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "qwen2_vl": lambda out, seed: _qwen_vl(out, seed, "qwen2_vl"),
    "qwen2_5_vl": lambda out, seed: _qwen_vl(out, seed, "qwen2_5_vl"),
    "qwen3_vl": lambda out, seed: _qwen_vl(out, seed, "qwen3_vl"),
}


def make_tiny_hf(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint of `family` (a name in `hf_families.FAMILIES`) in `out_dir`."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; have {', '.join(BUILDERS)}")
    return BUILDERS[family](Path(out_dir), seed)
