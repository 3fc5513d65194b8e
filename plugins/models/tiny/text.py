"""Tiny text-only baselines in the Llama-3.1 and Vicuna-v1.5 layouts (`make_tiny_llama`,
`make_tiny_vicuna`)."""

from __future__ import annotations

from pathlib import Path

from .common import TEXT, bpe_tokenizer, mark_smoke, token_config


def _make_tiny_llama_lm(out_dir: str | Path, bos: str, eos: str, seed: int) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = bpe_tokenizer(["<unk>", bos, eos], bos=bos, bos_token=bos, eos_token=eos, unk_token="<unk>")
    cfg = LlamaConfig(**TEXT, **token_config(tok), max_position_embeddings=1024)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return mark_smoke(out)


def make_tiny_llama(out_dir: str | Path, seed: int = 0) -> Path:
    """Llama-3.1 base layout (`meta-llama/Llama-3.1-8B`): LlamaForCausalLM, BOS `<|begin_of_text|>`."""
    return _make_tiny_llama_lm(out_dir, "<|begin_of_text|>", "<|end_of_text|>", seed)


def make_tiny_vicuna(out_dir: str | Path, seed: int = 0) -> Path:
    """Vicuna-7B-v1.5 layout (`lmsys/vicuna-7b-v1.5`): LlamaForCausalLM, BOS `<s>`."""
    return _make_tiny_llama_lm(out_dir, "<s>", "</s>", seed)
