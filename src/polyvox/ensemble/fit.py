"""Fitting the ensemble's mel weights, and the validation score members and ensembles are compared on.

The loss (stated once, used for both): the mean absolute difference between a synthesised log-mel
and the real utterance's log-mel (natural log, the features' units) over the frame pairs of their
DTW alignment (Euclidean distance between mel frames). Synthesis and recording differ in timing,
so frames are compared where DTW pairs them, not by index.
"""

from __future__ import annotations

import numpy as np
import torch


def mel_dtw_path(reference: np.ndarray, synthesis: np.ndarray) -> np.ndarray:
    """(steps, 2) index pairs (reference frame, synthesis frame) of the cheapest monotonic alignment."""
    import librosa

    _, path = librosa.sequence.dtw(X=reference, Y=synthesis, metric="euclidean")
    return path[::-1]


def aligned_l1(synthesis: np.ndarray, reference: np.ndarray) -> float:
    """Mean |synthesis − reference| over the DTW frame pairs; both (n_mels, frames) log-mels."""
    path = mel_dtw_path(reference, synthesis)
    return float(np.abs(synthesis[:, path[:, 1]] - reference[:, path[:, 0]]).mean())


def fit_weights(member_mels: list[np.ndarray], references: list[np.ndarray], steps: int = 300,
                lr: float = 0.05) -> tuple[np.ndarray, list[float]]:
    """Weights on the simplex minimising the aligned L1 of ``Σ w_k mel_k`` to the references.

    ``member_mels[i]``: (members, n_mels, frames) — the members' mels of utterance i on shared
    durations; ``references[i]``: (n_mels, frames_i) the real mel. The DTW path of each utterance is
    taken once, from the equal-weight average, so the fit is a convex problem in the weights
    (parametrised by a softmax, solved with Adam). Returns the weights and the loss per step.
    """
    if not member_mels:
        raise ValueError("no utterances to fit the ensemble weights on")
    xs, ys = [], []
    for mels, reference in zip(member_mels, references, strict=True):
        path = mel_dtw_path(reference, mels.mean(axis=0))
        xs.append(mels[:, :, path[:, 1]])
        ys.append(reference[:, path[:, 0]])
    x = torch.tensor(np.concatenate(xs, axis=2), dtype=torch.float32)  # (members, n_mels, pairs)
    y = torch.tensor(np.concatenate(ys, axis=1), dtype=torch.float32)  # (n_mels, pairs)
    logits = torch.zeros(x.shape[0], requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    history = []
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            loss = (torch.einsum("k,kmp->mp", logits.softmax(dim=0), x) - y).abs().mean()
            loss.backward()
            optimiser.step()
            history.append(float(loss.detach()))
    return logits.detach().softmax(dim=0).numpy().astype(np.float64), history
