"""Vocos: a neural vocoder, log-mel → waveform, by predicting the STFT and inverting it (the architecture; a trained
one loads through :func:`polyvox.models.meta.load_vocoder`).

A ConvNeXt backbone runs at the frame rate (no upsampling), and a head predicts each frame's
spectrum; ``torch.istft`` (centred, as the analysis was) turns it into audio, so frame ``t`` of the
input mel is rendered around sample ``t * hop_length``. Siuzdak, "Vocos: Closing the gap between
time-domain and Fourier-based neural vocoders" (2023). The input is the log-mel of
:func:`polyvox.signal.mel.log_mel`; trained by :mod:`polyvox.train.vocoder`.

Two heads (``VocoderConfig.source``):

- ``none``: Vocos's own; log-magnitude and phase per bin. The pitch is whatever the network infers
  from the mel, and a vocoder trained on other voices renders its teachers' (copy synthesis of an
  unseen voice: 130 cents of log-F0 error, benchmarks/README.md).
- ``harmonic``: source-filter (NSF's idea in Vocos's domain). The backbone also reads the F0 contour,
  and the head predicts per bin a gain for a harmonic excitation built from that contour, a phase
  offset for it, and a gain for a noise excitation (:mod:`polyvox.signal.excitation`): a
  harmonic-plus-noise model whose harmonics sit where the contour puts them. A small pitch tracker
  (:class:`PitchEstimator`, trained beside it on the corpus's tracked F0) gives the contour when the
  caller has none (a text→mel member's mel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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
    source: str = "none"  # "none" | "harmonic" (the module docstring)
    pitch_channels: int = 96  # the pitch tracker's width (source "harmonic")


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

    PARTS = 2  # values the linear layer predicts per bin

    def __init__(self, channels: int, n_fft: int, hop_length: int, win_length: int):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.linear = nn.Linear(channels, self.PARTS * (n_fft // 2 + 1))
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)

    def spectrum(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, channels) → real and imaginary parts, each (batch, n_fft // 2 + 1, frames), float32."""
        log_magnitude, phase = self.linear(x.float()).transpose(1, 2).chunk(2, dim=1)
        magnitude = torch.exp(log_magnitude).clamp(max=MAX_MAGNITUDE)
        # cos/sin of an unbounded angle, not a bounded one: the phase wraps freely.
        return magnitude * torch.cos(phase), magnitude * torch.sin(phase)

    def forward(self, x: torch.Tensor, excitation: "Source | None" = None) -> torch.Tensor:
        """(batch, frames, channels) → (batch, frames * hop_length)."""
        with torch.autocast(x.device.type, enabled=False):  # the iSTFT wants float32
            real, imaginary = self.spectrum(x) if excitation is None else self.spectrum(x, excitation)
            return self.istft(real, imaginary)

    def istft(self, real: torch.Tensor, imaginary: torch.Tensor) -> torch.Tensor:
        return torch.istft(torch.complex(real, imaginary), n_fft=self.n_fft, hop_length=self.hop_length,
                           win_length=self.win_length, window=self.window, center=True,
                           length=real.shape[-1] * self.hop_length)


@dataclass(frozen=True)
class Source:
    """:class:`polyvox.signal.excitation.Excitation` as tensors: ``pitch`` (batch, 2, frames), ``harmonic``
    and ``noise`` (batch, n_fft // 2 + 1, frames) complex64."""

    pitch: torch.Tensor
    harmonic: torch.Tensor
    noise: torch.Tensor

    @classmethod
    def of(cls, excitation, device: torch.device | str = "cpu") -> "Source":
        return cls(*(torch.from_numpy(getattr(excitation, name)).to(device) for name in ("pitch", "harmonic", "noise")))


class SourceFilterHead(ISTFTHead):
    """Per-frame features → per bin: log-gain of the harmonic excitation, its phase offset, and
    log-gain of the noise excitation; their sum is the spectrum the iSTFT renders."""

    PARTS = 3

    def spectrum(self, x: torch.Tensor, excitation: Source) -> tuple[torch.Tensor, torch.Tensor]:
        harmonic_gain, offset, noise_gain = self.linear(x.float()).transpose(1, 2).chunk(3, dim=1)
        harmonic = torch.exp(harmonic_gain).clamp(max=MAX_MAGNITUDE)
        noise = torch.exp(noise_gain).clamp(max=MAX_MAGNITUDE)
        h, n = excitation.harmonic, excitation.noise
        cos, sin = torch.cos(offset), torch.sin(offset)
        real = harmonic * (h.real * cos - h.imag * sin) + noise * n.real
        imaginary = harmonic * (h.real * sin + h.imag * cos) + noise * n.imag
        return real, imaginary


class PitchEstimator(nn.Module):
    """(batch, n_mels, frames) log-mel → per frame: octaves from the excitation's centre pitch and a
    voicing logit. Trained on the corpus's tracked F0 beside the vocoder; used when a caller has no contour."""

    def __init__(self, n_mels: int, channels: int, layers: int = 3):
        super().__init__()
        self.embed = nn.Conv1d(n_mels, channels, kernel_size=7, padding=3)
        self.blocks = nn.ModuleList(ConvNeXtBlock(channels, 3 * channels, 1.0 / layers) for _ in range(layers))
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.out = nn.Linear(channels, 2)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(mel)
        for block in self.blocks:
            x = block(x)
        octaves, voicing = self.out(self.norm(x.transpose(1, 2))).unbind(dim=2)
        return octaves, voicing

    @torch.no_grad()
    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, n_mels, frames) → (batch, frames) Hz, 0 where unvoiced."""
        from polyvox.signal.excitation import PITCH_CENTRE_HZ

        octaves, voicing = self(mel)
        return torch.where(voicing > 0, PITCH_CENTRE_HZ * torch.exp2(octaves), torch.zeros_like(octaves))


SOURCES = ("none", "harmonic")


class Vocos(nn.Module):
    """(batch, n_mels, frames) log-mel (and with ``source: harmonic``, its excitation) → (batch,
    frames * hop_length) waveform in [-1, 1]-ish."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        if cfg.source not in SOURCES:
            raise ValueError(f"vocoder source {cfg.source!r}: expected one of {SOURCES}")
        self.cfg = cfg
        self.harmonic = cfg.source == "harmonic"
        self.embed = nn.Conv1d(cfg.n_mels + (2 if self.harmonic else 0), cfg.channels, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(cfg.channels, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.channels, cfg.intermediate, layer_scale=1.0 / cfg.layers) for _ in range(cfg.layers))
        self.final_norm = nn.LayerNorm(cfg.channels, eps=1e-6)
        head = SourceFilterHead if self.harmonic else ISTFTHead
        self.head = head(cfg.channels, cfg.n_fft, cfg.hop_length, cfg.win_length)
        self.pitch = PitchEstimator(cfg.n_mels, cfg.pitch_channels) if self.harmonic else None
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def features(self, mel: torch.Tensor, pitch: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, n_mels, frames) (and (batch, 2, frames) pitch features with a harmonic source) → the
        backbone's (batch, frames, channels), which the head turns into a spectrum."""
        x = self.norm(self.embed(mel if pitch is None else torch.cat([mel, pitch.to(mel.dtype)], dim=1))
                      .transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x.transpose(1, 2))

    def forward(self, mel: torch.Tensor, excitation: Source | None = None) -> torch.Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"Vocos expects (batch, {self.cfg.n_mels}, frames) log-mel, got shape {tuple(mel.shape)}")
        if self.harmonic != (excitation is not None):
            raise ValueError(f"a vocoder with source {self.cfg.source!r} " + (
                "needs the excitation of an F0 contour" if self.harmonic else "takes no excitation"))
        if excitation is None:
            return self.head(self.features(mel))
        return self.head(self.features(mel, excitation.pitch), excitation)

    def excitation(self, f0: torch.Tensor | np.ndarray, seed: int = 0, rng: np.random.Generator | None = None,
                   phase: np.ndarray | None = None) -> Source:
        """The excitation of a (batch, frames) F0 contour in Hz (0 where unvoiced), on the model's device;
        its noise drawn by ``rng`` (default: one seeded with ``seed``), the pulse train starting at ``phase``."""
        from polyvox.signal.excitation import excitation

        cfg = self.cfg
        track = f0.detach().cpu().numpy() if isinstance(f0, torch.Tensor) else np.asarray(f0)
        return Source.of(excitation(track, cfg.sample_rate, cfg.hop_length, cfg.n_fft, cfg.win_length,
                                    np.random.default_rng(seed) if rng is None else rng, phase),
                         next(self.parameters()).device)

    @torch.no_grad()
    def synthesize(self, mel: torch.Tensor, f0: torch.Tensor | np.ndarray | None = None, seed: int = 0) -> torch.Tensor:
        """(n_mels, frames) or (batch, n_mels, frames) → (samples,) or (batch, samples), clipped to [-1, 1].
        With a harmonic source, ``f0`` ((frames,) or (batch, frames) Hz, 0 where unvoiced) is the contour
        to render; None: :class:`PitchEstimator`'s reading of the mel. ``seed`` draws the noise (a
        render is a pure function of its inputs)."""
        single = mel.ndim == 2
        mel = (mel[None] if single else mel).to(next(self.parameters()).device)
        if not self.harmonic:
            if f0 is not None:
                raise ValueError("this vocoder has no harmonic source: it renders the pitch of the mel, not a given F0")
            wave = self(mel)
        else:
            if f0 is None:
                f0 = self.pitch.f0(mel)
            track = torch.as_tensor(np.asarray(f0) if not isinstance(f0, torch.Tensor) else f0, dtype=torch.float32)
            track = track[None] if track.ndim == 1 else track
            if track.shape != (mel.shape[0], mel.shape[2]):
                raise ValueError(f"F0 of shape {tuple(track.shape)} for a mel of {mel.shape[2]} frames "
                                 f"(batch {mel.shape[0]}): one value per frame")
            wave = self(mel, self.excitation(track, seed))
        wave = wave.clamp(-1.0, 1.0)
        return wave[0] if single else wave
