"""Building blocks shared by the encoders and the decoder."""

from __future__ import annotations

import math

import torch
from torch import nn


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(batch,) lengths → (batch, max_length) bool, True on real positions."""
    max_length = int(lengths.max()) if max_length is None else max_length
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def sinusoids(length: int, channels: int, device: torch.device) -> torch.Tensor:
    """(length, channels) sinusoidal positions (Vaswani et al. 2017)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rates = torch.exp(torch.arange(0, channels, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / channels))
    table = torch.zeros(length, channels, device=device)
    table[:, 0::2] = torch.sin(position * rates)
    table[:, 1::2] = torch.cos(position * rates[: channels // 2])
    return table


class FFTBlock(nn.Module):
    """Self-attention + 1-D convolution feed-forward (FastSpeech's feed-forward Transformer block).

    x: (batch, time, channels); mask: (batch, time), True on real positions.
    """

    def __init__(self, channels: int, heads: int, kernel_size: int, dropout: float):
        super().__init__()
        # No dropout on the attention weights: it would keep PyTorch off its fused attention kernel and
        # cost ~15 % of a CPU step drawing a (batch·heads, time, time) mask; residual dropout remains.
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(channels)
        self.conv = nn.Sequential(
            nn.Conv1d(channels, channels * 2, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Conv1d(channels * 2, channels, kernel_size, padding=kernel_size // 2),
        )
        self.norm2 = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        attended, _ = self.attention(x, x, x, key_padding_mask=~mask, need_weights=False)
        x = self.norm1(x + self.dropout(attended)) * mask[..., None]
        convolved = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.norm2(x + self.dropout(convolved)) * mask[..., None]


class FFTStack(nn.Module):
    def __init__(self, channels: int, layers: int, heads: int, kernel_size: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(FFTBlock(channels, heads, kernel_size, dropout) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + sinusoids(x.shape[1], x.shape[2], x.device)[None]
        for block in self.blocks:
            x = block(x, mask)
        return x
