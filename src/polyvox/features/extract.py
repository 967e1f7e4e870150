"""Acoustic features for one utterance (runs in worker processes): log-mel, F0, energy.

All three share one frame grid: ``audio.hop_length`` hops, centred frames, so frame ``t`` of the
mel, the F0 track and the energy describe the same stretch of audio. Stored as an ``.npz`` with
fixed zip timestamps, so the same audio gives the same bytes; load with ``np.load`` (no pickle).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from polyvox.config import AudioSection
from polyvox.fileio import save_arrays
from polyvox.signal.mel import log_mel
from polyvox.signal.pitch import f0


@dataclass(frozen=True)
class FeatureTask:
    audio: str
    target: str
    cfg: AudioSection


def compute_features(signal: np.ndarray, cfg: AudioSection) -> dict[str, np.ndarray]:
    """``mel`` (n_mels, frames) log-magnitude, ``f0`` (frames,) Hz with 0 where unvoiced,
    ``energy`` (frames,) L2 norm of the linear magnitude spectrum."""
    import torch

    wave = torch.from_numpy(np.ascontiguousarray(signal, dtype=np.float32))
    mel = log_mel(wave, cfg).numpy()
    spectrum = torch.stft(wave, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                          window=torch.hann_window(cfg.win_length), center=True, return_complex=True)
    energy = torch.linalg.vector_norm(spectrum.abs(), dim=0).numpy()
    track = f0(signal, cfg)
    frames = min(mel.shape[1], energy.shape[0], track.shape[0])
    return {
        "mel": mel[:, :frames].astype(np.float32),
        "f0": track[:frames],
        "energy": energy[:frames].astype(np.float32),
    }


def extract(task: FeatureTask) -> dict[str, object]:
    """Compute, store, and return the sums needed for per-speaker statistics."""
    signal, rate = sf.read(task.audio, dtype="float32")
    if rate != task.cfg.sample_rate:
        raise ValueError(f"{task.audio}: sample rate {rate}, expected audio.sample_rate {task.cfg.sample_rate}")
    features = compute_features(signal, task.cfg)
    target = Path(task.target)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(target, features)
    voiced = features["f0"] > 0
    log_f0 = np.log(features["f0"][voiced].astype(np.float64))
    energy = features["energy"].astype(np.float64)
    mel = features["mel"].astype(np.float64)
    return {
        "frames": int(mel.shape[1]),
        "voiced": int(voiced.sum()),
        "log_f0_sum": float(log_f0.sum()),
        "log_f0_sq": float((log_f0**2).sum()),
        "energy_sum": float(energy.sum()),
        "energy_sq": float((energy**2).sum()),
        "mel_sum": mel.sum(axis=1).tolist(),
        "mel_sq": (mel**2).sum(axis=1).tolist(),
    }
