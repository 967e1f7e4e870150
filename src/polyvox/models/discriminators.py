"""The vocoder's discriminators and GAN losses: what turns a spectrally-trained vocoder's buzzy,
over-smoothed fine structure into natural-sounding audio.

- :class:`PeriodDiscriminator` (HiFi-GAN's multi-period discriminator, Kong et al. 2020): the
  waveform folded into rows of ``period`` samples, 2-D convolutions along the time axis only, so
  each sub-discriminator judges one periodic structure (the harmonics a voice's pitch makes).
- :class:`ResolutionDiscriminator` (UnivNet's multi-resolution discriminator, Jang et al. 2021, as
  Vocos uses it): 2-D convolutions over one STFT magnitude, so each judges the spectro-temporal
  texture at one time/frequency trade-off.
- :class:`Discriminators`: any set of both, run on one batch of real and generated audio at once.

The losses are Vocos's: hinge adversarial losses, and feature matching (L1 between the
discriminators' hidden activations on real and generated audio). Each is the mean over the
sub-discriminators, so the weights in ``params.yaml`` do not change meaning with the number of
periods or resolutions. Discriminators only train; nothing at inference loads them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

LEAK = 0.1  # HiFi-GAN's and UnivNet's LeakyReLU slope
# (n_fft, hop) of the resolution discriminators, window = n_fft: UnivNet's three resolutions.
DISCRIMINATOR_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))

Judgement = tuple[torch.Tensor, list[torch.Tensor]]  # (logits (batch, n), hidden activations)


class PeriodDiscriminator(nn.Module):
    """(batch, samples) → logits, features; the signal seen as (samples / period, period) images."""

    def __init__(self, period: int, channels: int):
        super().__init__()
        self.period = period
        widths = [1, channels, 2 * channels, 4 * channels, 4 * channels]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(widths[i], widths[i + 1], (5, 1), stride=(3, 1) if i < 3 else (1, 1), padding=(2, 0)))
            for i in range(4))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, wave: torch.Tensor) -> Judgement:
        batch, samples = wave.shape
        pad = (-samples) % self.period
        x = F.pad(wave[:, None], (0, pad), mode="reflect" if pad < samples else "constant")
        x = x.view(batch, 1, -1, self.period)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAK)
            features.append(x)
        x = self.post(x)
        features.append(x)
        return x.flatten(1), features


class ResolutionDiscriminator(nn.Module):
    """(batch, samples) → logits, features; 2-D convolutions over a (frames, bins) STFT magnitude,
    downsampling the frequency axis."""

    def __init__(self, n_fft: int, hop: int, channels: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(1, channels, (3, 9), padding=(1, 4))),
            *(weight_norm(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), padding=(1, 4))) for _ in range(3)),
            weight_norm(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, wave: torch.Tensor) -> Judgement:
        spectrum = torch.stft(wave.float(), self.n_fft, self.hop, window=self.window, center=True, return_complex=True)
        x = torch.sqrt(torch.clamp(spectrum.real**2 + spectrum.imag**2, min=1e-7)).transpose(1, 2)[:, None]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LEAK)
            features.append(x)
        x = self.post(x)
        features.append(x)
        return x.flatten(1), features


class Discriminators(nn.Module):
    """The sub-discriminators named by ``kinds`` (``"period"``: one per entry of ``periods``;
    ``"resolution"``: one per :data:`DISCRIMINATOR_RESOLUTIONS`), of hidden width ``channels``."""

    def __init__(self, kinds: list[str], periods: list[int], channels: int):
        super().__init__()
        unknown = set(kinds) - {"period", "resolution"}
        if unknown or not kinds:
            raise ValueError(f"discriminators: expected a non-empty subset of ['period', 'resolution'], got {kinds}")
        subs: list[nn.Module] = []
        if "period" in kinds:
            subs += [PeriodDiscriminator(p, channels) for p in periods]
        if "resolution" in kinds:
            subs += [ResolutionDiscriminator(n_fft, hop, channels) for n_fft, hop in DISCRIMINATOR_RESOLUTIONS]
        if not subs:
            raise ValueError("discriminators: 'period' needs at least one entry in periods")
        self.subs = nn.ModuleList(subs)

    def forward(self, wave: torch.Tensor) -> list[Judgement]:
        """(batch, samples) → one (logits, features) per sub-discriminator."""
        return [sub(wave) for sub in self.subs]


def discriminator_loss(real: list[Judgement], fake: list[Judgement]) -> torch.Tensor:
    """Hinge: real logits pushed above +1, generated ones below −1; mean over sub-discriminators."""
    return torch.stack([torch.mean(F.relu(1 - r)) + torch.mean(F.relu(1 + f))
                        for (r, _), (f, _) in zip(real, fake)]).mean()


def generator_loss(fake: list[Judgement]) -> torch.Tensor:
    """Hinge: the generated audio's logits pulled above +1; mean over sub-discriminators."""
    return torch.stack([torch.mean(F.relu(1 - f)) for f, _ in fake]).mean()


def feature_matching_loss(real: list[Judgement], fake: list[Judgement]) -> torch.Tensor:
    """Σ over layers of the L1 between hidden activations on real and generated audio, mean over
    sub-discriminators (the real activations are targets: no gradient flows into them)."""
    return torch.stack([sum(torch.mean(torch.abs(r.detach() - f)) for r, f in zip(real_features, fake_features))
                        for (_, real_features), (_, fake_features) in zip(real, fake)]).mean()
