"""The reference's LoRA file (one `model.safetensors`) written as a PEFT adapter directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mch.api import MchError


def _lora_to_peft_dir(src: Path, dst: Path) -> None:
    """Write the reference's LoRA file (`model.safetensors` with "lora" keys, r 16, alpha 32,
    q/k/v/o) as a PEFT adapter directory."""
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(src / "model.safetensors")).items() if "lora" in k}
    if not state:
        raise MchError(f"--adapter {src}: model.safetensors has no LoRA tensors (no key contains 'lora')")
    out: dict[str, torch.Tensor] = {}
    ranks = set()
    for k, v in state.items():
        k = k.replace(".default.", ".")
        if k.startswith("language_model."):
            k = k[len("language_model.") :]
        if not k.startswith("base_model.model."):
            k = "base_model.model." + k
        if ".lora_A." in k:
            ranks.add(int(v.shape[0]))
        out[k] = v.contiguous()
    if len(ranks) != 1:
        raise MchError(f"--adapter {src}: its LoRA tensors have inconsistent ranks {sorted(ranks)}")
    targets = sorted({k.split(".lora_")[0].rsplit(".", 1)[-1] for k in out})
    cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": ranks.pop(),
        "lora_alpha": 32,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": targets,
    }
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(out, str(dst / "adapter_model.safetensors"))
