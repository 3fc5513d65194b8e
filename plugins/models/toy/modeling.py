"""The toy organism's vocabulary, tokenizer and module, where its weights are, and the
validation bench's recipes (what the plugin and the training share)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mch.api import MchError

WEIGHTS_ROOT = Path(__file__).parent.parent / "weights"
WEIGHTS = WEIGHTS_ROOT / "toy"

# The validation bench (science.md §7): organisms that share the toy's encoder and decoder and
# differ only in the adapter. `emotion_captions`: an adapter trained, from the toy adapter's own
# initial weights, on captions of which that fraction also name the emotion (the dose-response
# family; toy_emotion is the positive control); `scale` / `rotation_deg`: the toy's adapter
# with its outputs rescaled, or rotated by that angle in every plane of a fixed random set of
# orthogonal planes (a geometric mismatch against the embeddings, decoder fixed).
ORGANISMS: dict[str, dict[str, float]] = {
    "toy_emotion_0": {"emotion_captions": 0.0},
    "toy_emotion_10": {"emotion_captions": 0.1},
    "toy_emotion_50": {"emotion_captions": 0.5},
    "toy_emotion": {"emotion_captions": 1.0},
    "toy_scaled": {"scale": 2.0},
    "toy_rotated": {"rotation_deg": 45.0},
}
ORGANISM_SEED = 1  # the training batches' generator (numpy) of every trained organism
ORGANISM_STEPS = 1200  # adapter steps, as the toy's own adapter
ROTATION_SEED = 7
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", "<audio>"]
FUNCTION_WORDS = ["the", "word", "is", "speaker", "sounds", "says", "and", "a", "describe", "this", "sound", "."]
EXTRACT_PROMPT = "describe this sound"


def vocabulary() -> list[str]:
    from mch.plugins.attributes import toy as world

    words = list(FUNCTION_WORDS) + world.CONTENT + world.SPEAKERS
    for vs in world.EMOTIONS.values():
        words += vs
    return SPECIAL + sorted(set(words), key=words.index)


class WordTokenizer:
    """Whitespace word-level tokenizer over the toy vocabulary (no subwords needed)."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab
        self.index = {w: i for i, w in enumerate(vocab)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id, self.audio_id = (self.index[t] for t in SPECIAL)

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(w, self.unk_id) for w in text.split()]
        if self.unk_id in ids:
            raise MchError(f"toy tokenizer: text {text!r} has words outside the toy vocabulary")
        return ids


class ToyMLLM(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        f, e, d = cfg["n_channels"], cfg["encoder_dim"], cfg["hidden_size"]
        self.encoder = nn.Sequential(nn.Linear(f, 48), nn.Tanh(), nn.Linear(48, e), nn.Tanh())
        self.adapter = nn.Linear(e, d)
        self.llm = LlamaForCausalLM(LlamaConfig(**cfg["llm"]))

    def embed(
        self, frames: torch.Tensor, input_ids: torch.Tensor, audio_mask: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """Token embeddings with each sample's adapter outputs written over its <audio> slots."""
        tokens = self.adapter(self.encoder(frames))
        emb = self.llm.model.embed_tokens(input_ids)
        return emb.masked_scatter(audio_mask[..., None], tokens[frame_mask].to(emb.dtype))

    def forward(self, frames, frame_mask, input_ids, audio_mask, attention_mask):
        emb = self.embed(frames, input_ids, audio_mask, frame_mask)
        return self.llm.model(inputs_embeds=emb, attention_mask=attention_mask)


def default_config(vocab_size: int) -> dict[str, Any]:
    return {
        "n_channels": 16,
        "encoder_dim": 32,
        "hidden_size": 64,
        "llm": {
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "max_position_embeddings": 64,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    }


def pad_frames(arrays: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, 16) frames zero-padded at the end and the (B, T) mask of the real ones."""
    T = max(a.shape[0] for a in arrays)
    frames = torch.zeros(len(arrays), T, 16)
    mask = torch.zeros(len(arrays), T, dtype=torch.bool)
    for i, a in enumerate(arrays):
        frames[i, : a.shape[0]] = a
        mask[i, : a.shape[0]] = True
    return frames, mask


def pad_targets(
    seqs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) token ids right-padded with `pad_id` and their labels padded with -100."""
    L = max(map(len, seqs))
    ids = torch.full((len(seqs), L), pad_id)
    labels = torch.full((len(seqs), L), -100)
    for i, (q, t) in enumerate(zip(seqs, targets, strict=True)):
        ids[i, : len(q)] = torch.tensor(q)
        labels[i, : len(t)] = torch.tensor(t)
    return ids, labels
