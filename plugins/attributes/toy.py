"""The toy world: a synthetic speech-like corpus whose truth is known.

Each sample is a sequence of T frames (8-16 frames of 16 channels) generated from three
independent factors:
  - `content` (8 words): a per-word 4-step frame pattern. It is *text-describable*: the
    sample's caption is "the word is <content> .".
  - `speaker` (6 names): a constant per-speaker offset of every frame (timbre-like).
  - `emotion` (4 moods): a per-mood modulation depth and rate (prosody-like) and a small
    per-mood offset of every frame (vocal effort). Without the offset the mood reached the
    frames' features only through the encoder's nonlinearity (a speaker-grouped logistic
    probe on the pooled encoder output: 46% accuracy, chance 25%; with it 79%), too little
    for an adapter trained to name it to make it accessible (GMI 0.01 bits), so no positive
    control could show anything (science.md §7); with it the mood is present, and as hidden.
Speaker and emotion never appear in the caption, like speaker and emotion in a transcript.

Option `emotion_captions` (a fraction f in [0, 1], default 0): the captions of a fixed,
nested subset of the samples (those whose `emotion_draw` is below f: the 10% subset lies
inside the 50% one) also name the emotion, "the word is cat . the speaker sounds glad .",
with a synonym drawn per sample. The toy organisms of the dose-response family were trained
on such captions (`mch.plugins.models.toy`); with f > 0 emotion is text-describable.

Splits: `train` (what the toy model's adapter and any LoRA are trained on, 3000 samples) and `test` (600, what
`mch bench` measures by default) come from disjoint seeds. Group keys: `emotion` and `content`
are grouped by speaker (as CREMA-D emotion is grouped by actor); `speaker` by sample (no
grouping, as the paper's speaker probes).
"""

from __future__ import annotations

import hashlib
from typing import Any

from mch.api import Attribute, DatasetPlugin, MchError, Param, Sample

CONTENT = ["cat", "dog", "bird", "fish", "tree", "car", "boat", "house"]
SPEAKERS = ["alice", "bob", "carol", "dave", "erin", "frank"]
EMOTIONS = {
    "angry": ["angry", "furious"],
    "happy": ["happy", "glad"],
    "sad": ["sad", "gloomy"],
    "calm": ["calm", "relaxed"],
}
QUERIES = {"content": "the word is", "speaker": "the speaker is", "emotion": "the speaker sounds"}

N_FRAMES = (8, 16)
N_CHANNELS = 16
SPLIT_SIZES = {"train": 3000, "test": 600}  # test: the default `mch bench` selection
WORLD_SEED = 1234


def _world() -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(WORLD_SEED)
    return {
        "content": rng.normal(0, 1.0, size=(len(CONTENT), 4, N_CHANNELS)).astype("float32"),
        "speaker": rng.normal(0, 0.7, size=(len(SPEAKERS), N_CHANNELS)).astype("float32"),
        "emotion_dir": rng.normal(0, 1.0, size=(N_CHANNELS,)).astype("float32"),
        "emotion_depth": np.array([2.0, 1.3, 0.2, 0.7], dtype="float32"),
        "emotion_rate": np.array([3.0, 2.0, 0.5, 1.0], dtype="float32"),
        "emotion_offset": rng.normal(0, 0.5, size=(len(EMOTIONS), N_CHANNELS)).astype("float32"),
    }


_WORLD: dict[str, Any] | None = None


def frames_for(content: int, speaker: int, emotion: int, length: int, noise_seed: int):
    """The frames of one sample, deterministic in its factors and seed."""
    import numpy as np

    global _WORLD
    if _WORLD is None:
        _WORLD = _world()
    w = _WORLD
    t = np.arange(length, dtype="float32")
    x = w["content"][content][np.arange(length) % 4].copy()
    x += w["speaker"][speaker][None, :]
    mod = w["emotion_depth"][emotion] * np.sin(2 * np.pi * w["emotion_rate"][emotion] * t / length)
    x += mod[:, None] * w["emotion_dir"][None, :]
    x += w["emotion_offset"][emotion][None, :]
    x += np.random.default_rng(noise_seed).normal(0, 0.3, size=x.shape).astype("float32")
    return x.astype("float32")


def _seed(split: str, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"toy/{split}/{i}".encode()).digest()[:8], "little")


def emotion_draw(sample_id: str) -> tuple[float, int]:
    """(u in [0, 1), synonym index) of a sample, from its id alone: its caption names the
    emotion when u < emotion_captions, so the subsets are nested across fractions."""
    h = hashlib.sha256(f"toy/emotion-caption/{sample_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64, h[8]


def emotion_caption(content: str, emotion: str, synonym: int) -> str:
    vs = EMOTIONS[emotion]
    return f"the word is {content} . the speaker sounds {vs[synonym % len(vs)]} ."


def make_sample(split: str, i: int, emotion_captions: float = 0.0) -> Sample:
    import numpy as np

    rng = np.random.default_rng(_seed(split, i))
    c, s, e = (int(rng.integers(len(CONTENT))), int(rng.integers(len(SPEAKERS))), int(rng.integers(len(EMOTIONS))))
    length = int(rng.integers(N_FRAMES[0], N_FRAMES[1] + 1))
    noise_seed = int(rng.integers(2**31))
    sid = f"toy-{split}-{i:05d}"
    labels = {"content": CONTENT[c], "speaker": SPEAKERS[s], "emotion": list(EMOTIONS)[e]}
    text = f"the word is {CONTENT[c]} ."
    if emotion_captions > 0:
        u, syn = emotion_draw(sid)
        if u < emotion_captions:
            text = emotion_caption(CONTENT[c], labels["emotion"], syn)
    return Sample(
        sample_id=sid,
        text=text,
        labels=labels,
        groups={"speaker": SPEAKERS[s], "sample": sid},
        loader=lambda: frames_for(c, s, e, length, noise_seed),
        meta={"n_frames": length},
    )


class ToyWorld(DatasetPlugin):
    name = "toy"
    modality = "speech"
    option_specs = {
        "split": Param(str, choices=tuple(SPLIT_SIZES), help="the split used when none is passed"),
        "emotion_captions": Param(float, ge=0.0, le=1.0, help="the fraction of captions that also name the emotion"),
    }
    models = ("mch.plugins.models.toy:ToyModel",)  # frames of 16 channels, which only the toy organisms read
    reads_path = False  # the world is made in code

    def _emotion_captions(self) -> float:
        f = self.options.get("emotion_captions", 0.0)
        try:
            f = float(f)
        except (TypeError, ValueError):
            f = float("nan")
        if not 0.0 <= f <= 1.0:
            raise MchError(f"dataset 'toy': option emotion_captions must be a fraction in [0, 1], not {f!r}")
        return f

    def attributes(self, protocol: str) -> dict[str, Attribute]:
        rule = {"default": "the generating factor", "paper": "the generating factor"}
        named = self._emotion_captions() > 0
        return {
            # splits hold speakers out; CIs resample samples (cluster_key): every sample draws its
            # speaker at random from the world's fixed six, so samples are independent draws
            "content": Attribute(
                "content",
                list(CONTENT),
                {c: [c] for c in CONTENT},
                QUERIES["content"],
                group_key="speaker",
                text_describable=True,
                cluster_key="sample",
                description="the word the sample carries (in its caption)",
                label_rule=rule,
            ),
            "speaker": Attribute(
                "speaker",
                list(SPEAKERS),
                {s: [s] for s in SPEAKERS},
                QUERIES["speaker"],
                group_key="sample",
                description="who produced the sample (not in the caption)",
                label_rule=rule,
            ),
            "emotion": Attribute(
                "emotion",
                list(EMOTIONS),
                {k: list(v) for k, v in EMOTIONS.items()},
                QUERIES["emotion"],
                group_key="speaker",
                text_describable=named,
                cluster_key="sample",
                description="the mood of the sample (in the caption of the samples option emotion_captions selects)"
                if named
                else "the mood of the sample (not in the caption)",
                label_rule=rule,
            ),
        }

    def samples(self, split: str | None, limit: int | None, seed: int, protocol: str) -> list[Sample]:
        split = split or self.options.get("split") or "test"
        if split not in SPLIT_SIZES:
            raise MchError(f"dataset 'toy' has splits {sorted(SPLIT_SIZES)}, not {split!r}")
        n = SPLIT_SIZES[split] if limit is None else min(int(limit), SPLIT_SIZES[split])
        if n <= 0:
            raise MchError("dataset 'toy' selection is empty: --limit must be at least 1")
        f = self._emotion_captions()
        return [make_sample(split, i, f) for i in range(n)]
