"""Training the toy organism (`train`) and the validation bench's organisms
(`train_organism`), bit-for-bit reproducible on one CPU thread."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mch.api import MchError

from .modeling import (
    EXTRACT_PROMPT,
    ORGANISM_SEED,
    ORGANISM_STEPS,
    ORGANISMS,
    ROTATION_SEED,
    WEIGHTS,
    ToyMLLM,
    WordTokenizer,
    default_config,
    pad_frames,
    pad_targets,
    vocabulary,
)


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
        frames, fmask = pad_frames(arrays)
        seqs, tgt = [], []
        for s, a in zip(batch, arrays, strict=True):
            cap = tok.encode(s.text) + [tok.eos_id]
            # alternate between the bare caption and the caption after the extraction prompt
            pre = [tok.bos_id] + [tok.audio_id] * a.shape[0] + (prompt if step % 2 else [])
            seqs.append(pre + cap)
            tgt.append([-100] * len(pre) + cap)
        ids, labels = pad_targets(seqs, tgt, tok.pad_id)
        L = ids.shape[1]
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
