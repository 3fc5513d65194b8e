"""Tiny, randomly initialised checkpoints of the generic plugin's families (`hf_families`),
saved in their releases' on-disk layout (config + safetensors + tokenizer + processor files:
preprocessor_config.json, chat_template.jinja, video_preprocessor_config.json where the
release has a video processor), for tests and offline runs: `make_tiny_hf(family, out_dir)`.

Two decoder layers of width 64, vision towers of width 32, a byte-level BPE tokenizer with
the family's special tokens, the release's processor class with its PIL image processor,
and a chat template of the release's shape (system/user/assistant turns, the media marker
where the release puts it). Numbers from these models mean nothing.

Modules: `common` (the decoder size, chat templates, `save`) and one builder module per
family (`qwen`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen2.5-Omni; `llava`: LLaVA-NeXT,
LLaVA-OneVision; `glm4v`, `aya_vision`, `mistral3`, `internvl`, `gemma3`, `idefics3`:
Idefics3 and SmolVLM); a new family is a module and a `BUILDERS` entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .aya_vision import aya_vision
from .gemma3 import gemma3
from .glm4v import glm4v
from .idefics3 import idefics3
from .internvl import internvl
from .llava import llava_next, llava_onevision
from .mistral3 import mistral3
from .qwen import qwen2_5_omni, qwen_vl

BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "qwen2_5_omni": qwen2_5_omni,
    "aya_vision": aya_vision,
    "mistral3": mistral3,
    "internvl": internvl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "smolvlm": lambda out, seed: idefics3(out, seed, smol=True),
    "llava_next": llava_next,
    "llava_onevision": llava_onevision,
    "glm4v": glm4v,
    "qwen2_vl": lambda out, seed: qwen_vl(out, seed, "qwen2_vl"),
    "qwen2_5_vl": lambda out, seed: qwen_vl(out, seed, "qwen2_5_vl"),
    "qwen3_vl": lambda out, seed: qwen_vl(out, seed, "qwen3_vl"),
}


def make_tiny_hf(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny checkpoint of `family` (a name in `hf_families.FAMILIES`) in `out_dir`."""
    if family not in BUILDERS:
        raise ValueError(f"no tiny builder for family {family!r}; have {', '.join(BUILDERS)}")
    return BUILDERS[family](Path(out_dir), seed)
