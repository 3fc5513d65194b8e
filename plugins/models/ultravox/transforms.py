"""The Ultravox processor's audio path: a sample's waveform at 16 kHz, Whisper log-mel
features of one clip alone, and its 30 s chunks (see the package docstring)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mch.api import Sample, SampleError

SAMPLE_RATE = 16000


def waveform(s: Sample, model: str) -> np.ndarray:
    """The sample's mono waveform at 16 kHz (resampled when it is not), or one SampleError."""
    media = s.media
    if not (isinstance(media, (tuple, list)) and len(media) == 2):
        raise SampleError(
            f"model {model!r}: sample {s.sample_id} is not speech (expected a (waveform, sample_rate) pair)",
            sample_id=s.sample_id,
        )
    try:
        wave, sr = np.asarray(media[0], dtype=np.float32), int(media[1])
    except (TypeError, ValueError):
        wave, sr = np.zeros((0, 0), np.float32), 0
    if wave.ndim == 2 and 1 in wave.shape:
        wave = wave.reshape(-1)
    if wave.ndim != 1 or not np.isfinite(wave).all() or sr <= 0:
        raise SampleError(
            f"sample {s.sample_id}: expected a finite mono waveform and a positive sample rate, "
            f"got an array of shape {wave.shape} at {media[1]!r} Hz",
            sample_id=s.sample_id,
        )
    if sr != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = math.gcd(sr, SAMPLE_RATE)
        wave = resample_poly(wave, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return wave


def log_mel(feature_extractor: Any, wave: np.ndarray) -> np.ndarray:
    """(n_mels, L) log-mel of one clip alone, L = ceil(samples / hop)."""
    hop = feature_extractor.hop_length
    if len(wave) < 2 * hop:  # the processor's minimum
        wave = np.pad(wave, (0, 2 * hop - len(wave)))
    x = feature_extractor(
        wave,
        sampling_rate=SAMPLE_RATE,
        padding="longest",
        pad_to_multiple_of=hop,
        truncation=False,
        return_attention_mask=True,
        return_tensors="np",
    )
    L = int(x["attention_mask"][0].sum())
    return x["input_features"][0][:, :L]


def mel_chunks(feats: np.ndarray, max_chunk: int) -> list[tuple[np.ndarray, int]]:
    """30 s chunks of one clip: (mel, real frames); continuation chunks padded to 30 s."""
    L, C = feats.shape[1], max_chunk
    out = []
    for off in range(0, L, C):
        m = feats[:, off : off + C]
        real = m.shape[1]
        if off > 0 and real < C:
            m = np.pad(m, ((0, 0), (0, C - real)))
        out.append((m, real))
    return out
