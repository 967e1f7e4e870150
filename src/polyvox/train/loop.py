"""Pieces both trainers (acoustic model, vocoder) share: one optimiser step, the resumable training
state, and atomic checkpoints."""

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


def training_state(model: torch.nn.Module, optimiser, scheduler, scaler, step: int, best: float | None,
                   best_key: str, amp: bool) -> dict:
    """Everything an exact resume needs: weights, optimiser, schedule, loss scaler, RNG states, step."""
    return {"model": model.state_dict(), "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, best_key: best, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if amp else None}


def restore_training_state(path: Path, device: torch.device, model: torch.nn.Module, optimiser, scheduler, scaler,
                           best_key: str, amp: bool) -> tuple[int, float | None]:
    """Load :func:`training_state` from ``path`` (``weights_only``) into the objects; returns (step, best)."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng_cpu"])
    if amp and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"])
    return int(state["step"]), state[best_key]
