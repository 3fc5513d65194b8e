"""Small files in the reference implementation's HDF5 layout (script 01's modal file and
script 02's text-baseline file), written with h5py exactly as those scripts lay them out:
float32 (N, d) datasets per hook, vlen-string `sample_ids` and label columns, attributes
`model_name`, `dataset_name`, `n_samples` (+ `n_samples_actual` when extraction stopped)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = [
    "the",
    "a",
    "and",
    "of",
    "he",
    "she",
    "it",
    "to",
    "was",
    "in",
    "that",
    "his",
    "her",
    "with",
    "for",
    "river",
    "house",
    "light",
    "night",
    "stone",
    "garden",
    "window",
    "letter",
    "morning",
    "horse",
    "ship",
    "king",
    "forest",
    "winter",
    "mother",
    "road",
    "bread",
    "door",
    "fire",
    "sea",
    "voice",
]
EMOTIONS = ["anger", "happy", "neutral", "sadness"]


def make_reference_files(
    out: Path, n: int = 160, seed: int = 0, unwritten: int = 0, d: int = 24, d_llm: int = 32
) -> tuple[Path, Path]:
    """(modal.h5, text.h5) with n rows, of which the last `unwritten` were never written (all
    zero, empty labels, n_samples_actual set). Speaker and emotion are linearly present in
    the vectors, more at the encoder than at llm_final; the first word of the transcript too."""
    import h5py

    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_spk = 6
    spk = rng.integers(0, n_spk, n)
    emo = rng.integers(0, len(EMOTIONS), n)
    texts = []
    for _ in range(n):
        k = rng.integers(4, 10)
        texts.append(" ".join(rng.choice(WORDS, size=k, p=_zipf(len(WORDS)))).upper())  # LibriSpeech-like caps
    spk_dir = rng.normal(size=(n_spk, d))
    emo_dir = rng.normal(size=(len(EMOTIONS), d))
    enc = rng.normal(size=(n, d)) + 1.5 * spk_dir[spk] + 1.0 * emo_dir[emo]
    W = rng.normal(size=(d, d_llm)) / np.sqrt(d)
    adapter = enc @ W + 0.5 * rng.normal(size=(n, d_llm))
    hidden = np.tanh(adapter) + 0.8 * rng.normal(size=(n, d_llm))
    final = hidden + 1.2 * rng.normal(size=(n, d_llm))
    stages = {"encoder_output": enc, "adapter_output": adapter, "llm_hidden_16": hidden, "llm_final": final}
    ids = [f"{1000 + s}-{i // 7}-{i:04d}" for i, s in enumerate(spk)]
    w = n - unwritten
    strdt = h5py.string_dtype(encoding="utf-8")
    modal = out / "ultravox_synth.h5"
    with h5py.File(modal, "w") as f:
        for name, arr in stages.items():
            a = np.zeros((n, arr.shape[1]), np.float32)
            a[:w] = arr[:w]
            f.create_dataset(name, data=a)
        f.create_dataset("sample_ids", data=np.array(ids[:w] + [""] * unwritten, dtype=object), dtype=strdt)
        f.create_dataset("transcript", data=np.array(texts[:w] + [""] * unwritten, dtype=object), dtype=strdt)
        f.create_dataset(
            "speaker_id", data=np.array([str(1000 + s) for s in spk[:w]] + [""] * unwritten, dtype=object), dtype=strdt
        )
        f.create_dataset(
            "emotion", data=np.array([EMOTIONS[e] for e in emo[:w]] + [""] * unwritten, dtype=object), dtype=strdt
        )
        f.attrs["model_name"] = "ultravox"
        f.attrs["dataset_name"] = "synth"
        f.attrs["n_samples"] = n
        f.attrs["config"] = "{}"
        if unwritten:
            f.attrs["n_samples_actual"] = w
    # script 02: the text through a text-only model, rows with a non-empty text only, in order
    T = rng.normal(size=(len(WORDS), d_llm))
    text = out / "llama_from_ultravox_synth.h5"
    keep = [i for i in range(w) if texts[i].strip()]
    emb = np.stack([np.mean([T[WORDS.index(t.lower())] for t in texts[i].split()], axis=0) for i in keep])
    t16 = emb + 0.3 * rng.normal(size=emb.shape)
    tfin = t16 + 0.3 * rng.normal(size=emb.shape)
    with h5py.File(text, "w") as f:
        f.create_dataset("llm_hidden_16", data=t16.astype(np.float32))
        f.create_dataset("llm_final", data=tfin.astype(np.float32))
        f.create_dataset("sample_ids", data=np.array([ids[i] for i in keep], dtype=object), dtype=strdt)
        f.create_dataset("text", data=np.array([texts[i] for i in keep], dtype=object), dtype=strdt)
        f.attrs["model_name"] = "llama"
        f.attrs["source_file"] = str(modal)
        f.attrs["text_field_used"] = "transcript"
        f.attrs["n_samples"] = len(keep)
    return modal, text


def _zipf(k: int) -> np.ndarray:
    p = 1.0 / np.arange(1, k + 1)
    return p / p.sum()
