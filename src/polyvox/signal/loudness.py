"""Loudness of a signal (ITU-R BS.1770): ``clean`` normalises corpus takes with it, the teacher
front-end its renderings, so both reach the model at one level."""

from __future__ import annotations

import numpy as np

# pyloudnorm measures over 400 ms blocks (BS.1770); shorter clips get an RMS-based estimate.
LOUDNESS_BLOCK_SECONDS = 0.4


def loudness(signal: np.ndarray, rate: int) -> float:
    """Integrated loudness in LUFS (ITU-R BS.1770 via pyloudnorm); -inf for digital silence."""
    import pyloudnorm

    if signal.size >= LOUDNESS_BLOCK_SECONDS * rate:
        return float(pyloudnorm.Meter(rate).integrated_loudness(signal))
    rms = float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) if signal.size else 0.0
    return 20 * np.log10(rms) - 0.691 if rms > 0 else float("-inf")
