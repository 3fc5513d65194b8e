"""The speech synthesiser: voices, emotional prosody, and two engines.

Each synthetic speaker has its own pitch, formant scale (vocal-tract length), spectral tilt,
breathiness and rate; emotions change pitch level, range and contour, rate, energy, tremor,
jitter and breathiness (CREMA-D levels LO/MD/HI scale the change). Text is rendered letter by
letter into vowel (formant), fricative, stop and sonorant segments by a small source-filter
synthesiser in numpy. With `engine="espeak"` (or "auto" when `espeak-ng` is on PATH) the
words are spoken by espeak-ng instead, with the same speaker and emotion settings mapped onto
its voice variant, pitch, speed and amplitude.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from mch.api import MchError

from .._media import resample

SPEECH_RATE = 16000
NO_ESPEAK = "engine 'espeak' needs espeak-ng on PATH (apt-get install espeak-ng); use engine 'numpy'"


@dataclass
class Voice:
    f0: float  # mean pitch, Hz
    formant_scale: float  # >1: shorter vocal tract, higher formants
    tilt: float  # harmonic roll-off exponent
    breath: float  # aspiration noise relative to voicing
    rate: float  # speaking-rate multiplier
    espeak: str  # espeak-ng voice variant


@dataclass
class Prosody:
    f0: float = 1.0  # pitch level multiplier
    range: float = 1.0  # pitch excursion multiplier
    slope: float = -0.15  # overall contour (negative = declination)
    rate: float = 1.0
    gain: float = 1.0
    tremor: float = 0.0  # 6 Hz pitch modulation depth
    jitter: float = 0.0  # random pitch perturbation depth
    breath: float = 0.0  # added breathiness
    tilt: float = 0.0  # added roll-off (negative = brighter, tenser voice)

    def scaled(self, k: float) -> Prosody:
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

_VOWELS = {
    "a": (730, 1090, 2440),
    "e": (530, 1840, 2480),
    "i": (300, 2200, 2950),
    "o": (570, 840, 2410),
    "u": (320, 900, 2240),
    "y": (420, 1900, 2600),
}
_SONORANT = {
    "l": (360, 1300, 2700),
    "m": (260, 1000, 2200),
    "n": (260, 1500, 2500),
    "r": (420, 1300, 1700),
    "w": (300, 700, 2200),
}
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
        voices.append(
            Voice(
                f0=float(f0),
                formant_scale=float((1.12 if high else 0.93) + rng.uniform(-0.05, 0.06)),
                tilt=float(rng.uniform(0.9, 1.6)),
                breath=float(rng.uniform(0.01, 0.12)),
                rate=float(rng.uniform(0.88, 1.12)),
                espeak=(high_variants if high else low_variants)[(i // 2) % (5 if high else 7)],
            )
        )
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
        x = (c[..., 2 * half + 1 :] - c[..., : -2 * half - 1])[..., : x.shape[-1]] / (2 * half)
    return x


@cache
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
    f0 = (
        voice.f0
        * pros.f0
        * (
            1
            + 0.12 * pros.range * (pros.slope * (2 * t / T - 1) + 0.6 * accent)
            + pros.tremor * np.sin(2 * np.pi * 6.0 * t)
            + pros.jitter * jit
        )
    )
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
    frication = sum(a * b for a, b in zip(noise_amp, bands, strict=True))
    y = voiced * src / (np.abs(src).max() + 1e-9) + 0.35 * frication + 0.5 * breath
    y += 3e-4 * rng.standard_normal(n)  # recording noise floor: never digital silence
    rms = np.sqrt(np.mean(y[voiced > 0.2] ** 2)) if np.any(voiced > 0.2) else np.sqrt(np.mean(y**2))
    y = y * (0.06 * pros.gain / (rms + 1e-9))
    return np.clip(y, -0.99, 0.99).astype(np.float32)


def espeak_path() -> str | None:
    return shutil.which("espeak-ng")


def synth_espeak(text: str, voice: Voice, pros: Prosody, sr: int, seed: int) -> Any:
    import numpy as np
    import soundfile as sf

    exe = espeak_path()
    if exe is None:
        raise MchError(NO_ESPEAK)
    pitch = int(np.clip(50 * (voice.f0 * pros.f0 / 140.0) ** 0.8, 0, 99))
    speed = int(np.clip(165 * voice.rate * pros.rate, 80, 400))
    amp = 100  # loudness is set after synthesis, as for the numpy engine
    try:
        out = subprocess.run(
            [exe, "-v", f"en-us+{voice.espeak}", "-p", str(pitch), "-s", str(speed), "-a", str(amp), "--stdout", text],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
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


def speech_engine(engine: str) -> tuple[str, Callable[..., Any]]:
    """(name, synthesis function) of engine "auto", "numpy" or "espeak"."""
    if engine == "auto":
        engine = "espeak" if espeak_path() else "numpy"
    if engine == "numpy":
        return engine, synth_numpy
    if engine == "espeak":
        if espeak_path() is None:
            raise MchError(NO_ESPEAK)
        return engine, synth_espeak
    raise MchError(f"unknown speech engine {engine!r}; use auto, numpy or espeak")
