"""Non-autoregressive mel decoder with a convolutional post-net (Tacotron 2 style residual).

The post-net normalises with GroupNorm rather than Tacotron's BatchNorm: padded frames and small
per-rank batches would otherwise skew running statistics, and ranks would hold different ones.
"""

from __future__ import annotations

import torch
from torch import nn

from polyvox.models.layers import FFTStack


class MelDecoder(nn.Module):
    """frames (batch, frames, channels) → mel before and after the post-net, (batch, n_mels, frames)."""

    def __init__(self, channels: int, layers: int, heads: int, kernel_size: int, dropout: float, n_mels: int,
                 postnet_layers: int):
        super().__init__()
        self.stack = FFTStack(channels, layers, heads, kernel_size, dropout)
        self.to_mel = nn.Linear(channels, n_mels)
        postnet: list[nn.Module] = []
        widths = [n_mels] + [channels] * (postnet_layers - 1) + [n_mels]
        for index, (a, b) in enumerate(zip(widths, widths[1:])):
            postnet += [nn.Conv1d(a, b, 5, padding=2), nn.GroupNorm(1, b)]
            if index < postnet_layers - 1:
                postnet += [nn.Tanh(), nn.Dropout(dropout)]
        self.postnet = nn.Sequential(*postnet)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel = self.to_mel(self.stack(frames, mask)).transpose(1, 2) * mask[:, None]
        return mel, (mel + self.postnet(mel)) * mask[:, None]
