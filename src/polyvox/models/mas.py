"""Monotonic alignment search (Glow-TTS, Kim et al. 2020): the best monotonic, surjective path
of text tokens over mel frames, by dynamic programming, compiled with numba.

``log_likelihood[i, j]`` scores frame ``j`` under token ``i``; the path starts at (0, 0), ends at
(tokens-1, frames-1), and at each frame stays on its token or moves to the next one. Every token
gets at least one frame, so it needs ``frames >= tokens``.
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np
import torch

NEG_INF = -1e9


@numba.njit(cache=True)
def _path(value: np.ndarray, tokens: int, frames: int) -> np.ndarray:
    """value: (tokens, frames) log-likelihoods → (tokens, frames) 0/1 path."""
    score = np.full((tokens, frames), NEG_INF, dtype=np.float64)
    score[0, 0] = value[0, 0]
    for j in range(1, frames):
        # Token i can be reached at frame j only if i <= j and tokens-1-i <= frames-1-j.
        low = max(0, tokens - frames + j)
        high = min(tokens - 1, j)
        for i in range(low, high + 1):
            stay = score[i, j - 1]
            move = score[i - 1, j - 1] if i > 0 else NEG_INF
            score[i, j] = (stay if stay >= move else move) + value[i, j]
    path = np.zeros((tokens, frames), dtype=np.int8)
    i = tokens - 1
    for j in range(frames - 1, -1, -1):
        path[i, j] = 1
        if j > 0 and i > 0 and (i == j or score[i - 1, j - 1] > score[i, j - 1]):
            i -= 1
    return path


@numba.njit(cache=True)
def _batch(values: np.ndarray, tokens: np.ndarray, frames: np.ndarray) -> np.ndarray:
    # Sequential on purpose: a batch takes ~4 ms on one thread against ~700 ms for the training step
    # around it, and numba's parallel loops start a second OpenMP runtime (the system libgomp, beside
    # torch's own) whose threads spin against torch's: under torchrun on CPU, two ranks ran at 5.0 s/step,
    # 0.90 with this loop (benchmarks/README.md, "A bug this found").
    out = np.zeros(values.shape, dtype=np.int8)
    for b in range(values.shape[0]):
        out[b, : tokens[b], : frames[b]] = _path(values[b, : tokens[b], : frames[b]], tokens[b], frames[b])
    return out


def beta_binomial_log_prior(token_lengths: torch.Tensor, frame_lengths: torch.Tensor, tokens: int, frames: int,
                            scaling: float = 1.0) -> torch.Tensor:
    """(batch, tokens, frames) log-probabilities of a near-diagonal alignment (Badlani et al. 2021,
    "One TTS Alignment to Rule Them All"): frame ``j`` of ``M`` puts token ``k`` of ``P`` under a
    BetaBinomial(P - 1, scaling·j, scaling·(M + 1 - j)). Added to the likelihoods before the search, it
    keeps early alignments sane while the text encoder still knows little, which is what makes
    alignment (and so the decoder) converge in far fewer steps; later the likelihoods dominate it.
    0 on padding."""
    out = torch.zeros(len(token_lengths), tokens, frames)
    for b, (p, m) in enumerate(zip(token_lengths.tolist(), frame_lengths.tolist())):
        out[b, :p, :m] = _beta_binomial(p, m, scaling)
    return out


@lru_cache(maxsize=4096)  # batches repeat (tokens, frames) pairs every epoch: computed once each
def _beta_binomial(p: int, m: int, scaling: float) -> torch.Tensor:
    """(p, m) log-pmf table of :func:`beta_binomial_log_prior` for one utterance."""
    k = torch.arange(p, dtype=torch.float64)[:, None]  # (p, 1)
    j = torch.arange(1, m + 1, dtype=torch.float64)[None, :]  # (1, m)
    a, c, n = scaling * j, scaling * (m + 1 - j), float(p - 1)

    def log_beta(x, y):
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)

    log_choose = torch.lgamma(torch.tensor(n + 1)) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    return (log_choose + log_beta(k + a, n - k + c) - log_beta(a, c)).float()


def monotonic_alignment(log_likelihood: torch.Tensor, token_lengths: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """(batch, tokens, frames) scores → (batch, tokens, frames) hard alignment (float 0/1).

    No gradient flows through the search; it only picks durations.
    """
    if bool((frame_lengths < token_lengths).any()):
        raise ValueError(f"monotonic alignment needs frames >= tokens; got {frame_lengths.tolist()} frames "
                         f"for {token_lengths.tolist()} tokens")
    values = log_likelihood.detach().to("cpu", torch.float64).numpy()
    path = _batch(values, token_lengths.cpu().numpy().astype(np.int64), frame_lengths.cpu().numpy().astype(np.int64))
    return torch.from_numpy(path).to(log_likelihood.device, log_likelihood.dtype)
