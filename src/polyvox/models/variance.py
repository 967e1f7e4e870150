"""Variance adaptor (FastSpeech 2): duration, pitch and energy predictors, and the length regulator."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class VariancePredictor(nn.Module):
    """hidden (batch, tokens, channels) → one value per token (batch, tokens)."""

    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm1 = nn.LayerNorm(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm2 = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(channels, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.norm1(torch.relu(self.conv1(hidden.transpose(1, 2)).transpose(1, 2))))
        x = self.dropout(self.norm2(torch.relu(self.conv2(x.transpose(1, 2)).transpose(1, 2))))
        return self.out(x).squeeze(-1) * mask


def frame_tokens(durations: torch.Tensor, frames: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The token each frame belongs to, (batch, tokens) durations → index and validity, (batch, frames).

    Frame f belongs to token i when cumsum[i-1] <= f < cumsum[i]; frames past a sequence's total are
    invalid (their index is clamped to the last token)."""
    ends = torch.cumsum(durations.long().clamp(min=0), dim=1)
    total = ends[:, -1] if durations.shape[1] else ends.new_zeros(durations.shape[0])
    frames = int(total.max()) if frames is None else frames
    positions = torch.arange(frames, device=durations.device)[None, :]
    index = (positions[..., None] >= ends[:, None, :]).sum(dim=2).clamp(max=max(durations.shape[1] - 1, 0))
    return index, positions < total[:, None]


def regulate_length(hidden: torch.Tensor, durations: torch.Tensor, frames: int | None = None,
                    tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Repeat each token's hidden vector for its duration: (batch, tokens, ch) → (batch, frames, ch).

    ``tokens``: :func:`frame_tokens` of the same durations, when the caller already has it."""
    index, valid = frame_tokens(durations, frames) if tokens is None else tokens
    expanded = torch.gather(hidden, 1, index[..., None].expand(-1, -1, hidden.shape[2]))
    return expanded * valid[..., None]


def token_spans(durations: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each frame of :func:`frame_tokens` ``index``: where its token starts and how many frames it
    has (at least one), under ``durations`` (batch, tokens); float (batch, frames) each."""
    durations = durations.long().clamp(min=0)
    length = torch.gather(durations, 1, index).float().clamp(min=1)
    return torch.gather(torch.cumsum(durations, dim=1), 1, index).float() - length, length


POSITION_FEATURES = 6
EDGE_FRAMES = 8.0  # frames over which the distance to a phone's edges saturates


def phone_positions(durations: torch.Tensor, frames: int | None = None,
                    tokens: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Where each frame lies inside its token, (batch, tokens) durations → (batch, frames, 6).

    Per frame: relative position in the token mapped to [-1, 1], its sine and cosine half-wave,
    frames since the token's start and until its end (saturating at ``EDGE_FRAMES``), and the token's
    log length. Explicit within-phone position (as in DNN parametric synthesis) spares the decoder
    learning it from the sinusoidal absolute positions, so transitions inside a phone come sooner.
    0 past each sequence's end. ``tokens`` as in :func:`regulate_length`.
    """
    index, valid = frame_tokens(durations, frames) if tokens is None else tokens
    start, length = token_spans(durations, index)
    since = torch.arange(index.shape[1], device=durations.device)[None, :].float() - start
    relative = (since + 0.5) / length
    features = torch.stack([2 * relative - 1, torch.sin(torch.pi * relative), torch.cos(torch.pi * relative),
                            since.clamp(max=EDGE_FRAMES) / EDGE_FRAMES,
                            (length - 1 - since).clamp(max=EDGE_FRAMES) / EDGE_FRAMES,
                            torch.log1p(length) / 4], dim=2)
    return features * valid[..., None]


def phone_positions_numpy(durations: np.ndarray) -> np.ndarray:
    """:func:`phone_positions` of one sequence in NumPy, (tokens,) durations → (1, frames, 6) float32:
    what an onnxruntime request computes between its two graphs without PyTorch."""
    durations = np.clip(np.asarray(durations, dtype=np.int64), 0, None)
    index = np.repeat(np.arange(durations.shape[0]), durations)
    length = np.maximum(durations[index], 1).astype(np.float64)
    since = np.arange(index.shape[0], dtype=np.float64) - (np.cumsum(durations)[index] - length)
    relative = (since + 0.5) / length
    features = np.stack([2 * relative - 1, np.sin(np.pi * relative), np.cos(np.pi * relative),
                         np.minimum(since, EDGE_FRAMES) / EDGE_FRAMES,
                         np.minimum(length - 1 - since, EDGE_FRAMES) / EDGE_FRAMES,
                         np.log1p(length) / 4], axis=1)
    return features[None].astype(np.float32)


def token_average(values: torch.Tensor, alignment: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Average a frame-level value (batch, frames) over each token's frames → (batch, tokens).

    ``weights`` (batch, frames) selects frames (e.g. voiced ones for pitch); a token with none gets 0.
    """
    weights = torch.ones_like(values) if weights is None else weights
    total = torch.einsum("btf,bf->bt", alignment, values * weights)
    count = torch.einsum("btf,bf->bt", alignment, weights)
    return torch.where(count > 0, total / count.clamp(min=1e-8), torch.zeros_like(total))


class VarianceAdaptor(nn.Module):
    def __init__(self, channels: int, kernel_size: int, dropout: float):
        super().__init__()
        self.duration = VariancePredictor(channels, kernel_size, dropout)
        self.pitch = VariancePredictor(channels, kernel_size, dropout)
        self.energy = VariancePredictor(channels, kernel_size, dropout)
        self.pitch_embedding = nn.Conv1d(1, channels, 3, padding=1)
        self.energy_embedding = nn.Conv1d(1, channels, 3, padding=1)

    def embed(self, hidden: torch.Tensor, pitch: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """Add token-level pitch and energy (batch, tokens) to the hidden sequence."""
        return (hidden + self.pitch_embedding(pitch[:, None]).transpose(1, 2)
                + self.energy_embedding(energy[:, None]).transpose(1, 2))
