"""Sound classes, each a small generative recipe, and the ESC-50 layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mch.api import MchError

from .._media import write_audio
from ..esc50 import CATEGORIES, ESC10
from ._seed import hash_seed


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
    return sum((k**-tilt) * np.sin(k * phase) * (k * f0 < 0.45 * sr) for k in range(1, n_harm + 1))


def _lowpass(x: Any, hz: float, sr: int, order: int = 4) -> Any:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(order, hz / (sr / 2), output="sos"), x)


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
    bell = sum(
        a * np.sin(2 * np.pi * base * r * t) * np.exp(-t / d)
        for r, a, d in (
            (0.5, 0.6, 1.5),
            (1.0, 1.0, 1.0),
            (1.19, 0.5, 0.8),
            (1.5, 0.4, 0.6),
            (2.0, 0.5, 0.5),
            (2.61, 0.3, 0.3),
        )
    )
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
    return _lowpass(rng.standard_normal(n) * _lowpass(thump, 60, sr, 2), 500, sr) * 4 + 0.1 * np.sin(
        2 * np.pi * rng.uniform(900, 1300) * t
    )


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
    "dog": _dog,
    "rain": _rain,
    "siren": _siren,
    "clock_tick": _clock_tick,
    "church_bells": _church_bells,
    "crickets": _crickets,
    "rooster": _rooster,
    "sea_waves": _sea_waves,
    "chirping_birds": _chirping_birds,
    "engine": _engine_hum,
    "helicopter": _helicopter,
    "glass_breaking": _glass_breaking,
}


def make_esc50(
    out: Path,
    *,
    seed: int = 0,
    classes: int | list[str] = 6,
    folds: int = 5,
    clips_per_fold: int = 1,
    seconds: float = 5.0,
    sample_rate: int = 44100,
) -> dict[str, Any]:
    """audio/{fold}-{src_file}-{take}-{target}.wav + meta/esc50.csv (the real columns; targets
    and the esc10 flag are the real ones for each category)."""
    import numpy as np

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
            for _ in range(clips_per_fold):
                src = int(rng.integers(10000, 300000))
                while src in used:
                    src += 1
                used.add(src)
                target = CATEGORIES.index(cat)
                fname = f"{fold}-{src}-A-{target}.wav"
                y = SOUND_CLASSES[cat](np.random.default_rng(hash_seed(seed, fname)), sample_rate, n)
                y = y / (np.sqrt(np.mean(y**2)) + 1e-9) * rng.uniform(0.04, 0.1)
                y = y + 2e-4 * rng.standard_normal(n)
                write_audio(out / "audio" / fname, np.clip(y, -0.99, 0.99).astype(np.float32), sample_rate)
                rows.append(f"{fname},{fold},{target},{cat},{cat in ESC10},{src},A")
    (out / "meta").mkdir(parents=True, exist_ok=True)
    (out / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return {"files": len(rows) - 1, "classes": names}
