"""The log-mel analysis that every part of polyvox shares: features, the vocoders' targets, the
reference-audio front-end and the teacher rendering all call :func:`log_mel`, so they see one
spectrum (magnitude mel, Slaney scale and norm, centred frames)."""

from __future__ import annotations

from functools import lru_cache

from polyvox.config import AudioConfig

# log(max(mel, MEL_FLOOR)): the floor of HiFi-GAN/Tacotron recipes, about -11.5 in log units.
MEL_FLOOR = 1e-5


@lru_cache(maxsize=2)
def mel_transform(cfg: AudioConfig):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=1.0, norm="slaney", mel_scale="slaney",
        center=True,
    )


def log_mel(wave, cfg: AudioConfig):
    """(samples,) float tensor → (n_mels, frames) log-magnitude mel."""
    import torch

    return torch.log(torch.clamp(mel_transform(cfg)(wave), min=MEL_FLOOR))
