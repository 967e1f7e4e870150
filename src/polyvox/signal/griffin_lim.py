"""Griffin-Lim vocoder: log-mel → waveform with no training (torchaudio).

It inverts exactly the analysis ``features`` used (magnitude mel, Slaney scale and norm), so any
acoustic model output can be heard. A trained neural vocoder sounds better; this one needs nothing.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from polyvox.config import AudioSection
from polyvox.signal.mel import MEL_FLOOR


@lru_cache(maxsize=2)
def _transforms(cfg: AudioSection, iterations: int):
    import torchaudio

    inverse_mel = torchaudio.transforms.InverseMelScale(
        n_stft=cfg.n_fft // 2 + 1, n_mels=cfg.n_mels, sample_rate=cfg.sample_rate, f_min=cfg.f_min, f_max=cfg.f_max,
        norm="slaney", mel_scale="slaney",
    )
    griffin_lim = torchaudio.transforms.GriffinLim(
        n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, power=1.0, n_iter=iterations,
    )
    return inverse_mel, griffin_lim


@torch.no_grad()
def griffin_lim(log_mel: torch.Tensor, cfg: AudioSection, iterations: int = 32) -> torch.Tensor:
    """(n_mels, frames) or (batch, n_mels, frames) log-mel → waveform (samples,) or (batch, samples)."""
    inverse_mel, transform = _transforms(cfg, iterations)
    magnitude = inverse_mel(torch.exp(log_mel.float()).clamp(min=MEL_FLOOR))
    return transform(magnitude.clamp(min=0))
