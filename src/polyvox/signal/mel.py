"""The log-mel analysis that every part of polyvox shares: features, the vocoders' targets, the
reference-audio front-end and the teacher rendering all call :func:`log_mel`, so they see one
spectrum (magnitude mel, Slaney scale and norm, centred frames)."""

from __future__ import annotations

from functools import lru_cache

from polyvox.config import AudioSection

# log(max(mel, MEL_FLOOR)): the floor of HiFi-GAN/Tacotron recipes, about -11.5 in log units.
MEL_FLOOR = 1e-5

# What defines the log-mel of :func:`log_mel` (the pitch settings do not): two parts of a voice (an
# acoustic model and a vocoder) fit together only when all of these agree.
MEL_DEFINITION = ("sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "f_min", "f_max")


def mel_differences(ours, theirs) -> list[str]:
    """The settings of :data:`MEL_DEFINITION` on which two audio settings (AudioSection or mapping)
    differ, as ``"f_max 8000.0 vs 11025.0"``; a key ``theirs`` does not record is not compared."""
    def value(settings, key):
        return settings.get(key) if isinstance(settings, dict) else getattr(settings, key, None)

    return [f"{key} {value(ours, key)} vs {value(theirs, key)}" for key in MEL_DEFINITION
            if value(theirs, key) is not None and float(value(ours, key)) != float(value(theirs, key))]


@lru_cache(maxsize=2)
def mel_transform(cfg: AudioSection):
    import torchaudio

    return torchaudio.transforms.MelSpectrogram(
        sample_rate=cfg.sample_rate, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
        f_min=cfg.f_min, f_max=cfg.f_max, n_mels=cfg.n_mels, power=1.0, norm="slaney", mel_scale="slaney",
        center=True,
    )


def log_mel(wave, cfg: AudioSection):
    """(samples,) float tensor → (n_mels, frames) log-magnitude mel."""
    import torch

    return torch.log(torch.clamp(mel_transform(cfg)(wave), min=MEL_FLOOR))
