"""What one kind of member brings to the shared training run (:func:`polyvox.train.trainer.fit`): its
model, data, batch size and peak rate, loss names, ``model.json``, validation and speaker embeddings.
The loop itself — optimiser, schedule, plan, checkpoints, MLflow — is the same for every kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


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
    to_device: Callable[[Any, torch.device], Any]
    validation_loss: Callable[[torch.nn.Module, torch.device], float]
    speaker_embeddings: Callable[[torch.nn.Module, torch.device], dict[str, torch.Tensor]]
