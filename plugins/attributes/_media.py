"""Reading and writing a corpus's media: audio and images.

Every reading failure is a `SampleError` naming the sample and its file, so the runner
decides whether to stop or to skip it (`--on-error skip`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from mch.api import SampleError
from mch.plugins._audio import resample


def sample_error(sample_id: str, path: str | os.PathLike | None, problem: str) -> SampleError:
    """One sentence naming the sample and its file."""
    where = f" ({path})" if path is not None else ""
    return SampleError(
        f"sample {sample_id!r}{where}: {problem}", sample_id=sample_id, path=None if path is None else str(path)
    )


# --------------------------------------------------------------------------- audio


def _check_wav_complete(path: str, sample_id: str) -> None:
    """libsndfile silently reads a truncated WAV up to its end; compare the data chunk the
    header declares with the bytes actually present."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX"):
            return  # not a plain RIFF WAV (RF64, other): let the decoder judge
        order = "little" if head[:4] == b"RIFF" else "big"
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            hdr = f.read(8)
            cid, clen = hdr[:4], int.from_bytes(hdr[4:8], order)
            if cid == b"data":
                avail = size - (pos + 8)
                if clen < 0x7FFF0000 and clen > avail:  # larger: a streamed file's "unknown" size
                    raise sample_error(
                        sample_id,
                        path,
                        f"the WAV file is truncated (its header declares {clen} data bytes, {avail} are present)",
                    )
                return
            pos += 8 + clen + (clen & 1)


def read_audio(
    source: str | os.PathLike | bytes,
    sample_id: str,
    *,
    expected_rate: int | None = None,
    target_rate: int | None = None,
    display_path: str | None = None,
) -> tuple[Any, int]:
    """Decode one audio file (a path, or the file's bytes) to (float32 mono waveform, rate).

    Stereo is averaged to mono. `expected_rate` is the corpus's documented rate: another rate
    means the file is not what the corpus says it is. `target_rate` resamples. Every failure
    is a `SampleError` naming the sample and the file."""
    import numpy as np
    import soundfile as sf

    path = display_path or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if isinstance(source, bytes):
        if len(source) == 0:
            raise sample_error(sample_id, path, "the audio file is empty")
        handle: Any = io.BytesIO(source)
    else:
        p = str(source)
        if not os.path.isfile(p):
            raise sample_error(sample_id, p, "the audio file does not exist")
        if os.path.getsize(p) == 0:
            raise sample_error(sample_id, p, "the audio file is empty")
        if p.lower().endswith(".wav"):
            _check_wav_complete(p, sample_id)
        handle = p
    try:
        info = sf.info(handle)
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        data, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as exc:
        why = getattr(exc, "error_string", None) or str(exc)
        raise sample_error(sample_id, path, f"the audio file cannot be decoded ({why.strip()})") from None
    if data.shape[0] == 0:
        raise sample_error(sample_id, path, "the audio file is empty (no samples)")
    if 0 < data.shape[0] < info.frames:
        raise sample_error(
            sample_id, path, f"the audio file is truncated ({data.shape[0]} of {info.frames} frames decoded)"
        )
    if not np.isfinite(data).all():
        raise sample_error(sample_id, path, "the audio file is corrupt (it decodes to NaN or inf)")
    if expected_rate and rate != expected_rate:
        raise sample_error(
            sample_id,
            path,
            f"the audio is {rate} Hz but this corpus is {expected_rate} Hz (pass native_rate=0 to accept any rate)",
        )
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if target_rate and target_rate != rate:
        wave, rate = resample(wave, rate, target_rate), int(target_rate)
    return np.ascontiguousarray(wave, dtype=np.float32), int(rate)


# --------------------------------------------------------------------------- images


def read_image(path: str | os.PathLike, sample_id: str, expected_size: tuple[int, int] | None = None) -> Any:
    """Open an image fully (so truncation shows now) as RGB; `expected_size` = (W, H) from the
    annotation: a different size means the labels do not describe this file."""
    from PIL import Image, UnidentifiedImageError

    p = str(path)
    if not os.path.isfile(p):
        raise sample_error(sample_id, p, "the image file does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise sample_error(sample_id, p, f"the image cannot be read ({exc})") from None
    if expected_size is not None and tuple(rgb.size) != tuple(expected_size):
        raise sample_error(
            sample_id,
            p,
            f"the image is {rgb.size[0]}x{rgb.size[1]} but its annotation says {expected_size[0]}x{expected_size[1]}",
        )
    return rgb


def write_audio(path: Path, y: Any, sr: int) -> None:
    """16-bit PCM, FLAC for a .flac path and WAV otherwise (parents created)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "FLAC" if path.suffix == ".flac" else "WAV"
    sf.write(str(path), y, sr, format=fmt, subtype="PCM_16")
