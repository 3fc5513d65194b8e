"""What the tiny builders of the generic plugin's families share: the decoder size, the
ChatML and one-turn chat templates, and `save` (the release's on-disk layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tiny.common import TEXT as DECODER, mark_smoke, token_config

TEXT = dict(DECODER, max_position_embeddings=4096)
__all__ = ["CHATML", "TEXT", "chatml", "save", "token_config", "token_ids", "turns", "video_config"]

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{IMAGE}{% elif content['type'] == 'audio' %}{AUDIO}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chatml(image: str = "", audio: str = "") -> str:
    return CHATML.replace("{IMAGE}", image).replace("{AUDIO}", audio)


def save(
    out: Path,
    model: Any,
    tokenizer: Any,
    parts: dict[str, Any],
    processor_class: str,
    chat_template: str | None,
    processor_kwargs: dict[str, Any] | None = None,
    video: dict[str, Any] | None = None,
) -> Path:
    """The release layout: weights and config, tokenizer files, each sub-processor's
    preprocessor config naming the processor class, the chat template, processor kwargs in
    processor_config.json, and the video processor's config (which mch never loads)."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    nested: dict[str, Any] = {}
    if len(parts) == 1:  # one sub-processor: preprocessor_config.json, as transformers 4 saved releases
        (part,) = parts.values()
        part.save_pretrained(out)
        cfg_file = out / "preprocessor_config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["processor_class"] = processor_class
        cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    else:  # several: nested in processor_config.json, as transformers 5 saves them
        nested = {name: part.to_dict() for name, part in parts.items()}
        processor_kwargs = {**(processor_kwargs or {}), **nested}
    if chat_template is not None:
        (out / "chat_template.jinja").write_text(chat_template)
    if processor_kwargs:
        (out / "processor_config.json").write_text(
            json.dumps({**processor_kwargs, "processor_class": processor_class}, indent=2) + "\n"
        )
    if video is not None:
        (out / "video_preprocessor_config.json").write_text(
            json.dumps({**video, "processor_class": processor_class}, indent=2) + "\n"
        )
    return mark_smoke(out)  # random weights: runs on it are labelled smoke runs, never a model's numbers


def token_ids(tok: Any, *names: str) -> dict[str, int]:
    return {n: tok.convert_tokens_to_ids(n) for n in names}


def video_config(image_processor: Any, video_processor_type: str) -> dict[str, Any]:
    """A video processor's config with the image processor's settings (the Qwen-VL and GLM
    releases share them between the two)."""
    video = {**image_processor.to_dict(), "video_processor_type": video_processor_type}
    video.pop("image_processor_type", None)
    return video


def turns(user: str, end: str, assistant: str, image: str, bos: str = "") -> str:
    """A one-turn chat template: `user`, the content (image marker, text), `end`, then the
    generation prompt `assistant`."""
    return (
        bos + "{% for message in messages %}{% if message['role'] == 'user' %}" + user + "{% endif %}"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
        + image
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        + end
        + "{% endfor %}{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )
