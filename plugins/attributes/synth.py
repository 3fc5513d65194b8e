"""Offline corpora written on disk in the exact layout of the real ones, so that the real
loaders (and everything after them) run without downloading anything.

    from mch.plugins.attributes import synth
    synth.make("cremad", "/tmp/crema")        # -> /tmp/crema/AudioWAV/1001_IEO_ANG_XX.wav ...
    synth.make("coco", "/tmp/coco", counts=[7, 1, 12])

or `mch data make cremad --out /tmp/crema`. Every corpus is deterministic for a given seed
and parameters, takes about a second or less with the defaults, and carries a manifest
`mch_synth.json` (generator, parameters, engine, what was drawn). Generators:

| name        | layout written                                                           | default size |
|-------------|--------------------------------------------------------------------------|--------------|
| cremad      | AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav, 16 kHz                | 4 actors x 4 sentences x 6 emotions = 96 clips |
| esc50       | audio/{fold}-{src}-{take}-{target}.wav 44.1 kHz + meta/esc50.csv          | 6 classes x 5 folds = 30 clips of 5 s |
| librispeech | test-clean/{spk}/{chap}/{spk}-{chap}-{utt}.flac + .trans.txt, SPEAKERS.TXT | 4 speakers x 2 chapters x 4 utterances |
| voxceleb1   | wav/{id}/{video}/{nnnnn}.wav, vox1_meta.csv, iden_split.txt               | 4 speakers x 2 videos x 3 utterances |
| coco        | val2017/*.jpg + annotations/instances_val2017.json, captions_val2017.json | 24 scenes, 160x120 |
| gqa         | images/*.jpg + val_balanced_questions.json                                | 12 scenes x 5 questions |

Speech: each synthetic speaker has its own pitch, formant scale (vocal-tract length),
spectral tilt, breathiness and rate; emotions change pitch level, range and contour, rate,
energy, tremor, jitter and breathiness (CREMA-D levels LO/MD/HI scale the change). Text is
rendered letter by letter into vowel (formant), fricative, stop and sonorant segments by a
small source-filter synthesiser in numpy. With `engine="espeak"` (or "auto" when
`espeak-ng` is on PATH) the words are spoken by espeak-ng instead, with the same speaker and
emotion settings mapped onto its voice variant, pitch, speed and amplitude.

Vision: scenes of simple objects drawn with PIL, each object a real COCO category (sports
ball, kite, stop sign, clock, ...) with a known position and size; the instance and caption
annotations are written from what was drawn, so count, size, spread and category come out
of the real COCO label code.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from mch.api import MchError, Param

MANIFEST = "mch_synth.json"
SPEECH_RATE = 16000

DESCRIPTIONS = {
    "cremad": "CREMA-D layout: synthetic actors x sentences x emotions (16 kHz WAV)",
    "esc50": "ESC-50 layout: synthetic sound classes in 5 folds (44.1 kHz WAV + meta/esc50.csv)",
    "librispeech": "LibriSpeech layout: synthetic readers, chapters and transcripts (16 kHz FLAC)",
    "voxceleb1": "VoxCeleb1 layout: synthetic speakers x videos x utterances (16 kHz WAV + vox1_meta.csv)",
    "coco": "COCO layout: rendered scenes with known objects (val2017 JPEG + instances/captions JSON)",
    "gqa": "GQA layout: rendered scenes with questions and answers (images + val_balanced_questions.json)",
}


# =========================================================================== speech


@dataclass
class Voice:
    f0: float            # mean pitch, Hz
    formant_scale: float  # >1: shorter vocal tract, higher formants
    tilt: float          # harmonic roll-off exponent
    breath: float        # aspiration noise relative to voicing
    rate: float          # speaking-rate multiplier
    espeak: str          # espeak-ng voice variant


@dataclass
class Prosody:
    f0: float = 1.0      # pitch level multiplier
    range: float = 1.0   # pitch excursion multiplier
    slope: float = -0.15  # overall contour (negative = declination)
    rate: float = 1.0
    gain: float = 1.0
    tremor: float = 0.0  # 6 Hz pitch modulation depth
    jitter: float = 0.0  # random pitch perturbation depth
    breath: float = 0.0  # added breathiness
    tilt: float = 0.0    # added roll-off (negative = brighter, tenser voice)

    def scaled(self, k: float) -> "Prosody":
        """Move k of the way from neutral to this emotion (CREMA-D intensity levels)."""
        base = Prosody()
        return Prosody(**{f: getattr(base, f) + k * (getattr(self, f) - getattr(base, f)) for f in base.__dict__})


# CREMA-D emotion codes -> prosody
EMOTION_PROSODY = {
    "NEU": Prosody(),
    "ANG": Prosody(f0=1.25, range=1.6, slope=-0.35, rate=1.15, gain=1.9, jitter=0.01, tilt=-0.45),
    "HAP": Prosody(f0=1.3, range=1.9, slope=0.3, rate=1.1, gain=1.3, tilt=-0.2),
    "SAD": Prosody(f0=0.85, range=0.4, slope=-0.4, rate=0.75, gain=0.55, breath=0.12, tilt=0.45),
    "FEA": Prosody(f0=1.45, range=1.2, slope=0.1, rate=1.25, gain=0.8, tremor=0.07, breath=0.1),
    "DIS": Prosody(f0=0.9, range=1.1, slope=-0.2, rate=0.82, gain=1.0, jitter=0.045, tilt=0.2),
}
LEVEL_SCALE = {"LO": 0.5, "MD": 1.0, "HI": 1.5, "XX": 1.0}

_VOWELS = {"a": (730, 1090, 2440), "e": (530, 1840, 2480), "i": (300, 2200, 2950), "o": (570, 840, 2410),
           "u": (320, 900, 2240), "y": (420, 1900, 2600)}
_SONORANT = {"l": (360, 1300, 2700), "m": (260, 1000, 2200), "n": (260, 1500, 2500), "r": (420, 1300, 1700),
             "w": (300, 700, 2200)}
_FRIC_BAND = {"s": 2, "z": 2, "c": 2, "x": 2, "f": 1, "v": 1, "h": 1, "j": 1, "q": 1}  # 0 low, 1 mid, 2 high
_STOPS = set("bdgptk")
_VOICED = set("bdgzvjlmnrw")


def make_voices(n: int, seed: int) -> list[Voice]:
    """n distinct voices: alternating low/high registers, spread pitch, formants and timbre."""
    import numpy as np

    rng = np.random.default_rng([seed, 7001])
    low_variants, high_variants = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"], ["f1", "f2", "f3", "f4", "f5"]
    voices = []
    for i in range(n):
        high = i % 2 == 1
        frac = (i // 2) / max(1, (n + 1) // 2)
        f0 = (165 + 80 * frac if high else 90 + 55 * frac) * rng.uniform(0.96, 1.04)
        voices.append(Voice(
            f0=float(f0), formant_scale=float((1.12 if high else 0.93) + rng.uniform(-0.05, 0.06)),
            tilt=float(rng.uniform(0.9, 1.6)), breath=float(rng.uniform(0.01, 0.12)),
            rate=float(rng.uniform(0.88, 1.12)),
            espeak=(high_variants if high else low_variants)[(i // 2) % (5 if high else 7)]))
    return voices


def _segments(text: str, rate: float) -> list[tuple[str, str, float]]:
    """Letters -> (kind, letter, seconds). Kinds: vowel, son(orant), fric, stop, pause."""
    segs: list[tuple[str, str, float]] = [("pause", " ", 0.12)]
    for ch in text.lower():
        if ch in _VOWELS:
            segs.append(("vowel", ch, 0.085))
        elif ch in _SONORANT:
            segs.append(("son", ch, 0.055))
        elif ch in _FRIC_BAND:
            segs.append(("fric", ch, 0.07))
        elif ch in _STOPS:
            segs.append(("stop", ch, 0.05))
        elif ch in " -":
            segs.append(("pause", ch, 0.045))
        elif ch in ",.;:!?":
            segs.append(("pause", ch, 0.14))
    segs.append(("pause", " ", 0.12))
    return [(k, c, d / rate) for k, c, d in segs]


def _smooth(x: Any, n: int) -> Any:
    """Triangular moving average of width ~n along the last axis (two boxcars by
    cumulative sums: linear time)."""
    import numpy as np

    half = max(1, n // 2)
    if half <= 1:
        return x
    for _ in range(2):
        pad = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="edge")
        c = np.cumsum(pad, axis=-1)
        c = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], axis=-1)
        x = (c[..., 2 * half + 1:] - c[..., :-2 * half - 1])[..., : x.shape[-1]] / (2 * half)
    return x


@lru_cache(maxsize=None)
def _band_filters(sr: int) -> tuple[Any, ...]:
    from scipy.signal import butter

    nyq = sr / 2
    edges = [(300, 1500), (1500, 3800), (3800, min(7500, 0.95 * nyq))]
    return tuple(butter(4, [lo / nyq, hi / nyq], btype="band", output="sos") for lo, hi in edges)


def _bands(noise: Any, sr: int) -> list[Any]:
    from scipy.signal import sosfilt

    return [sosfilt(sos, noise) for sos in _band_filters(sr)]


def synth_numpy(text: str, voice: Voice, pros: Prosody, sr: int, seed: int) -> Any:
    """Source-filter speech-like audio: harmonic source shaped by formant tracks, plus
    band-limited noise for fricatives, stop bursts and breath."""
    import numpy as np

    rng = np.random.default_rng(seed)
    segs = _segments(text, voice.rate * pros.rate)
    lens = np.array([max(1, int(round(d * sr))) for _, _, d in segs])
    n = int(lens.sum())
    # per-segment control values -> per-sample tracks (np.repeat), then smoothed
    ctrl = np.zeros((len(segs), 7))  # voiced, noise low/mid/high, F1, F2, F3
    last = _VOWELS["e"]
    for i, (kind, ch, _) in enumerate(segs):
        if kind == "vowel":
            last = _VOWELS[ch]
            ctrl[i, 0] = 1.0
        elif kind == "son":
            last = _SONORANT[ch]
            ctrl[i, 0] = 0.55
        elif kind == "fric":
            ctrl[i, 1 + _FRIC_BAND[ch]] = 0.5
            ctrl[i, 0] = 0.3 if ch in _VOICED else 0.0
        elif kind == "stop":
            ctrl[i, 2 if ch in "ptk" else 1] = 0.6  # burst, spread over the segment by smoothing
            ctrl[i, 0] = 0.15 if ch in _VOICED else 0.0
        ctrl[i, 4:] = last
    tracks = np.repeat(ctrl.T, lens, axis=1)
    ms = int(0.012 * sr)
    hop = max(1, int(0.004 * sr))
    frames = -(-n // hop)
    grid = np.minimum(np.arange(frames + 1) * hop, n - 1)
    levels = _smooth(tracks[:4], ms)
    voiced, noise_amp = levels[0], levels[1:]
    formants = _smooth(tracks[4:, grid], 9) * voice.formant_scale  # at the control rate
    t = np.arange(n) / sr
    T = max(t[-1], 1e-3)
    # pitch: declination/rise, one accent per word, tremor and jitter
    words = max(1, len(text.split()))
    accent = np.sin(np.pi * words * t / T) ** 2
    jit = np.interp(t, t[grid], _smooth(rng.standard_normal(len(grid)), 8))
    jit /= np.abs(jit).max() + 1e-9
    f0 = voice.f0 * pros.f0 * (1 + 0.12 * pros.range * (pros.slope * (2 * t / T - 1) + 0.6 * accent)
                               + pros.tremor * np.sin(2 * np.pi * 6.0 * t) + pros.jitter * jit)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    K = int(min(40, 0.45 * sr / f0.min()))
    tilt = max(0.4, voice.tilt + pros.tilt)
    # harmonic amplitudes on the 4 ms control grid (formant envelope x tilt), linearly
    # interpolated inside each frame; sin(k*phase) by the Chebyshev recurrence
    k = np.arange(1, K + 1)[:, None, None]
    fk = k * f0[grid][None, None, :]
    bw = (np.array([90.0, 110.0, 150.0]) * voice.formant_scale)[None, :, None]
    gains = np.array([1.0, 0.6, 0.32])[None, :, None]
    env = (gains / (1 + ((fk - formants[None]) / bw) ** 2)).sum(axis=1) + 0.01
    amp = np.where(fk[:, 0] < 0.45 * sr, env * k[:, 0] ** -tilt, 0.0)  # (K, frames + 1)
    w = (np.arange(hop, dtype=np.float32) / hop)[None, :]
    ph = np.pad(phase, (0, frames * hop - n), mode="edge").reshape(frames, hop)
    s_prev, s_cur = np.zeros(ph.shape, np.float32), np.sin(ph).astype(np.float32)
    two_cos = (2 * np.cos(ph)).astype(np.float32)
    a0 = amp[:, :-1, None].astype(np.float32)
    da = (amp[:, 1:] - amp[:, :-1])[:, :, None].astype(np.float32)
    src = np.zeros(ph.shape, np.float32)
    tmp = np.empty(ph.shape, np.float32)
    for j in range(K):  # in place: this loop is most of the synthesis time
        np.multiply(da[j], w, out=tmp)
        tmp += a0[j]
        tmp *= s_cur
        src += tmp
        np.multiply(two_cos, s_cur, out=tmp)
        tmp -= s_prev
        s_prev, s_cur = s_cur, tmp.copy()
    src = src.reshape(-1)[:n].astype(np.float64)
    bands = _bands(rng.standard_normal(n), sr)
    breath = (voice.breath + pros.breath) * voiced * (bands[1] + bands[2])
    frication = sum(a * b for a, b in zip(noise_amp, bands))
    y = voiced * src / (np.abs(src).max() + 1e-9) + 0.35 * frication + 0.5 * breath
    y += 3e-4 * rng.standard_normal(n)  # recording noise floor: never digital silence
    rms = np.sqrt(np.mean(y[voiced > 0.2] ** 2)) if np.any(voiced > 0.2) else np.sqrt(np.mean(y ** 2))
    y = y * (0.06 * pros.gain / (rms + 1e-9))
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def synth_espeak(text: str, voice: Voice, pros: Prosody, sr: int, seed: int) -> Any:
    import numpy as np
    import soundfile as sf

    from ._common import resample

    exe = espeak_path()
    if exe is None:
        raise MchError("engine 'espeak' needs espeak-ng on PATH (apt-get install espeak-ng); use engine 'numpy'")
    pitch = int(np.clip(50 * (voice.f0 * pros.f0 / 140.0) ** 0.8, 0, 99))
    speed = int(np.clip(165 * voice.rate * pros.rate, 80, 400))
    amp = 100  # loudness is set after synthesis, as for the numpy engine
    try:
        out = subprocess.run([exe, "-v", f"en-us+{voice.espeak}", "-p", str(pitch), "-s", str(speed), "-a", str(amp),
                              "--stdout", text], capture_output=True, timeout=60, check=True).stdout
        y, rate = sf.read(io.BytesIO(out), dtype="float32")
    except (OSError, subprocess.SubprocessError, RuntimeError) as exc:
        raise MchError(f"espeak-ng failed on {text!r}: {exc}") from None
    if y.ndim > 1:
        y = y.mean(axis=1)
    y = resample(y, rate, sr).astype(np.float64)
    speech = np.abs(y) > 0.02 * (np.abs(y).max() + 1e-9)
    y = y * (0.06 * pros.gain / (np.sqrt(np.mean(y[speech] ** 2)) + 1e-9))  # same loudness rule as numpy
    rng = np.random.default_rng(seed)
    y = y + 3e-4 * rng.standard_normal(len(y))
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def _engine(engine: str) -> tuple[str, Callable[..., Any]]:
    if engine == "auto":
        engine = "espeak" if espeak_path() else "numpy"
    if engine == "numpy":
        return engine, synth_numpy
    if engine == "espeak":
        if espeak_path() is None:
            raise MchError("engine 'espeak' needs espeak-ng on PATH (apt-get install espeak-ng); use engine 'numpy'")
        return engine, synth_espeak
    raise MchError(f"unknown speech engine {engine!r}; use auto, numpy or espeak")


def _write_audio(path: Path, y: Any, sr: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(str(path), y, sr, format=fmt, subtype="PCM_16")


# -- text for the readers (LibriSpeech, VoxCeleb1)

_TOPICS = {
    "sea": ["ship", "sailor", "harbor", "storm", "island", "captain", "wave", "anchor"],
    "forest": ["tree", "wolf", "hunter", "river", "path", "cabin", "fox", "moss"],
    "city": ["street", "market", "carriage", "merchant", "tower", "bridge", "lamp", "crowd"],
    "home": ["kitchen", "mother", "table", "fire", "window", "garden", "letter", "bread"],
    "war": ["soldier", "horse", "general", "battle", "sword", "camp", "flag", "cannon"],
    "court": ["king", "queen", "castle", "knight", "crown", "servant", "throne", "hall"],
}
_VERBS = ["saw", "found", "carried", "watched", "followed", "remembered", "opened", "crossed", "heard", "loved"]
_ADJS = ["old", "dark", "quiet", "little", "bright", "cold", "strange", "golden"]
_TEMPLATES = [
    "the {a} {n1} {v} the {n2}",
    "he {v} a {a} {n1} near the {n2}",
    "and then the {n1} {v} her {n2} again",
    "she {v} the {n1} by the {a} {n2}",
    "in the morning the {n1} {v} the {a} {n2}",
]


def _sentence(rng: Any, topic: str) -> str:
    nouns = _TOPICS[topic]
    n1, n2 = rng.choice(nouns, size=2, replace=False)
    tpl = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return tpl.format(a=rng.choice(_ADJS), n1=n1, n2=n2, v=rng.choice(_VERBS))


# -- generators


def make_cremad(out: Path, *, seed: int = 0, actors: int = 4, sentences: int | list[str] = 4,
                emotions: list[str] | None = None, levels: list[str] | None = None, sample_rate: int = SPEECH_RATE,
                engine: str = "auto") -> dict[str, Any]:
    """AudioWAV/{actor}_{sentence}_{emotion}_{level}.wav, actors from 1001."""
    from .cremad import SENTENCES

    codes = list(SENTENCES)[:sentences] if isinstance(sentences, int) else list(sentences)
    emotions = list(emotions or EMOTION_PROSODY)
    levels = list(levels or ["XX"])
    bad = [c for c in codes if c not in SENTENCES] + [e for e in emotions if e not in EMOTION_PROSODY] + \
          [lv for lv in levels if lv not in LEVEL_SCALE]
    if bad:
        raise MchError(f"cremad generator: unknown sentence/emotion/level codes {bad}")
    engine, synth = _engine(engine)
    voices = make_voices(actors, seed)
    n = 0
    for a, voice in enumerate(voices):
        actor = str(1001 + a)
        for s, code in enumerate(codes):
            for e, emo in enumerate(emotions):
                for lv in levels:
                    pros = EMOTION_PROSODY[emo].scaled(LEVEL_SCALE[lv])
                    y = synth(SENTENCES[code], voice, pros, sample_rate, seed=hash_seed(seed, actor, code, emo, lv))
                    _write_audio(out / "AudioWAV" / f"{actor}_{code}_{emo}_{lv}.wav", y, sample_rate)
                    n += 1
    return {"engine": engine, "files": n, "voices": [asdict(v) for v in voices]}


def make_librispeech(out: Path, *, seed: int = 0, speakers: int = 4, chapters: int = 2, utterances: int = 4,
                     split: str = "test-clean", sample_rate: int = SPEECH_RATE, engine: str = "auto") -> dict[str, Any]:
    """{split}/{speaker}/{chapter}/{speaker}-{chapter}-{nnnn}.flac + {speaker}-{chapter}.trans.txt,
    SPEAKERS.TXT; each chapter reads from one topic, so its words are its own."""
    import numpy as np

    engine, synth = _engine(engine)
    rng = np.random.default_rng([seed, 7002])
    voices = make_voices(speakers, seed)
    spk_ids = sorted(int(x) for x in rng.choice(np.arange(100, 9000), size=speakers, replace=False))
    topics = list(_TOPICS)
    lines = [";ID  |SEX| SUBSET           |MINUTES| NAME"]
    truth = []
    n = 0
    for si, (spk, voice) in enumerate(zip(spk_ids, voices)):
        lines.append(f"{spk:<5}| {'F' if si % 2 else 'M'} | {split:<17}| 10.00 | Synthetic Reader {si + 1}")
        for ci in range(chapters):
            chap = int(rng.integers(1000, 300000))
            topic = topics[(si * chapters + ci) % len(topics)]
            cdir = out / split / str(spk) / str(chap)
            trans = []
            for u in range(utterances):
                uid = f"{spk}-{chap}-{u:04d}"
                text = _sentence(rng, topic).upper()
                y = synth(text, voice, EMOTION_PROSODY["NEU"], sample_rate, seed=hash_seed(seed, uid))
                _write_audio(cdir / f"{uid}.flac", y, sample_rate)
                trans.append(f"{uid} {text}")
                truth.append({"id": uid, "speaker": str(spk), "chapter": str(chap), "text": text})
                n += 1
            (cdir / f"{spk}-{chap}.trans.txt").write_text("\n".join(trans) + "\n")
    (out / "SPEAKERS.TXT").write_text("\n".join(lines) + "\n")
    return {"engine": engine, "files": n, "utterances": truth}


def make_voxceleb1(out: Path, *, seed: int = 0, speakers: int = 4, videos: int = 2, utterances: int = 3,
                   first_id: int = 10270, sample_rate: int = SPEECH_RATE, engine: str = "auto") -> dict[str, Any]:
    """wav/id{n}/{video}/{nnnnn}.wav + vox1_meta.csv (Set: test for id10270-id10309, else dev)
    + iden_split.txt."""
    import numpy as np

    engine, synth = _engine(engine)
    rng = np.random.default_rng([seed, 7003])
    voices = make_voices(speakers, seed)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    meta = ["VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"]
    split_lines = []
    n = 0
    topics = list(_TOPICS)
    for si, voice in enumerate(voices):
        spk = f"id{first_id + si}"
        meta.append(f"{spk}\tSynth_Voice_{si + 1:02d}\t{'f' if si % 2 else 'm'}\tNowhere\t"
                    f"{'test' if 10270 <= first_id + si <= 10309 else 'dev'}")
        for vi in range(videos):
            video = "".join(rng.choice(alphabet, size=11))
            for u in range(utterances):
                rel = f"{spk}/{video}/{u + 1:05d}.wav"
                pros = EMOTION_PROSODY[["NEU", "HAP", "NEU", "SAD"][(vi + u) % 4]].scaled(0.4)
                y = synth(_sentence(rng, topics[(si + vi) % len(topics)]), voice, pros, sample_rate,
                          seed=hash_seed(seed, rel))
                _write_audio(out / "wav" / rel, y, sample_rate)
                split_lines.append(f"{1 + (u % 3)} {rel}")
                n += 1
    (out / "vox1_meta.csv").write_text("\n".join(meta) + "\n")
    (out / "iden_split.txt").write_text("\n".join(split_lines) + "\n")
    return {"engine": engine, "files": n}


# =========================================================================== sound classes


def _env(n: int, attack: int, decay: float, sr: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    e = np.exp(-t / decay)
    if attack > 0:
        e[:attack] *= np.linspace(0, 1, attack)
    return e


def _place(y: Any, event: Any, start: int) -> None:
    end = min(len(y), start + len(event))
    if end > start:
        y[start:end] += event[: end - start]


def _harmonic(f0: Any, sr: int, n_harm: int, tilt: float = 1.0) -> Any:
    import numpy as np

    phase = 2 * np.pi * np.cumsum(f0) / sr
    return sum((k ** -tilt) * np.sin(k * phase) * (k * f0 < 0.45 * sr) for k in range(1, n_harm + 1))


def _lowpass(x: Any, hz: float, sr: int, order: int = 4) -> Any:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(order, hz / (sr / 2), output="sos"), x)


def _bandpass(x: Any, lo: float, hi: float, sr: int, order: int = 4) -> Any:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(order, [lo / (sr / 2), hi / (sr / 2)], btype="band", output="sos"), x)


def _dog(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = np.zeros(n)
    for _ in range(int(rng.integers(2, 5))):
        m = int(rng.uniform(0.12, 0.25) * sr)
        f0 = np.linspace(rng.uniform(450, 650), rng.uniform(300, 400), m)
        bark = _harmonic(f0, sr, 12, 0.8) + 0.4 * rng.standard_normal(m)
        _place(y, bark * _env(m, int(0.01 * sr), 0.07, sr), int(rng.integers(0, n - m)))
    return y


def _rooster(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    m = int(min(n - 1, rng.uniform(1.0, 1.6) * sr))
    u = np.linspace(0, 1, m)
    f0 = rng.uniform(450, 550) + 450 * np.sin(np.pi * np.minimum(u * 1.6, 1)) * (u < 0.8) + 200 * (u >= 0.8)
    crow = _harmonic(f0, sr, 10, 1.1) * np.sin(np.pi * u) ** 0.5
    y = np.zeros(n)
    _place(y, crow, int(rng.integers(0, n - m)))
    return y


def _rain(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = _lowpass(rng.standard_normal(n), rng.uniform(2500, 5000), sr, 2)
    for pos in rng.integers(0, n - 200, size=int(rng.uniform(150, 400) * n / sr)):
        _place(y, rng.uniform(1, 3) * np.exp(-np.arange(200) / 25.0) * rng.standard_normal(200), int(pos))
    return y


def _sea_waves(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    period = rng.uniform(2.5, 5.0)
    am = 0.25 + np.sin(np.pi * (t / period + rng.uniform())) ** 4
    return _lowpass(rng.standard_normal(n), rng.uniform(600, 1200), sr, 2) * am


def _crickets(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    carrier = np.sin(2 * np.pi * rng.uniform(4000, 5200) * t)
    pulses = (np.sin(2 * np.pi * rng.uniform(25, 40) * t) > 0.3).astype(float)
    chirps = ((t * rng.uniform(1.5, 2.5) + rng.uniform()) % 1.0 < 0.35).astype(float)
    return carrier * _lowpass(pulses * chirps, 400, sr, 2)


def _chirping_birds(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = np.zeros(n)
    for _ in range(int(rng.uniform(8, 20) * n / sr / 5)):
        m = int(rng.uniform(0.05, 0.12) * sr)
        f = np.linspace(rng.uniform(2500, 4000), rng.uniform(4500, 6500), m)
        _place(y, np.sin(2 * np.pi * np.cumsum(f) / sr) * np.hanning(m), int(rng.integers(0, n - m)))
    return y


def _siren(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    f0 = rng.uniform(650, 800) + rng.uniform(300, 450) * np.sin(2 * np.pi * t / rng.uniform(1.0, 2.5))
    return _harmonic(f0, sr, 5, 1.5)


def _clock_tick(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = np.zeros(n)
    period = int(rng.choice([0.5, 1.0]) * sr)
    m = int(0.02 * sr)
    tick = np.sin(2 * np.pi * rng.uniform(2000, 3200) * np.arange(m) / sr) * np.exp(-np.arange(m) / (0.003 * sr))
    for i, pos in enumerate(range(int(rng.integers(0, period)), n - m, period // 2)):
        _place(y, tick * (1.0 if i % 2 == 0 else 0.6), pos)
    return y


def _church_bells(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = np.zeros(n)
    base = rng.uniform(280, 480)
    m = int(min(n, 2.5 * sr))
    t = np.arange(m) / sr
    bell = sum(a * np.sin(2 * np.pi * base * r * t) * np.exp(-t / d)
               for r, a, d in ((0.5, 0.6, 1.5), (1.0, 1.0, 1.0), (1.19, 0.5, 0.8), (1.5, 0.4, 0.6),
                               (2.0, 0.5, 0.5), (2.61, 0.3, 0.3)))
    step = int(rng.uniform(1.1, 1.8) * sr)
    for pos in range(int(rng.integers(0, step)), n, step):
        _place(y, bell, pos)
    return y


def _engine_hum(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    f0 = rng.uniform(28, 45) * (1 + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    return _harmonic(f0, sr, 30, 0.7) + 0.3 * _lowpass(rng.standard_normal(n), 800, sr)


def _helicopter(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    t = np.arange(n) / sr
    thump = (np.sin(2 * np.pi * rng.uniform(12, 20) * t) > 0.6).astype(float)
    return _lowpass(rng.standard_normal(n) * _lowpass(thump, 60, sr, 2), 500, sr) * 4 + \
        0.1 * np.sin(2 * np.pi * rng.uniform(900, 1300) * t)


def _glass_breaking(rng: Any, sr: int, n: int) -> Any:
    import numpy as np

    y = np.zeros(n)
    start = int(rng.uniform(0.2, 1.5) * sr)
    m = int(0.08 * sr)
    _place(y, rng.standard_normal(m) * _env(m, 0, 0.02, sr) * 3, start)
    for _ in range(int(rng.integers(20, 40))):
        k = int(0.05 * sr)
        ping = np.sin(2 * np.pi * rng.uniform(3000, 8000) * np.arange(k) / sr) * _env(k, 0, 0.01, sr)
        _place(y, ping * rng.uniform(0.3, 1), start + int(rng.uniform(0, 1.2) * sr))
    return y


SOUND_CLASSES: dict[str, Callable[[Any, int, int], Any]] = {
    "dog": _dog, "rain": _rain, "siren": _siren, "clock_tick": _clock_tick, "church_bells": _church_bells,
    "crickets": _crickets, "rooster": _rooster, "sea_waves": _sea_waves, "chirping_birds": _chirping_birds,
    "engine": _engine_hum, "helicopter": _helicopter, "glass_breaking": _glass_breaking,
}


def make_esc50(out: Path, *, seed: int = 0, classes: int | list[str] = 6, folds: int = 5, clips_per_fold: int = 1,
               seconds: float = 5.0, sample_rate: int = 44100) -> dict[str, Any]:
    """audio/{fold}-{src_file}-{take}-{target}.wav + meta/esc50.csv (the real columns; targets
    and the esc10 flag are the real ones for each category)."""
    import numpy as np

    from .esc50 import CATEGORIES, ESC10

    names = list(SOUND_CLASSES)[:classes] if isinstance(classes, int) else list(classes)
    bad = [c for c in names if c not in SOUND_CLASSES]
    if bad:
        raise MchError(f"esc50 generator: no synthetic sound for {bad}; available: {', '.join(SOUND_CLASSES)}")
    if not 1 <= folds <= 5:
        raise MchError("esc50 generator: folds must be 1-5")
    rng = np.random.default_rng([seed, 7004])
    n = int(seconds * sample_rate)
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    used: set[int] = set()
    for fold in range(1, folds + 1):
        for cat in names:
            for c in range(clips_per_fold):
                src = int(rng.integers(10000, 300000))
                while src in used:
                    src += 1
                used.add(src)
                target = CATEGORIES.index(cat)
                fname = f"{fold}-{src}-A-{target}.wav"
                y = SOUND_CLASSES[cat](np.random.default_rng(hash_seed(seed, fname)), sample_rate, n)
                y = y / (np.sqrt(np.mean(y ** 2)) + 1e-9) * rng.uniform(0.04, 0.1)
                y = y + 2e-4 * rng.standard_normal(n)
                _write_audio(out / "audio" / fname, np.clip(y, -0.99, 0.99).astype(np.float32), sample_rate)
                rows.append(f"{fname},{fold},{target},{cat},{cat in ESC10},{src},A")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return {"files": len(rows) - 1, "classes": names}


# =========================================================================== scenes

# Real COCO category ids, names and supercategories, each drawn as a simple icon.
SCENE_CATEGORIES = [
    {"id": 37, "name": "sports ball", "supercategory": "sports"},
    {"id": 38, "name": "kite", "supercategory": "sports"},
    {"id": 34, "name": "frisbee", "supercategory": "sports"},
    {"id": 13, "name": "stop sign", "supercategory": "outdoor"},
    {"id": 85, "name": "clock", "supercategory": "indoor"},
    {"id": 84, "name": "book", "supercategory": "indoor"},
    {"id": 72, "name": "tv", "supercategory": "electronic"},
    {"id": 55, "name": "orange", "supercategory": "food"},
    {"id": 59, "name": "pizza", "supercategory": "food"},
    {"id": 60, "name": "donut", "supercategory": "food"},
]
_COLORS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 150, 60), "yellow": (230, 200, 40),
           "purple": (130, 50, 160), "white": (240, 240, 240), "black": (25, 25, 25), "orange": (240, 140, 30)}
_NUMBERS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
            "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
DEFAULT_COUNTS = [1, 3, 6, 12, 2, 8, 4, 0, 1, 5, 15, 2]


def hash_seed(*parts: Any) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256("\0".join(map(str, parts)).encode()).digest()[:8], "little")


def _shape(name: str, cx: float, cy: float, s: float) -> tuple[list[tuple[float, float]], float, float]:
    """Outline polygon, half-width and half-height of a category's icon of size s."""
    import numpy as np

    def ellipse(rx: float, ry: float, k: int = 20) -> list[tuple[float, float]]:
        a = np.linspace(0, 2 * np.pi, k, endpoint=False)
        return [(cx + rx * np.cos(t), cy + ry * np.sin(t)) for t in a]

    def regular(r: float, k: int, rot: float) -> list[tuple[float, float]]:
        a = rot + np.linspace(0, 2 * np.pi, k, endpoint=False)
        return [(cx + r * np.cos(t), cy + r * np.sin(t)) for t in a]

    r = s / 2
    if name in ("sports ball", "orange", "clock", "donut"):
        return ellipse(r, r), r, r
    if name == "frisbee":
        return ellipse(r, r * 0.45), r, r * 0.45
    if name == "stop sign":
        return regular(r, 8, np.pi / 8), r, r
    if name == "kite":
        return [(cx, cy - r), (cx + r * 0.6, cy), (cx, cy + r), (cx - r * 0.6, cy)], r * 0.6, r
    if name == "pizza":
        return [(cx - r, cy - r * 0.8), (cx + r, cy - r * 0.8), (cx, cy + r * 0.8)], r, r * 0.8
    if name == "book":
        return [(cx - r * 0.7, cy - r), (cx + r * 0.7, cy - r), (cx + r * 0.7, cy + r), (cx - r * 0.7, cy + r)], r * 0.7, r
    if name == "tv":
        return [(cx - r * 1.3, cy - r), (cx + r * 1.3, cy - r), (cx + r * 1.3, cy + r), (cx - r * 1.3, cy + r)], r * 1.3, r
    raise MchError(f"no icon for category {name!r}")


def _poly_area(pts: list[tuple[float, float]]) -> float:
    s = 0.0
    for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1]):
        s += x1 * y2 - x2 * y1
    return abs(s) / 2


def _draw(draw: Any, name: str, pts: list[tuple[float, float]], color: tuple[int, int, int], cx: float, cy: float,
          r: float) -> None:
    draw.polygon(pts, fill=color, outline=(0, 0, 0))
    if name == "clock":
        draw.line([(cx, cy), (cx, cy - 0.7 * r)], fill=(0, 0, 0), width=max(1, int(r / 6)))
        draw.line([(cx, cy), (cx + 0.5 * r, cy)], fill=(0, 0, 0), width=max(1, int(r / 6)))
    elif name == "donut":
        draw.ellipse([cx - r * 0.4, cy - r * 0.4, cx + r * 0.4, cy + r * 0.4], fill=(250, 250, 250))
    elif name == "tv":
        draw.rectangle([cx - r * 1.1, cy - r * 0.8, cx + r * 1.1, cy + r * 0.8], fill=(90, 130, 170))
    elif name == "sports ball":
        draw.line([(cx - r, cy), (cx + r, cy)], fill=(0, 0, 0), width=1)


def _rle(mask: Any) -> dict[str, Any]:
    """Uncompressed COCO RLE (column-major runs, starting with a run of zeros)."""
    import numpy as np

    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _caption_list(names: list[str]) -> str:
    from collections import Counter

    counts = Counter(names)
    parts = []
    for name, k in counts.most_common(3):
        word = _NUMBERS[k] if k < len(_NUMBERS) else "many"
        parts.append(f"{'a' if k == 1 and name[0] not in 'aeiou' else 'an' if k == 1 else word} "
                     f"{name if k == 1 else name + 's'}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + (" and other things" if len(counts) > 3 else "")


def render_scene(rng: Any, width: int, height: int, count: int, categories: list[dict[str, Any]],
                 crowd: bool) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """One scene: the PIL image, its instance annotations (without ids) and what was drawn."""
    import numpy as np
    from PIL import Image, ImageDraw

    bg_name = str(rng.choice(["gray", "beige", "sky"]))
    bg = {"gray": (150, 150, 150), "beige": (225, 210, 180), "sky": (170, 205, 235)}[bg_name]
    base = np.clip(np.asarray(bg, float) + rng.normal(0, 6, size=(height, width, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    scale = str(rng.choice(["small", "medium", "large"]))
    layout = str(rng.choice(["clustered", "dispersed"]))
    s0 = {"small": 0.08, "medium": 0.16, "large": 0.3}[scale] * min(width, height)
    if count > 6:
        s0 = min(s0, 0.16 * min(width, height))  # many objects must fit
    centre = (rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height)
    anns, drawn = [], []
    for _ in range(count):
        cat = categories[int(rng.integers(len(categories)))]
        s = s0 * rng.uniform(0.8, 1.25)
        pts, hw, hh = _shape(cat["name"], 0.0, 0.0, s)
        if layout == "clustered":
            cx, cy = rng.normal(centre[0], 0.1 * width), rng.normal(centre[1], 0.1 * height)
        else:
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        cx = float(np.clip(cx, hw + 1, width - hw - 1))  # keep the whole object inside the frame
        cy = float(np.clip(cy, hh + 1, height - hh - 1))
        pts, hw, hh = _shape(cat["name"], cx, cy, s)
        color_name = str(rng.choice(list(_COLORS)))
        _draw(draw, cat["name"], pts, _COLORS[color_name], cx, cy, s / 2)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, y0 = min(xs), min(ys)
        area = np.pi * (s / 2) ** 2 if cat["name"] in ("sports ball", "orange", "clock") else _poly_area(pts)
        if cat["name"] == "donut":
            area = np.pi * ((s / 2) ** 2 - (0.4 * s / 2) ** 2)
        anns.append({"category_id": cat["id"], "iscrowd": 0, "area": round(float(area), 2),
                     "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
                     "segmentation": [[round(v, 2) for p in pts for v in p]]})
        drawn.append({"category": cat["name"], "color": color_name, "centre": [round(cx, 2), round(cy, 2)],
                      "size": round(float(s), 2)})
    if crowd:
        cat = categories[0]
        mask = np.zeros((height, width), dtype=bool)
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.8) * height
        yy, xx = np.mgrid[:height, :width]
        for _ in range(int(rng.integers(8, 15))):
            dx, dy = rng.normal(cx, 0.05 * width), rng.normal(cy, 0.05 * height)
            r = max(1.5, 0.015 * min(width, height))
            draw.ellipse([dx - r, dy - r, dx + r, dy + r], fill=(60, 60, 60))
            mask |= (xx - dx) ** 2 + (yy - dy) ** 2 <= r * r
        ys, xs = np.nonzero(mask)
        if len(xs):
            anns.append({"category_id": cat["id"], "iscrowd": 1, "area": float(mask.sum()),
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                  float(ys.max() - ys.min() + 1)], "segmentation": _rle(mask)})
    return img, anns, {"background": bg_name, "scale": scale, "layout": layout, "objects": drawn, "crowd": crowd}


def _captions(info: dict[str, Any]) -> list[str]:
    names = [o["category"] for o in info["objects"]]
    bg = info["background"]
    if not names:
        return [f"An empty {bg} background.", "A plain picture with nothing in it.",
                f"Nothing but a {bg} surface.", "An image showing no objects at all.", f"A blank {bg} scene."]
    what = _caption_list(names)
    n = len(names)
    count = _NUMBERS[n] if n < len(_NUMBERS) else "many"
    return [f"A picture of {what}.", f"{what[0].upper() + what[1:]} on a {bg} background.",
            f"An image showing {what}.", f"There {'is' if n == 1 else 'are'} {count} object{'s' if n != 1 else ''} "
            f"in this {info['layout']} scene.", f"A {bg} scene with {what}."]


def _scene_categories(categories: int | list[str] | None) -> list[dict[str, Any]]:
    if categories is None:
        return list(SCENE_CATEGORIES)
    if isinstance(categories, int):
        return list(SCENE_CATEGORIES[:categories])
    by_name = {c["name"]: c for c in SCENE_CATEGORIES}
    bad = [c for c in categories if c not in by_name]
    if bad:
        raise MchError(f"no icon for categories {bad}; available: {', '.join(by_name)}")
    return [by_name[c] for c in categories]


def make_coco(out: Path, *, seed: int = 0, images: int = 24, counts: list[int] | None = None, width: int = 160,
              height: int = 120, categories: int | list[str] | None = None, crowd_every: int = 5,
              split: str = "val2017") -> dict[str, Any]:
    """{split}/{id:012d}.jpg + annotations/instances_{split}.json + captions_{split}.json.
    `counts[i]` = objects in image i (default: a cycle covering every count bin and 0);
    every `crowd_every`-th image also gets an iscrowd=1 group (0 = never)."""
    import numpy as np

    cats = _scene_categories(categories)
    counts = list(counts) if counts is not None else [DEFAULT_COUNTS[i % len(DEFAULT_COUNTS)] for i in range(images)]
    rng = np.random.default_rng([seed, 7005])
    (out / split).mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    imgs, anns, caps, truth = [], [], [], []
    ann_id, cap_id = 1, 1
    cap_order = []
    for i, count in enumerate(counts):
        image_id = 1 + i
        crowd = bool(crowd_every) and i % crowd_every == crowd_every - 1
        img, objs, info = render_scene(rng, width, height, int(count), cats, crowd)
        fname = f"{image_id:012d}.jpg"
        img.save(out / split / fname, quality=90)
        imgs.append({"license": 1, "file_name": fname, "coco_url": "", "height": height, "width": width,
                     "date_captured": "2017-01-01 00:00:00", "flickr_url": "", "id": image_id})
        for a in objs:
            anns.append({"segmentation": a["segmentation"], "area": a["area"], "iscrowd": a["iscrowd"],
                         "image_id": image_id, "bbox": a["bbox"], "category_id": a["category_id"], "id": ann_id})
            ann_id += 1
        texts = _captions(info)
        for j in rng.permutation(len(texts)):  # which template gets the lowest id varies
            cap_order.append({"image_id": image_id, "id": cap_id, "caption": texts[int(j)]})
            cap_id += 1
        truth.append({"image_id": image_id, "file_name": fname, "count": int(count), **info})
    # captions file order is not id order in the real file either
    caps = [cap_order[j] for j in rng.permutation(len(cap_order))]
    info_block = {"description": "mch synthetic COCO-layout corpus", "version": "1.0", "year": 2017}
    licenses = [{"id": 1, "name": "CC0", "url": ""}]
    with open(out / "annotations" / f"instances_{split}.json", "w") as f:
        json.dump({"info": info_block, "licenses": licenses, "images": imgs, "annotations": anns,
                   "categories": cats}, f)
    with open(out / "annotations" / f"captions_{split}.json", "w") as f:
        json.dump({"info": info_block, "licenses": licenses, "images": imgs, "annotations": caps}, f)
    return {"files": len(imgs), "images": truth}


def make_gqa(out: Path, *, seed: int = 0, images: int = 12, width: int = 160, height: int = 120,
             categories: int | list[str] | None = None, split: str = "val") -> dict[str, Any]:
    """images/{imageId}.jpg + {split}_balanced_questions.json with five questions per scene,
    one per structural type (verify, query, choose, logical, compare)."""
    import numpy as np

    cats = _scene_categories(categories)
    rng = np.random.default_rng([seed, 7006])
    (out / "images").mkdir(parents=True, exist_ok=True)
    questions: dict[str, Any] = {}
    qn = 0
    for i in range(images):
        image_id = str(2400000 + i)
        img, objs, info = render_scene(rng, width, height, int(rng.integers(2, 6)), cats, crowd=False)
        img.save(out / "images" / f"{image_id}.jpg", quality=90)
        objects = info["objects"]
        present = sorted({o["category"] for o in objects})
        absent = [c["name"] for c in cats if c["name"] not in present]
        largest = max(objects, key=lambda o: o["size"])
        a, b = objects[0], objects[1]

        def add(question: str, answer: str, structural: str, semantic: str, detailed: str, full: str) -> None:
            nonlocal qn
            questions[str(20000000 + qn)] = {
                "imageId": image_id, "question": question, "answer": answer, "fullAnswer": full,
                "isBalanced": True, "types": {"structural": structural, "semantic": semantic, "detailed": detailed}}
            qn += 1

        ask = present[0] if (i % 2 == 0 or not absent) else absent[0]
        yes = ask in present
        add(f"Is there a {ask} in the image?", "yes" if yes else "no", "verify", "obj", "exist",
            f"{'Yes' if yes else 'No'}, there is {'a' if yes else 'no'} {ask}.")
        add("What is the largest object?", largest["category"], "query", "cat", "categoryThat",
            f"The largest object is a {largest['category']}.")
        side = "left" if a["centre"][0] < width / 2 else "right"
        add(f"Is the {a['color']} {a['category']} on the left or on the right?", side, "choose", "rel", "positionChoose",
            f"The {a['category']} is on the {side}.")
        c2 = absent[0] if (i % 3 == 0 and absent) else b["category"]
        both = c2 in present
        add(f"Are there both a {a['category']} and a {c2}?", "yes" if both else "no", "logical", "obj", "logicalObj",
            f"{'Yes' if both else 'No'}, there {'are' if both else 'is not'} both.")
        bigger = a["size"] > b["size"]
        add(f"Is the {a['color']} {a['category']} larger than the {b['color']} {b['category']}?",
            "yes" if bigger else "no", "compare", "attr", "sizeCompare", f"{'Yes' if bigger else 'No'}.")
    with open(out / f"{split}_balanced_questions.json", "w") as f:
        json.dump(questions, f)
    return {"files": images, "questions": len(questions)}


# =========================================================================== entry points

GENERATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "cremad": make_cremad, "esc50": make_esc50, "librispeech": make_librispeech, "voxceleb1": make_voxceleb1,
    "coco": make_coco, "gqa": make_gqa,
}


# Types and ranges of the generators' arguments beyond what their defaults say (mch.api.Param),
# checked before anything is written. Speech: the top formant band needs a rate above 8 kHz;
# ESC-50: rain's low-pass reaches 5 kHz (a rate above 10 kHz) and a bark lasts up to 0.25 s;
# images: icons need a few pixels.
_SPEECH = {"sample_rate": Param(int, gt=8000), "engine": Param(str, choices=("auto", "numpy", "espeak"))}
_IMAGES = {"images": Param(int, ge=1), "width": Param(int, ge=16), "height": Param(int, ge=16),
           "categories": Param((int, list), items=str, ge=1, le=len(SCENE_CATEGORIES), nullable=True)}
GENERATOR_PARAMS: dict[str, dict[str, Param]] = {
    "cremad": {**_SPEECH, "actors": Param(int, ge=1), "sentences": Param((int, list), items=str, ge=1),
               "emotions": Param(list, items=str, nullable=True), "levels": Param(list, items=str, nullable=True)},
    "librispeech": {**_SPEECH, "speakers": Param(int, ge=1), "chapters": Param(int, ge=1),
                    "utterances": Param(int, ge=1)},
    "voxceleb1": {**_SPEECH, "speakers": Param(int, ge=1), "videos": Param(int, ge=1), "utterances": Param(int, ge=1)},
    "esc50": {"classes": Param((int, list), items=str, ge=1, le=len(SOUND_CLASSES)), "folds": Param(int, ge=1, le=5),
              "clips_per_fold": Param(int, ge=1), "seconds": Param(float, ge=0.5), "sample_rate": Param(int, gt=10000)},
    "coco": {**_IMAGES, "counts": Param(list, items=int, ge=0, nullable=True)},
    "gqa": dict(_IMAGES),
}


def check_args(name: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Generator `name`'s keyword arguments in their types and ranges, or one sentence naming
    the bad one; types come from each make_* signature's defaults."""
    import inspect

    from mch.api import check_values, param_table

    sig = inspect.signature(GENERATORS[name])
    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
    return check_values(f"synthetic corpus {name!r}", kw, param_table(defaults, GENERATOR_PARAMS.get(name)))


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params, sort_keys=True, default=list))


def make(name: str, out_dir: str | os.PathLike, **kw: Any) -> Path:
    """Write corpus `name` (one of GENERATORS) into `out_dir`, which must be new or empty, and
    return its path. Keyword arguments are the generator's (see each make_* function); `seed`
    (default 0) makes it reproducible."""
    if name not in GENERATORS:
        raise MchError(f"unknown synthetic corpus {name!r}; choose one of {', '.join(GENERATORS)}")
    kw = check_args(name, kw)
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MchError(f"{out} already exists and is not an empty directory; choose a new --out")
    writable_dir(out, "--out")
    try:
        info = GENERATORS[name](out, **kw)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    manifest = {"generator": name, "params": _jsonable(kw), "created_by": "mch.plugins.attributes.synth",
                "description": DESCRIPTIONS[name], **info}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def writable_dir(path: Path, what: str) -> None:
    """Create `path` (and its parents) and prove it writable by writing a file (permission bits
    do not stop root, so only trying tells), or one sentence naming it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".mch-write-test.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else \
            (exc.strerror or str(exc)).lower()
        raise MchError(f"cannot write to {path} ({what}): {why}; choose a writable directory") from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any] | None:
    try:
        return json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def ensure(name: str, out_dir: str | os.PathLike, **kw: Any) -> Path:
    """`out_dir` holding corpus `name` with these parameters: reused when its manifest
    matches, otherwise generated (into a temporary sibling, then renamed, so a concurrent or
    interrupted run never leaves half a corpus)."""
    if name not in GENERATORS:
        raise MchError(f"unknown synthetic corpus {name!r}; choose one of {', '.join(GENERATORS)}")
    kw = check_args(name, kw)
    out = Path(out_dir).expanduser()
    m = read_manifest(out)
    if m is not None and m.get("generator") == name and m.get("params") == _jsonable(kw):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if m is None or m.get("created_by") != "mch.plugins.attributes.synth":
            raise MchError(f"{out} exists and is not an mch synthetic corpus; move it or set MCH_DATA elsewhere")
    writable_dir(out.parent, "where synthetic corpora are generated: $MCH_DATA or ~/.cache/mch/data")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        make(name, tmp / "corpus", **kw)
        if out.exists():
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp / "corpus", out)
        except OSError:
            if read_manifest(out) is None:  # someone else won the race with a complete corpus
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
