"""F0 on the mel's frame grid: pyin (probabilistic YIN) with ``audio``'s range and resolution. The
features stage tracks each take with it and the conversion member's synthesis tracks the teacher's
rendering with it, so the decoder reads at synthesis the contour it was trained on."""

from __future__ import annotations

import numpy as np

from polyvox.config import AudioSection


def f0(signal: np.ndarray, cfg: AudioSection) -> np.ndarray:
    """(frames,) float32 Hz, 0 where unvoiced; frame ``t`` centred at ``t * hop_length`` samples."""
    import librosa

    track, _, _ = librosa.pyin(np.asarray(signal, dtype=np.float64), fmin=cfg.f0_min, fmax=cfg.f0_max,
                               sr=cfg.sample_rate, frame_length=cfg.n_fft, hop_length=cfg.hop_length,
                               resolution=cfg.f0_resolution, center=True)
    return np.nan_to_num(track, nan=0.0).astype(np.float32)


def normalised_log_f0(track: np.ndarray, mean: float, std: float) -> tuple[np.ndarray, np.ndarray]:
    """(z-scored log-F0 with 0 where unvoiced, voiced flag), both (frames,) float32."""
    voiced = track > 0
    pitch = np.where(voiced, (np.log(np.maximum(track, 1.0)) - mean) / std, 0.0)
    return pitch.astype(np.float32), voiced.astype(np.float32)


def own_statistics(track: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of an utterance's own log-F0 over its voiced frames ((0, 1) if none)."""
    voiced = track > 0
    if voiced.sum() < 2:
        return 0.0, 1.0
    log_f0 = np.log(track[voiced].astype(np.float64))
    return float(log_f0.mean()), float(max(log_f0.std(), 1e-3))
