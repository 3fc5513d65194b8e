"""The toy model organism: a tiny multimodal LLM whose decoder only ever saw text.

    ToyMLLM
    ├── encoder   frozen random 2-layer tanh MLP per frame   (16 -> 32)     stage `encoder`
    ├── adapter   Linear (32 -> 64), one token per frame                    stage `adapter`
    └── llm       LlamaForCausalLM (4 layers, hidden 64, word-level vocab)
        ├── model.embed_tokens                                           (text view: `adapter`)
        ├── model.layers.{0..3}                                          stages `llm.0`..`llm.3`
        └── model.norm                                                   stage `llm.final`

Training (`python -m mch.plugins.models.toy train --out DIR`, bit-for-bit reproducible on
one CPU thread): (1) the decoder learns a text-only corpus that has words for every class
of every factor ("the word is cat .", "the speaker sounds angry .", "the speaker is bob .");
(2) the adapter alone (encoder and decoder frozen) learns to make the decoder say the
caption "the word is <content> ." after the modality tokens. Speaker and emotion are never
in any caption, so the decoder has no reason to read them: the paper's phenomenon, built
in. The encoder is random and the adapter full-rank, so both hidden factors stay linearly
present at `adapter`. The decoder can name every factor from text (a speaker or mood named
earlier in a document is carried forward), so what it cannot do with the modality tokens is
a matter of what the adapter gives it, not of its vocabulary.

The validation bench (science.md §7, `ORGANISMS`, `mch toy-bench`): organisms with the toy's
encoder and decoder and another adapter: trained on captions of which 0, 10, 50 or 100%
also name the mood (`toy_emotion_*`, `toy_emotion`; `python -m mch.plugins.models.toy
organism NAME`, bit-for-bit reproducible too), or the toy's adapter with its outputs
rescaled or rotated (`toy_scaled`, `toy_rotated`). Each ships only its adapter.

Prompts: modal = <bos> <audio>×T "describe this sound"; text view = <bos> + caption. The
paper and default protocols differ only in span (all vs modality), as the toy has no chat
template. GMI prompts = <bos> <audio>×T + query, scored with the shared-prefix scorer.

Modules: `modeling` (the vocabulary, the tokenizer, `ToyMLLM`, the weights' places and the
bench's recipes), `plugin` (`ToyModel`), `training` (`train`, `train_organism`) and
`__main__` (the command line).
"""

from __future__ import annotations

from .modeling import (
    EXTRACT_PROMPT,
    ORGANISM_SEED,
    ORGANISM_STEPS,
    ORGANISMS,
    ROTATION_SEED,
    WEIGHTS,
    WEIGHTS_ROOT,
    ToyMLLM,
    WordTokenizer,
    default_config,
    vocabulary,
)
from .plugin import ToyModel
from .training import train, train_adapter, train_organism

__all__ = [
    "EXTRACT_PROMPT",
    "ORGANISMS",
    "ORGANISM_SEED",
    "ORGANISM_STEPS",
    "ROTATION_SEED",
    "WEIGHTS",
    "WEIGHTS_ROOT",
    "ToyMLLM",
    "ToyModel",
    "WordTokenizer",
    "default_config",
    "train",
    "train_adapter",
    "train_organism",
    "vocabulary",
]
