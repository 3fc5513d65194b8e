"""What every tiny checkpoint builder shares: the smoke mark, the decoder's size, a trained
byte-level BPE tokenizer, and the release layout of processor files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def mark_smoke(checkpoint_dir: str | Path) -> Path:
    """Mark a random-weight checkpoint as such in its config.json (`mch.checkpoints.SMOKE_KEY`)."""
    from mch.checkpoints import SMOKE_KEY

    d = Path(checkpoint_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg[SMOKE_KEY] = "random weights built by mch.plugins.models.tiny: numbers from this checkpoint measure no model"
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


# The decoder of every tiny checkpoint: 2 layers of width 64, grouped-query attention.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def token_config(tok: Any) -> dict[str, Any]:
    """The vocabulary size and special token ids of `tok`, as a decoder config takes them."""
    return dict(
        vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )


_VLM_CORPUS = [
    "a photo of a dog on the grass",
    "a cat sits on a red chair",
    "two people ride bikes in the street",
    "a plate of food with a fork",
    "the image shows a man holding a kite",
    "a bus parked near a building",
    "the speaker sounds angry",
    "the speaker sounds happy",
    "the speaker sounds sad",
    "the speaker sounds neutral",
    "the speaker sounds afraid",
    "the speaker sounds disgusted",
    "the speaker is a woman",
    "the speaker is a man",
    "the sound is a dog barking",
    "the sound is rain",
    "it is eleven o'clock",
    "that is exactly what happened",
    "Describe this image.",
    "Describe this audio.",
    "USER: ASSISTANT: system user assistant",
    "You are a helpful assistant.",
    "Audio 1: what is in it?",
    "the word is cat",
    "the object is a person",
    "The image shows",
    "The speaker sounds",
    "small medium large concentrated moderate dispersed",
    "0 1 2 3 4 5 6 7 8 9",
    "a an the of and to in is was for on with as at by",
]


def bpe_tokenizer(
    specials: list[str],
    bos: str | None = None,
    vocab_size: int = 400,
    corpus: Sequence[str] = _VLM_CORPUS,
    **special_attrs: Any,
) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` trained on a few sentences (`corpus`), with
    `specials` as special tokens (ids 0..), BOS prepended when `bos` is given, and the named
    special attributes (bos_token=..., pad_token=..., extra_special_tokens=..., chat_template=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(list(corpus) * 4, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_attrs)


def release_processor_files(out: Path, key: str) -> None:
    """Move the sub-processor's settings from processor_config.json to
    preprocessor_config.json, the layout of the released checkpoints (saved by transformers 4)."""
    pc = out / "processor_config.json"
    if not pc.exists():
        return
    cfg = json.loads(pc.read_text())
    sub = cfg.pop(key, None)
    if sub is None:
        return
    sub.setdefault("processor_class", cfg.get("processor_class"))
    (out / "preprocessor_config.json").write_text(json.dumps(sub, indent=2) + "\n")
    pc.write_text(json.dumps(cfg, indent=2) + "\n")


def whisper_features() -> Any:
    """The 128-bin Whisper feature extractor of the Qwen audio releases (16 kHz, 30 s windows,
    with the attention mask of the real frames)."""
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400, return_attention_mask=True
    )
