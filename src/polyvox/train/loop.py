"""The training loop every trainer (text→mel and conversion members, vocoder) runs: the done.json
contract of a resumable run (:func:`run_once`), the loop itself (:func:`drive`: the timed start, the
steps, the re-plans, the time bound), its bookkeeping (:class:`Session`: exact resume, metrics log,
best/last checkpoints), one optimiser step and the train/validation split. A trainer owns only its
model, its batches and its losses; the step plan and the thread count are
:mod:`polyvox.train.budget`'s, the learning-rate schedules :mod:`polyvox.train.schedules`'."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from polyvox.fileio import atomic_path, atomic_write_text
from polyvox.config import StepBounds
from polyvox.fingerprint import read_stamp
from polyvox.progress import track
from polyvox.train.budget import StepPlan, ThreadGovernor
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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
                   best_key: str, amp: bool, companions: dict | None = None) -> dict:
    """Everything an exact resume needs: weights, optimiser, schedule, loss scaler, RNG states, step,
    and the state of each companion (anything with ``state_dict``: a GAN's discriminators and their
    optimiser, say) under its key."""
    return {"model": model.state_dict(), "optimizer": optimiser.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "step": step, best_key: best, "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if amp else None,
            **{key: value.state_dict() for key, value in (companions or {}).items()}}


def restore_training_state(path: Path, device: torch.device, model: torch.nn.Module, optimiser, scheduler, scaler,
                           best_key: str, amp: bool, companions: dict | None = None) -> tuple[int, float | None]:
    """Load :func:`training_state` from ``path`` (``weights_only``) into the objects; returns (step, best)."""
    state = torch.load(path, map_location=device, weights_only=True)
    model.load_state_dict(state["model"])
    optimiser.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    for key, value in (companions or {}).items():
        if key not in state:
            raise ValueError(f"{path}: no {key!r} state to resume from (the run was trained without it)")
        value.load_state_dict(state[key])
    torch.set_rng_state(state["rng_cpu"])
    if amp and state.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(state["rng_cuda"])
    return int(state["step"]), state[best_key]


def held_out(workspace: Workspace, load: Callable[[str], T]) -> tuple[T, T]:
    """(training data, validation data) of a run: ``load("train")``, ``load("val")``. A corpus too
    small to hold out prompts (features.splits.val) validates on its training data, and says so."""
    train = load("train")
    if (pd.read_parquet(workspace.features_index, columns=["split"])["split"] == "val").any():
        return train, load("val")
    log.warning("%s: no validation utterances; best.pt is chosen on the training data", workspace.features_index)
    return train, train


def finished(out: Path, identity: str, bounds: str, files: tuple[str, ...]) -> dict | None:
    """``out/done.json`` of a run that finished on exactly these inputs and bounds, with ``files`` in place."""
    done = read_stamp(out / "done.json")
    if done is None or not all((out / f).is_file() for f in files):
        return None
    return done if (done.get("identity"), done.get("bounds")) == (identity, bounds) else None


def run_once(out: Path, identity: str, bounds: str, files: tuple[str, ...], resume: bool, label: str,
             fit: Callable[[bool], R], result: Callable[..., R], stamp: bool = True) -> R:
    """The contract of a resumable run into ``out``: ``done.json`` records the inputs (``identity``)
    and the bounds of a run that finished. Called again on the same inputs it returns that run's
    result and trains nothing; with only the bounds changed it resumes and trains on; on other
    inputs (data, settings, code) it trains afresh. A run that did not finish resumes from last.pt.
    ``fit(resume)`` trains; ``stamp`` is False on the ranks of a distributed run that write nothing."""
    done = read_stamp(out / "done.json")
    if done is not None and resume:
        if finished(out, identity, bounds, files) is not None:
            log.info("%s: already trained on these inputs; nothing to do", label)
            return result(**done["result"])
        if done.get("identity") != identity:
            log.info("%s: the data, settings or code changed since the run in %s; training afresh", label, out)
            resume = False
    trained = fit(resume)
    if stamp:
        atomic_write_text(out / "done.json", json.dumps({"identity": identity, "bounds": bounds,
                                                         "result": dataclasses.asdict(trained)}, indent=1))
    return trained


# Decimal places of the losses in metrics.csv: enough for curves and for picking a step by eye; the
# exact best value lives in best.pt and done.json. A float read back from the file is only this
# precise, so compare it with one the run computed at 10**-METRICS_DECIMALS, never at 1e-6.
METRICS_DECIMALS = 5


class Session:
    """The bookkeeping of one run of a training loop into ``out``: the exact resume from last.pt,
    the metrics log (metrics.csv), the best and last checkpoints and the time bound. The caller
    owns the steps; only rank 0 (``write``) writes files."""

    def __init__(self, out: Path, model: torch.nn.Module, optimiser, scheduler, scaler, *, device: torch.device,
                 amp: bool, best_key: str, losses: tuple[str, ...], val_name: str, bounds: StepBounds, resume: bool,
                 write: bool = True, extra: Callable[[], dict] = dict, companions: dict | None = None,
                 label: str = "run"):
        self.out, self.write, self.extra = out, write, extra
        self._objects = (model, optimiser, scheduler, scaler)
        self.companions = companions or {}
        self.best_key, self.amp, self.losses = best_key, amp, losses
        self.bounds = bounds  # the time bound and when to validate and checkpoint (StepPlan reads the plan's)
        out.mkdir(parents=True, exist_ok=True)
        self.start, self.best = 0, None
        if resume and (out / "last.pt").is_file():
            self.start, self.best = restore_training_state(out / "last.pt", device, *self._objects, best_key, amp,
                                                           self.companions)
            if self.start:
                log.info("resuming %s from step %d", label, self.start)
        self.metrics_path = out / "metrics.csv"
        kept: list[list[str]] = []
        if self.start > 0 and self.metrics_path.is_file():  # a killed run may have logged steps past last.pt's
            with open(self.metrics_path, newline="") as handle:
                kept = [row for row in list(csv.reader(handle))[1:] if row and int(row[0]) <= self.start]
        self._metrics = open(self.metrics_path, "w", newline="") if write else None
        self._writer = csv.writer(self._metrics) if self._metrics else None
        if self._writer:
            self._writer.writerows([["step", *losses, val_name, "lr", "seconds"], *kept])
        self.began = time.monotonic()
        self.governor = ThreadGovernor()
        self._stepped = self.began  # when the last recorded step ended

    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def out_of_time(self) -> bool:
        return self.elapsed() > self.bounds.max_minutes * 60

    def validation_due(self, step: int, last: bool) -> bool:
        return step % self.bounds.validate_every == 0 or last

    def state(self, step: int) -> dict:
        return {**training_state(*self._objects, step, self.best, self.best_key, self.amp, self.companions),
                **self.extra()}

    def keep_if_best(self, val: float, step: int) -> None:
        if self.best is None or val < self.best:
            self.best = val
            if self.write:
                save_checkpoint(self.out / "best.pt", self.state(step))

    def record(self, step: int, losses: dict[str, torch.Tensor], val: float | None, last: bool) -> None:
        """Log step ``step`` (done), then checkpoint it when due. The row goes out before the
        checkpoint: a kill between the two leaves a row past last.pt's step, which the resume
        drops and redoes; the other order would lose the row."""
        now = time.monotonic()
        if val is None:  # a step with a validation pass says nothing about the threads' pace
            self.governor.observe(now - self._stepped)
        if self._writer:
            self._writer.writerow([step, *(f"{float(losses[n].detach()):.{METRICS_DECIMALS}f}" for n in self.losses),
                                   "" if val is None else f"{val:.{METRICS_DECIMALS}f}",
                                   f"{self._objects[2].get_last_lr()[0]:.6g}",
                                   f"{self.elapsed():.2f}"])
            self._metrics.flush()  # readable while training runs (DVC plots, tail -f)
        if self.write and (step % self.bounds.checkpoint_every == 0 or last):
            save_checkpoint(self.out / "last.pt", self.state(step))
        self._stepped = time.monotonic()  # the next step's seconds leave this bookkeeping out

    def finish(self, step: int, stopped_by: str) -> None:
        """A run the clock stopped keeps its last step in last.pt (a run of all its steps saved it already)."""
        if self.write and stopped_by == "time":
            save_checkpoint(self.out / "last.pt", self.state(step))

    def close(self) -> None:
        self.governor.restore()
        if self._metrics:
            self._metrics.close()


def drive(plan: StepPlan, session: Session, run_step: Callable[[int, bool], int], label: str) -> tuple[int, str]:
    """Run a training loop to its end: the timed start of an auto plan (:meth:`StepPlan.calibrate`),
    then ``run_step(step, validate)`` (which returns the step it reached) up to the plan, re-planning
    at its validations, until the plan or ``max_minutes`` ends it; the last state saved, the session
    closed. Returns (the step reached, what stopped it: ``"steps"`` or ``"time"``)."""
    try:
        step, timed_out = plan.calibrate(session.start, run_step, session)
        stopped_by, first = ("time" if timed_out else "steps"), step
        for step in track(plan.remaining(step) if not timed_out else iter(()), max(0, (plan.steps or step) - step),
                          label, log, total_now=lambda: plan.steps - first):
            if session.out_of_time():
                stopped_by = "time"
                break
            step = run_step(step, validate=False)
            plan.replan(step, session.elapsed())
        session.finish(step, stopped_by)
    finally:
        session.close()
    return step, stopped_by
