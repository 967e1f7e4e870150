"""What one kind of member brings to the shared training run (:func:`polyvox.train.trainer.fit`): its
model, data, batch size and peak rate, loss names, ``model.json``, validation and speaker embeddings.
The loop itself — optimiser, schedule, plan, checkpoints, MLflow — is the same for every kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from polyvox.train.data import batch_to


@dataclass
class MemberRecipe:
    model: torch.nn.Module  # built, warm-started, still on the CPU
    train_corpus: Any  # has batch_indices(step, batch_size, seed)
    batch_size: int
    lr: float
    loss_names: tuple[str, ...]  # the keys of the model's loss dict, "total" first
    meta: Any  # model.json (has write(folder))
    warm: dict | None  # what the warm start copied; None without one
    batch: Callable[[list[int], int], Any]  # (indices, step) → the model's batch
    validation_loss: Callable[[torch.nn.Module, torch.device], float]
    speaker_embeddings: Callable[[torch.nn.Module, torch.device], dict[str, torch.Tensor]]


@torch.no_grad()
def validation_loss(model: torch.nn.Module, corpus, batch_size: int, device: torch.device, seed: int) -> float:
    """The mean total loss over ``corpus`` (whole utterances, the model in eval mode), for any member kind."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(corpus), batch_size):
        indices = list(range(start, min(start + batch_size, len(corpus))))
        losses = model(batch_to(corpus.collate(indices, seed, -1 - start), device))
        total += float(losses["total"]) * len(indices)
        count += len(indices)
    model.train()
    return total / max(count, 1)


@torch.no_grad()
def speaker_embeddings(model: torch.nn.Module, corpus, batch_size: int, device: torch.device, seed: int,
                       speakers: list[str]) -> dict[str, torch.Tensor]:
    """Each speaker's mean reference-audio embedding over its training takes, for synthesis by name."""
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for start in range(0, len(corpus), batch_size):
        indices = list(range(start, min(start + batch_size, len(corpus))))
        batch = batch_to(corpus.collate(indices, seed, -1 - start), device)
        embeddings = model.reference(model.normalise(batch.mel), batch.mel_lengths)
        for speaker, embedding in zip(batch.speaker.tolist(), embeddings):
            sums[speaker] = sums.get(speaker, 0) + embedding.cpu()
            counts[speaker] = counts.get(speaker, 0) + 1
    model.train()
    return {speakers[s]: sums[s] / counts[s] for s in sorted(sums) if s >= 0}
