"""Finding checkpoints offline and loading PEFT adapters safely.

Shared by every model plugin: a checkpoint is a local directory or an HF id (+ revision)
looked up in the local HF cache only (mch never downloads at run time unless the user
sets MCH_ALLOW_DOWNLOAD=1); a missing one is one clear sentence naming what to pass.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .api import MchError


def one_line(exc: BaseException, max_len: int | None = None) -> str:
    """An exception raised while loading, as one line for an MchError: its type and the first
    line of its message (cut to `max_len`), and what to do when transformers refused a
    checkpoint's own code."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")[:max_len]
    if "trust_remote_code" in str(exc):
        line += "; it needs its own Python code, which mch runs only with --trust-remote-code"
    return line


def resolve_checkpoint(
    checkpoint: str, revision: str | None, model_name: str, allow_patterns: list[str] | None = None
) -> Path:
    """Local directory for `checkpoint` (a path, or an HF id found in the local HF cache)."""
    p = Path(checkpoint).expanduser()
    if p.exists():
        return p
    if checkpoint.startswith((".", "/", "~")) or checkpoint.count("/") != 1:
        raise MchError(
            f"model {model_name!r}: checkpoint path {checkpoint} does not exist; "
            f"pass --checkpoint with a local directory holding the model"
        )
    try:
        from huggingface_hub import snapshot_download

        local_only = os.environ.get("MCH_ALLOW_DOWNLOAD") != "1"
        return Path(
            snapshot_download(checkpoint, revision=revision, local_files_only=local_only, allow_patterns=allow_patterns)
        )
    except Exception:  # noqa: BLE001 - every hub failure means the same thing to the user
        rev = f" at revision {revision}" if revision else ""
        raise MchError(
            f"model {model_name!r}: checkpoint {checkpoint}{rev} is not in the local Hugging Face cache "
            f"and mch does not download at run time; download it (e.g. `huggingface-cli download {checkpoint}`) "
            f"or pass --checkpoint /path/to/a/local/copy"
        ) from None


def load_lora_adapter(module: Any, adapter_dir: str | Path, merge: bool = True) -> Any:
    """Apply a PEFT LoRA adapter directory to `module` (the LLM) and, by default, merge it so
    every stage path stays valid. Refuses an adapter whose keys do not all match (the
    reference silently loaded nothing)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    d = Path(adapter_dir)
    cfg_path = d / "adapter_config.json"
    weights = d / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise MchError(
            f"--adapter {d}: expected a PEFT adapter directory with adapter_config.json and adapter_model.safetensors"
        )
    from safetensors.torch import load_file

    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MchError(f"--adapter {d}: only LoRA adapters are supported, this one is {cfg.get('peft_type')}")
    keep = {k: v for k, v in cfg.items() if k in LoraConfig.__dataclass_fields__ and k not in ("peft_type",)}
    keep.pop("base_model_name_or_path", None)
    keep.pop("revision", None)
    try:
        peft_model = get_peft_model(module, LoraConfig(**keep))
    except ValueError as exc:
        raise MchError(f"--adapter {d}: its target modules do not exist in this model ({exc})") from None
    state = load_file(str(weights))
    try:
        result = set_peft_model_state_dict(peft_model, state)
    except RuntimeError as exc:  # shape mismatches surface as RuntimeError from load_state_dict
        first = str(exc).strip().splitlines()[-1][:200]
        raise MchError(f"--adapter {d}: its weights do not fit this model ({first})") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    lora_keys = {k for k in peft_model.state_dict() if "lora_" in k}
    missing = [k for k in getattr(result, "missing_keys", []) or [] if k in lora_keys]
    if unexpected or missing or not state:
        bad = (unexpected or missing or ["(empty adapter)"])[0]
        raise MchError(
            f"--adapter {d}: its weights do not match this model ({len(unexpected)} unexpected, "
            f"{len(missing)} missing LoRA keys; first: {bad})"
        )
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


# A random-weight checkpoint built for tests (mch.plugins.models.tiny) says so in its
# config.json; records then carry model.smoke and the leaderboard never shows it as a model.
SMOKE_KEY = "mch_smoke_test"


def is_smoke_checkpoint(checkpoint: Any) -> bool:
    """Whether `checkpoint` is a local directory whose config.json carries SMOKE_KEY."""
    try:
        cfg = Path(str(checkpoint)).expanduser() / "config.json"
        return cfg.is_file() and bool(json.loads(cfg.read_text()).get(SMOKE_KEY))
    except (OSError, ValueError, AttributeError):
        return False


def check_architecture(model: str, path: Any, hf_class: str) -> None:
    """Raise MchError when the checkpoint directory `path` has a config.json naming other
    architectures than `hf_class` (another model's checkpoint; without this, an AttributeError
    deep in the processor). No config or no `architectures`: nothing to say here."""
    cfg = Path(str(path)).expanduser() / "config.json"
    try:
        archs = (json.loads(cfg.read_text()).get("architectures") or []) if cfg.is_file() else []
    except (OSError, ValueError, AttributeError):
        return  # transformers says what is wrong with it when it loads
    if isinstance(archs, list) and archs and hf_class not in archs:
        raise MchError(
            f"model {model!r}: --checkpoint {path} is a {', '.join(map(str, archs))} checkpoint, not {hf_class}; "
            f"pass a {model} checkpoint, or the --model of that architecture (`mch list models`)"
        )
