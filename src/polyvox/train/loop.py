"""Pieces both trainers (acoustic model, vocoder) share: one optimiser step and atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from polyvox.fileio import atomic_path


def optimise(loss: torch.Tensor, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler, grad_clip: float) -> None:
    """Backward (loss-scaled under mixed precision), clip the gradient norm, step, advance the schedule."""
    optimiser.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimiser)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimiser)
    scaler.update()
    scheduler.step()


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temporary file and rename: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
