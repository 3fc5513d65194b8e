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
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mch.api import MchError, Sample
from mch.model import LossTerms, ModelPlugin, Pool, Prepared, ScoreParts, Scores
from mch.scoring import left_pad, score_shared_prefix

from ._hf_common import decoder_stage_paths

WEIGHTS_ROOT = Path(__file__).parent / "weights"
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


class ToyModel(ModelPlugin):
    modality = "speech"
    option_specs: dict = {}  # takes none
    datasets = ("toy",)  # it reads the toy world's frames, nothing else

    def _weights_dir(self) -> Path:
        ck = str(self.checkpoint)
        return WEIGHTS_ROOT / ck.split(":", 1)[1] if ck.startswith("builtin:") else Path(ck)

    @staticmethod
    def _base_dir(path: Path) -> Path:
        """An organism's base (encoder and decoder) weights: the toy's, shipped or beside it."""
        base = json.loads((path / "organism.json").read_text()).get("base", "toy")
        return (WEIGHTS_ROOT / base) if (WEIGHTS_ROOT / base).is_dir() else (path / base)

    def checkpoint_paths(self) -> list[Path]:
        path = self._weights_dir()  # an organism's own adapter and the base weights it runs on
        return [path, self._base_dir(path)] if (path / "organism.json").exists() else [path]

    def load(self) -> None:
        from safetensors.torch import load_file

        path = self._weights_dir()
        adapter_state = None
        if (path / "organism.json").exists():  # an organism of the validation bench: the toy with its own adapter
            adapter_state = load_file(str(path / "adapter.safetensors"))
            path = self._base_dir(path)
        if not (path / "model.safetensors").exists():
            raise MchError(
                f"model {self.spec.name!r}: no model.safetensors in {path}; pass --checkpoint with a "
                f"directory written by `python -m mch.plugins.models.toy train --out DIR` (or `organism`)"
            )
        cfg = json.loads((path / "config.json").read_text())
        self.tokenizer = WordTokenizer(json.loads((path / "vocab.json").read_text()))
        module = ToyMLLM(cfg)
        module.load_state_dict(load_file(str(path / "model.safetensors")))
        if adapter_state is not None:
            module.adapter.load_state_dict(adapter_state)
        if self.adapter:
            from mch.checkpoints import load_lora_adapter

            module.llm = load_lora_adapter(module.llm, self.adapter, merge=True)
        self.n_layers = cfg["llm"]["num_hidden_layers"]
        self.module = module.to(self.device, self.torch_dtype).eval()
        self.validate_stage_map("modal")
        self.validate_stage_map("text")

    def stage_map(self, view: str = "modal", protocol: str = "default") -> dict[str, str]:
        """The same hook points under both protocols."""
        stages = decoder_stage_paths("llm.model", getattr(self, "n_layers", 4))
        if view == "text":
            stages["adapter"] = "llm.model.embed_tokens"
        else:
            stages.update(encoder="encoder", adapter="adapter")
        return stages

    # -- inputs
    def _frames(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [torch.as_tensor(s.media) for s in samples]
        for s, a in zip(samples, arrays, strict=True):
            if a.dim() != 2 or a.shape[1] != 16:
                raise MchError(
                    f"model 'toy': sample {s.sample_id} has frames of shape {tuple(a.shape)}, "
                    f"expected (T, 16); the toy model reads the `toy` dataset"
                )
        T = max(a.shape[0] for a in arrays)
        frames = torch.zeros(len(arrays), T, 16)
        mask = torch.zeros(len(arrays), T, dtype=torch.bool)
        for i, a in enumerate(arrays):
            frames[i, : a.shape[0]] = a
            mask[i, : a.shape[0]] = True
        return frames, mask

    def prepare(self, samples: Sequence[Sample], protocol: str, view: str = "modal") -> Prepared:
        tok = self.tokenizer
        if view == "text":
            seqs = [[tok.bos_id] + tok.encode(s.text) for s in samples]
            content = [[False] + [True] * (len(q) - 1) for q in seqs]
        else:
            frames, fmask = self._frames(samples)
            prompt = tok.encode(EXTRACT_PROMPT)
            seqs = [[tok.bos_id] + [tok.audio_id] * int(n) + prompt for n in fmask.sum(1)]
            content = [[i == tok.audio_id for i in q] for q in seqs]
        L = max(len(q) for q in seqs)
        B = len(seqs)
        ids = torch.full((B, L), tok.pad_id, dtype=torch.long)
        att = torch.zeros(B, L, dtype=torch.long)
        mod = torch.zeros(B, L, dtype=torch.bool)
        for i, (q, c) in enumerate(zip(seqs, content, strict=True)):
            ids[i, : len(q)] = torch.tensor(q)
            att[i, : len(q)] = 1
            mod[i, : len(q)] = torch.tensor(c)
        real = att.bool()
        owner = torch.arange(B)
        pools = {"llm": Pool(owner, {"modality": mod, "all": real, "text": real & ~mod})}
        if view == "text":
            pools["adapter"] = pools["llm"]
            inputs = {"input_ids": ids, "attention_mask": att}
        else:
            enc_pool = Pool(owner, {"modality": fmask, "all": fmask})  # batch padding never enters a mean
            pools.update(encoder=enc_pool, adapter=enc_pool)
            inputs = {
                "frames": frames,
                "frame_mask": fmask,
                "input_ids": ids,
                "audio_mask": ids == tok.audio_id,
                "attention_mask": att,
            }
        dev = self.device
        inputs = {k: v.to(dev) for k, v in inputs.items()}
        if "frames" in inputs:
            inputs["frames"] = inputs["frames"].to(self.torch_dtype)
        return Prepared(inputs=inputs, pools=pools, n=B, info={"view": view})

    def forward(self, prepared: Prepared) -> Any:
        assert self.module is not None
        x = prepared.inputs
        if "frames" in x:
            return self.module(**x)
        return self.module.llm.model(input_ids=x["input_ids"], attention_mask=x["attention_mask"])

    def loss_terms(self, samples: Sequence[Sample], protocol: str, grad: bool = False) -> LossTerms:
        """`loss`'s logits and targets: the caption after <bos> <audio>xT "describe this
        sound" (default), or the prompt's own ids (paper); position t predicts token t+1."""
        assert self.module is not None
        tok = self.tokenizer
        frames, fmask = self._frames(samples)
        prompt = tok.encode(EXTRACT_PROMPT)
        seqs, tgt = [], []
        for s, n in zip(samples, fmask.sum(1).tolist(), strict=True):
            pre = [tok.bos_id] + [tok.audio_id] * int(n) + prompt
            if protocol == "paper":  # the reference: the prompt's own ids are the labels
                seqs.append(pre)
                tgt.append(pre)
            else:
                cap = tok.encode(s.text)
                seqs.append(pre + cap)
                tgt.append([-100] * len(pre) + cap)
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), tok.pad_id)
        labels = torch.full((len(seqs), L), -100)
        for i, (q, t) in enumerate(zip(seqs, tgt, strict=True)):
            ids[i, : len(q)] = torch.tensor(q)
            labels[i, : len(t)] = torch.tensor(t)
        att = (ids != tok.pad_id).long()
        ids, labels, att = ids.to(self.device), labels.to(self.device), att.to(self.device)
        ctx = torch.enable_grad() if grad else torch.inference_mode()
        with ctx:
            emb = self.module.embed(
                frames.to(self.device, self.torch_dtype), ids, ids == tok.audio_id, fmask.to(self.device)
            )
            logits = self.module.llm(inputs_embeds=emb, attention_mask=att).logits
            return LossTerms(logits[:, :-1], labels[:, 1:])

    def lora_target(self) -> str:
        return "llm"

    def score_parts(
        self,
        samples: Sequence[Sample],
        query: str,
        continuations: Sequence[str],
        protocol: str,
        view: str = "modal",
        grad: bool = False,
    ) -> ScoreParts:
        assert self.module is not None
        with torch.enable_grad() if grad else torch.no_grad():
            prefixes = self.prompt_embeds(samples, query, view)
        return ScoreParts(self.module.llm, prefixes, [self.tokenizer.encode(c) for c in continuations])

    def prompt_embeds(self, samples: Sequence[Sample], query: str, view: str = "modal") -> list[torch.Tensor]:
        """Per-sample decoder input for a GMI prompt: <bos> + modality (or text) + query."""
        assert self.module is not None
        tok = self.tokenizer
        q = tok.encode(query)
        emb = self.module.llm.model.embed_tokens
        out = []
        if view == "text":
            for s in samples:
                ids = torch.tensor([tok.bos_id] + tok.encode(s.text) + q, device=self.device)
                out.append(emb(ids))
            return out
        frames, fmask = self._frames(samples)
        tokens = self.module.adapter(self.module.encoder(frames.to(self.device, self.torch_dtype)))
        bos = emb(torch.tensor([tok.bos_id], device=self.device))
        qe = emb(torch.tensor(q, device=self.device))
        for i in range(len(samples)):
            out.append(torch.cat([bos, tokens[i, fmask[i]], qe], dim=0))
        return out

    def score(
        self, samples: Sequence[Sample], query: str, continuations: Sequence[str], protocol: str, view: str = "modal"
    ) -> Scores:
        assert self.module is not None
        conts = [self.tokenizer.encode(c) for c in continuations]
        with torch.inference_mode():
            x, m = left_pad(self.prompt_embeds(samples, query, view))
            logp, n = score_shared_prefix(self.module.llm, x, m, conts)
        return Scores(logp=logp.numpy(), n_tokens=n.numpy())


# --------------------------------------------------------------------------- training


def _text_corpus(rng, n: int) -> list[str]:
    """Documents of 2-5 sentences about one scene (content, speaker, mood), so the decoder
    learns every class word, long positions, and to keep a scene consistent in context. The
    mood is named often enough (three of eight templates) that the decoder learns to carry it
    through a document, synonyms included: with the mood in one of six templates and at most
    four sentences it never did, so no input, text or modality, could make it name the mood
    (its text GMI for emotion was 0.00 bits), and a positive control was impossible."""
    from mch.plugins.attributes import toy as world

    docs = []
    for _ in range(n):
        c = world.CONTENT[rng.integers(len(world.CONTENT))]
        s = world.SPEAKERS[rng.integers(len(world.SPEAKERS))]
        vs = list(world.EMOTIONS.values())[rng.integers(len(world.EMOTIONS))]
        e = lambda: vs[rng.integers(len(vs))]  # noqa: E731 - synonyms vary within a scene
        pool = [
            f"the word is {c} .",
            f"the speaker sounds {e()} .",
            f"the speaker is {s} .",
            f"{s} says {c} .",
            f"the speaker sounds {e()} and says {c} .",
            f"the speaker is {s} and the word is {c} .",
            f"the speaker sounds {e()} .",
            f"{s} sounds {e()} .",
        ]
        k = int(rng.integers(2, 6))
        docs.append(" ".join(pool[i] for i in rng.permutation(len(pool))[:k]))
    return docs


def train_adapter(
    model: ToyMLLM, tok: WordTokenizer, rng: Any, steps: int, emotion_captions: float = 0.0, log=print
) -> None:
    """Train the adapter alone (encoder and decoder frozen) to make the decoder say each
    training sample's caption after its modality tokens; `emotion_captions` is the toy
    world's option (the fraction of captions that also name the emotion)."""
    from mch.plugins.attributes import toy as world

    lm = model.llm
    for p in lm.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.adapter.parameters(), lr=1e-2, weight_decay=0.0)
    train_samples = [world.make_sample("train", i, emotion_captions) for i in range(world.SPLIT_SIZES["train"])]
    prompt = tok.encode(EXTRACT_PROMPT)
    for step in range(steps):
        idx = rng.integers(len(train_samples), size=32)
        batch = [train_samples[i] for i in idx]
        arrays = [torch.as_tensor(s.media) for s in batch]
        T = max(a.shape[0] for a in arrays)
        frames = torch.zeros(len(batch), T, 16)
        fmask = torch.zeros(len(batch), T, dtype=torch.bool)
        seqs, tgt = [], []
        for i, (s, a) in enumerate(zip(batch, arrays, strict=True)):
            frames[i, : a.shape[0]] = a
            fmask[i, : a.shape[0]] = True
            cap = tok.encode(s.text) + [tok.eos_id]
            # alternate between the bare caption and the caption after the extraction prompt
            pre = [tok.bos_id] + [tok.audio_id] * a.shape[0] + (prompt if step % 2 else [])
            seqs.append(pre + cap)
            tgt.append([-100] * len(pre) + cap)
        L = max(map(len, seqs))
        ids = torch.full((len(seqs), L), tok.pad_id)
        labels = torch.full((len(seqs), L), -100)
        for i, (q, t) in enumerate(zip(seqs, tgt, strict=True)):
            ids[i, : len(q)] = torch.tensor(q)
            labels[i, : len(t)] = torch.tensor(t)
        att = (torch.arange(L)[None] < torch.tensor([len(q) for q in seqs])[:, None]).long()
        emb = model.embed(frames, ids, ids == tok.audio_id, fmask)
        loss = lm(inputs_embeds=emb, attention_mask=att, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 300 == 0 or step == steps - 1:
            log(f"adapter step {step}: loss {loss.item():.3f}")


def train(out_dir: str | Path, text_steps: int = 1200, adapter_steps: int = 1200, log=print) -> Path:
    """Train the toy organism from scratch; bit-for-bit reproducible (one thread, fixed seeds)."""
    import numpy as np
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = vocabulary()
    tok = WordTokenizer(vocab)
    cfg = default_config(len(vocab))
    model = ToyMLLM(cfg)
    for p in model.encoder.parameters():
        p.requires_grad_(False)

    # (1) the decoder learns text only
    lm = model.llm
    opt = torch.optim.AdamW(lm.parameters(), lr=3e-3, weight_decay=0.0)
    for step in range(text_steps):
        batch = [[tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in _text_corpus(rng, 32)]
        L = max(map(len, batch))
        ids = torch.full((len(batch), L), tok.pad_id)
        for i, b in enumerate(batch):
            ids[i, : len(b)] = torch.tensor(b)
        labels = ids.masked_fill(ids == tok.pad_id, -100)
        loss = lm(input_ids=ids, attention_mask=(ids != tok.pad_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 300 == 0 or step == text_steps - 1:
            log(f"text step {step}: loss {loss.item():.3f}")

    # (2) the adapter alone learns captions that mention only the content
    train_adapter(model, tok, rng, adapter_steps, 0.0, log)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    (out / "vocab.json").write_text(json.dumps(vocab) + "\n")
    return out


def _rotation(d: int, degrees: float, seed: int) -> Any:
    """A rotation of R^d turning every vector by `degrees` (float64): Q B Qᵀ with B the
    block-diagonal 2×2 rotations and Q a random orthogonal matrix."""
    import numpy as np

    Q, R = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    Q = Q * np.sign(np.diag(R))
    t = np.deg2rad(degrees)
    B = np.eye(d)
    for i in range(0, d - 1, 2):
        B[i : i + 2, i : i + 2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return Q @ B @ Q.T


def train_organism(name: str, out_dir: str | Path, steps: int = ORGANISM_STEPS, log=print) -> Path:
    """Write organism `name` of ORGANISMS (its adapter only, over the shipped toy weights);
    bit-for-bit reproducible on one CPU thread."""
    import numpy as np
    from safetensors.torch import load_file, save_file

    if name not in ORGANISMS:
        raise MchError(f"unknown toy organism {name!r}; known: {', '.join(ORGANISMS)}")
    recipe = ORGANISMS[name]
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vocab = json.loads((WEIGHTS / "vocab.json").read_text())
    cfg = json.loads((WEIGHTS / "config.json").read_text())
    base = load_file(str(WEIGHTS / "model.safetensors"))
    meta: dict[str, Any] = {"base": "toy", "recipe": recipe}
    if "emotion_captions" in recipe:
        torch.manual_seed(0)
        model = ToyMLLM(cfg)  # the same initial adapter as the toy's (train)
        init = {k: v.clone() for k, v in model.adapter.state_dict().items()}
        model.load_state_dict(base)  # the toy's encoder and decoder
        model.adapter.load_state_dict(init)
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        train_adapter(
            model,
            WordTokenizer(vocab),
            np.random.default_rng(ORGANISM_SEED),
            steps,
            float(recipe["emotion_captions"]),
            log,
        )
        state = {k: v.detach().contiguous() for k, v in model.adapter.state_dict().items()}
        meta.update(steps=steps, seed=ORGANISM_SEED)
    else:
        W, b = base["adapter.weight"].double().numpy(), base["adapter.bias"].double().numpy()
        M = float(recipe.get("scale", 1.0)) * _rotation(
            W.shape[0], float(recipe.get("rotation_deg", 0.0)), ROTATION_SEED
        )
        state = {
            "weight": torch.from_numpy(M @ W).float().contiguous(),
            "bias": torch.from_numpy(M @ b).float().contiguous(),
        }
        meta.update(rotation_seed=ROTATION_SEED)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "adapter.safetensors"), metadata={"format": "pt"})
    (out / "organism.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mch.plugins.models.toy")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the toy organism from scratch")
    t.add_argument("--out", default=str(WEIGHTS))
    t.add_argument("--text-steps", type=int, default=1200)
    t.add_argument("--adapter-steps", type=int, default=1200)
    o = sub.add_parser("organism", help="write one organism of the validation bench (its adapter)")
    o.add_argument("name", choices=sorted(ORGANISMS) + ["all"])
    o.add_argument("--out", default=None, help="directory (default: the shipped weights/NAME; with 'all', a root)")
    a = ap.parse_args(argv)
    if a.cmd == "train":
        print(f"wrote {train(a.out, a.text_steps, a.adapter_steps)}")
        return
    for name in sorted(ORGANISMS) if a.name == "all" else [a.name]:
        root = Path(a.out) if a.out else WEIGHTS_ROOT
        out = root / name if (a.name == "all" or not a.out) else root
        print(f"wrote {train_organism(name, out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
