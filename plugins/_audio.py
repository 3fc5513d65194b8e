"""Audio helpers that attribute datasets (reading corpora) and model plugins (feeding their
processors) both need: here so that neither kind of plugin imports the other."""

from __future__ import annotations

import math
from typing import Any


def resample(wave: Any, rate: int, target: int) -> Any:
    """`wave` at `target` Hz: polyphase resampling (scipy.signal.resample_poly, its default
    Kaiser window) to float32; unchanged when the rates agree."""
    import numpy as np
    from scipy.signal import resample_poly

    if rate == target:
        return wave
    g = math.gcd(int(rate), int(target))
    return resample_poly(wave, int(target) // g, int(rate) // g).astype(np.float32)
