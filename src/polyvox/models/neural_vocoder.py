"""Vocos: a neural vocoder, log-mel → waveform, by predicting the STFT and inverting it.

A ConvNeXt backbone runs at the frame rate (no upsampling), and a head predicts each frame's
log-magnitude and phase; ``torch.istft`` (centred, as the analysis was) turns them into audio, so
frame ``t`` of the input mel is rendered around sample ``t * hop_length``. Siuzdak, "Vocos: Closing
the gap between time-domain and Fourier-based neural vocoders" (2023). The input is the log-mel of
:func:`polyvox.signal.mel.log_mel`; trained by :mod:`polyvox.train.vocoder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from polyvox.fileio import chosen_checkpoint
from torch import nn

# Vocos clips the predicted magnitude at 1e2 so an early, wild exp() cannot blow up the iSTFT.
MAX_MAGNITUDE = 1e2


@dataclass(frozen=True)
class VocoderConfig:
    n_mels: int
    n_fft: int
    hop_length: int
    win_length: int
    channels: int
    layers: int
    intermediate: int
    sample_rate: int


class ConvNeXtBlock(nn.Module):
    """Depthwise conv (k=7) → LayerNorm → pointwise MLP, scaled by a learnt per-channel gain, residual."""

    def __init__(self, channels: int, intermediate: int, layer_scale: float):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.expand = nn.Linear(channels, intermediate)
        self.act = nn.GELU()
        self.project = nn.Linear(intermediate, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, channels, frames) → same."""
        h = self.depthwise(x).transpose(1, 2)
        h = self.project(self.act(self.expand(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ISTFTHead(nn.Module):
    """Per-frame features → (log-magnitude, phase) of ``n_fft // 2 + 1`` bins → waveform."""

    def __init__(self, channels: int, n_fft: int, hop_length: int, win_length: int):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.linear = nn.Linear(channels, n_fft + 2)
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, channels) → real and imaginary parts, each (batch, n_fft // 2 + 1, frames), float32."""
        log_magnitude, phase = self.linear(x.float()).transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(log_magnitude).clamp(max=MAX_MAGNITUDE)
        # cos/sin of an unbounded angle, not a bounded one: the phase wraps freely.
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, channels) → (batch, frames * hop_length)."""
        frames = x.shape[1]
        with torch.autocast(x.device.type, enabled=False):  # the iSTFT wants float32
            real, imaginary = self.spectrum(x)
            return torch.istft(torch.complex(real, imaginary), n_fft=self.n_fft, hop_length=self.hop_length,
                               win_length=self.win_length, window=self.window, center=True,
                               length=frames * self.hop_length)


class Vocos(nn.Module):
    """(batch, n_mels, frames) log-mel → (batch, frames * hop_length) waveform in [-1, 1]-ish."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Conv1d(cfg.n_mels, cfg.channels, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(cfg.channels, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.channels, cfg.intermediate, layer_scale=1.0 / cfg.layers) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.channels, eps=1e-6)
        self.head = ISTFTHead(cfg.channels, cfg.n_fft, cfg.hop_length, cfg.win_length)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def features(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) → the backbone's (batch, frames, channels), which the head turns into a spectrum."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"Vocos expects (batch, {self.cfg.n_mels}, frames) log-mel, got shape {tuple(mel.shape)}")
        return self.head(self.features(mel))

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """(n_mels, frames) or (batch, n_mels, frames) → (samples,) or (batch, samples), clipped to [-1, 1]."""
        single = mel.ndim == 2
        wave = self((mel[None] if single else mel).to(next(self.parameters()).device)).clamp(-1.0, 1.0)
        return wave[0] if single else wave


def vocoder_checkpoint(folder: str | Path) -> tuple[VocoderConfig, Path]:
    """(config, checkpoint) of a trained vocoder's folder: ``vocoder.json`` and ``best.pt``, else ``last.pt``."""
    from polyvox.models.meta import VocoderMeta

    folder = Path(folder)
    checkpoint = chosen_checkpoint(folder)
    if not (folder / VocoderMeta.FILE).is_file() or checkpoint is None:
        raise FileNotFoundError(f"{folder}: a vocoder folder holds {VocoderMeta.FILE} and best.pt or last.pt")
    return VocoderMeta.read(folder).model, checkpoint


def vocoder_audio(folder: str | Path) -> dict:
    """The audio settings a vocoder was trained on (:meth:`polyvox.models.meta.VocoderMeta.mel`)."""
    from polyvox.models.meta import VocoderMeta

    return VocoderMeta.read(Path(folder)).mel()


def load_vocoder(folder: str | Path, device: str | torch.device = "cpu") -> Vocos:
    """A trained vocoder from its folder (:func:`vocoder_checkpoint`), in eval mode."""
    cfg, checkpoint = vocoder_checkpoint(folder)
    model = Vocos(cfg)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.to(device).eval()
