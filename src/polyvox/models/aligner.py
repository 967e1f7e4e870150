"""Monotonic alignment of frames to tokens (Glow-TTS's search, with RAD-TTS's beta-binomial prior):
the one alignment block the acoustic model runs for its target and for a teacher's rendering."""

from __future__ import annotations

import torch

from polyvox.models.layers import sequence_mask
from polyvox.models.mas import beta_binomial_log_prior, monotonic_alignment


def align(mu: torch.Tensor, frames: torch.Tensor, token_lengths: torch.Tensor, frame_lengths: torch.Tensor,
          prior: float) -> torch.Tensor:
    """The hard monotonic alignment (batch, tokens, frames) of ``frames`` (batch, n_mels, frames) under
    each token's mean ``mu`` (batch, tokens, n_mels): the Gaussian log-likelihood of every frame
    under every token, plus ``prior`` × the beta-binomial log-prior (0: none), best monotonic path."""
    token_mask = sequence_mask(token_lengths, mu.shape[1])
    frame_mask = sequence_mask(frame_lengths, frames.shape[2])
    log_likelihood = -0.5 * torch.cdist(mu, frames.transpose(1, 2)) ** 2
    if prior > 0:
        log_likelihood = log_likelihood + prior * beta_binomial_log_prior(
            token_lengths, frame_lengths, mu.shape[1], frames.shape[2]).to(log_likelihood.device)
    log_likelihood = log_likelihood.masked_fill(~(token_mask[:, :, None] & frame_mask[:, None, :]), -1e9)
    return monotonic_alignment(log_likelihood, token_lengths, frame_lengths)
