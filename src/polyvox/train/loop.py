"""The training loop both trainers (acoustic model, vocoder) run: the done.json contract of a
resumable run (:func:`run_once`), its bookkeeping (:class:`Session`: exact resume, metrics log,
best/last checkpoints, time bound), one optimiser step, the learning-rate schedules and the
train/validation split. A trainer owns only its model, its batches and its losses."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from polyvox.fileio import atomic_path, atomic_write_text
from polyvox.fingerprint import read_stamp
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


# The schedules: the rate rises linearly over the warm-up, then decays along a cosine to LR_FLOOR of
# its peak (not zero: the last steps still learn), or as the inverse square root of the step.
LR_FLOOR = 0.05


def cosine(max_steps: int) -> Callable[[int], float]:
    """No warm-up: a cosine from the peak at step 0 down to ``LR_FLOOR`` of it at ``max_steps`` (the vocoder's)."""
    return lambda step: LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(step, max_steps) / max_steps))


def warmup_cosine(warmup: int, max_steps: int) -> Callable[[int], float]:
    """Linear warm-up, then a cosine from the peak down to ``LR_FLOOR`` of it at ``max_steps``."""
    warmup = max(1, min(warmup, max_steps - 1))

    def factor(step: int) -> float:
        if step + 1 < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step + 1 - warmup) / max(1, max_steps - warmup))
        return LR_FLOOR + (1 - LR_FLOOR) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def warmup_inverse_sqrt(warmup: int):
    warmup = max(1, warmup)
    return lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


def lr_factor(cfg, total_steps: Callable[[], int | None] | None = None) -> Callable[[int], float]:
    """The multiplier of ``train.lr`` at each step, for ``train.lr_schedule``. ``total_steps`` gives
    the planned step count once it is known (``max_steps: auto``); until then (the timed start,
    inside the warm-up) the cosine schedule is its linear warm-up."""
    if cfg.lr_schedule == "inverse_sqrt":
        return warmup_inverse_sqrt(cfg.warmup_steps)
    if isinstance(cfg.max_steps, int):
        return warmup_cosine(cfg.warmup_steps, cfg.max_steps)

    def factor(step: int) -> float:
        total = total_steps() if total_steps is not None else None
        if total is None:
            return min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        return warmup_cosine(cfg.warmup_steps, total)(step)
    return factor


def planned_cosine(max_steps: int | str, total_steps: Callable[[], int | None]) -> Callable[[int], float]:
    """:func:`cosine` over ``max_steps``, or with ``max_steps: auto`` over the plan (``total_steps()``),
    at the peak until there is one (the timed start)."""
    if isinstance(max_steps, int):
        return cosine(max_steps)

    def factor(step: int) -> float:
        total = total_steps()
        return 1.0 if total is None else cosine(total)(step)
    return factor


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


def cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds every process on this machine has used, CPU seconds this process has used), or
    None where the kernel does not say (no /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if fields[:1] != ["cpu"]:
        return None
    ticks = [int(value) for value in fields[1:]]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system (idle iowait) irq softirq steal
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system


class ThreadGovernor:
    """Keeps a CPU run's torch threads where a shared machine makes them fastest.

    torch's threads meet at a barrier after every parallel region, and the one the scheduler parks
    behind another process keeps its partner waiting: on 2 cores, a 2-thread step beside one busy
    process started from another shell (``nice`` does not help there: Linux's autogroup shares the
    CPU between sessions first) took 3x (libgomp spinning 10000 times, polyvox's setting) to 30x
    (libgomp's default) its time alone, while one thread ran at its own speed beside it
    (``benchmarks/neighbour.py``).

    The governor looks every ``window`` training steps at how much CPU *other* processes used
    (``/proc/stat`` less this process): from ``busy_cores`` of them on, it tries one thread for a
    window and keeps it if it was faster; once the others use less than ``quiet_cores``, all threads
    come back. Every switch is logged. On a machine nobody else uses it never switches, so such a
    run stays bit-identical to any other (a switch changes the order of floating-point sums; losses
    then agree to ~1e-7, not exactly). It stays off with one thread, in a distributed run (ranks run
    in step), without /proc/stat, for steps under ``min_seconds`` (a tiny model's step is overhead),
    and when ``OMP_NUM_THREADS`` is set: the user's thread count wins."""

    def __init__(self, threads: int | None = None, *, window: int = 8, skip: int = 2, busy_cores: float = 0.5,
                 quiet_cores: float = 0.25, gain: float = 1.1, min_seconds: float = 0.1,
                 clock: Callable[[], float] = time.monotonic,
                 usage: Callable[[], tuple[float, float] | None] = cpu_seconds,
                 set_threads: Callable[[int], None] = torch.set_num_threads):
        self.full = torch.get_num_threads() if threads is None else threads
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.active = (self.full > 1 and not distributed and "OMP_NUM_THREADS" not in os.environ
                       and usage() is not None)
        self.window, self.skip, self.busy_cores, self.quiet_cores = window, skip, busy_cores, quiet_cores
        self.gain, self.min_seconds = gain, min_seconds
        self.clock, self.usage, self.set_threads = clock, usage, set_threads
        self.threads = self.full
        self.pace: dict[int, float] = {}  # threads -> the median step seconds of their last window
        self.others = 0.0  # cores other processes used over the last window
        self.probing = False  # on one thread to see whether it is faster
        self._hold, self._held = 0, 0  # windows to wait before the next probe (doubles after each that lost)
        self._lost_at = math.inf  # the pace on all threads that the last probe lost against
        self._was_busy = self._mixed = False  # the window before the probe's: busy too? (else it mixed both)
        self.switches: list[tuple[int, int, float]] = []  # (steps observed, threads, others' cores) per switch
        self._steps: list[float] = []
        self._observed = 0
        self._mark = (clock(), usage()) if self.active else None

    def _switch(self, threads: int, reason: str) -> None:
        self.threads = threads
        self.set_threads(threads)
        self._steps = []
        self.switches.append((self._observed, threads, round(self.others, 2)))
        log.warning("training on %d thread%s: %s", threads, "" if threads == 1 else "s", reason)

    def restore(self) -> None:
        """Give the process back its threads: the next stage in it should not inherit a busy hour's setting."""
        if self.threads != self.full:
            self.threads = self.full
            self.set_threads(self.full)

    def observe(self, seconds: float) -> None:
        """One training step (its validation not included) took ``seconds``."""
        if not self.active:
            return
        self._observed += 1
        self._steps.append(seconds)
        if len(self._steps) < self.skip + self.window:  # the first steps after a switch warm the new thread pool
            return
        now, used = self.clock(), self.usage()
        (then, before), self._mark = self._mark, (now, used)
        self.others = max(0.0, (used[0] - before[0]) - (used[1] - before[1])) / max(now - then, 1e-9)
        pace = statistics.median(self._steps[-self.window:])
        self._steps = self._steps[:self.skip]  # measure the next window at the same setting
        self.pace[self.threads] = pace
        if self.threads == self.full:
            busy, was_busy = self.others >= self.busy_cores, self._was_busy
            self._was_busy = busy
            if self._held and pace < 1.5 * self._lost_at:  # a wait ends early when two threads got slower
                self._held -= 1
            elif busy and pace >= self.min_seconds:
                self._held = 0
                # The first busy window's steps may be from before the neighbour came: a probe that
                # loses against it is measured again at once instead of waiting for the next try.
                self._mixed = not was_busy
                self.probing = True
                self._switch(1, f"other processes use {self.others:.1f} cores; trying one thread "
                                f"({pace:.3f} s/step on {self.full})")
        elif self.probing:
            self.probing = False
            if pace * self.gain < self.pace[self.full]:
                log.warning("staying on one thread while other processes are busy: %.3f s/step against %.3f on %d",
                            pace, self.pace[self.full], self.full)
            elif self._mixed:
                self._switch(self.full, f"one thread ({pace:.3f} s/step) against {self.full} threads before the "
                                        "other processes came; measuring again")
            else:
                self._hold = min(64, max(4, 2 * self._hold))
                self._held, self._lost_at = self._hold, self.pace[self.full]
                self._switch(self.full, f"one thread was no faster ({pace:.3f} against {self.pace[self.full]:.3f} "
                                        f"s/step); next try in {self._hold * self.window} steps")
        elif self.others < self.quiet_cores:
            self._switch(self.full, f"other processes use {self.others:.1f} cores now")


def plan_steps(done: int, elapsed: float, step_seconds: float, validation_seconds: float, max_minutes: float,
               validate_every: int, margin: float = 0.03) -> int:
    """The total step count that fits ``max_minutes``: ``done`` steps in ``elapsed`` seconds so far,
    then each further step at ``step_seconds`` plus its share of a validation pass every
    ``validate_every`` steps, keeping ``margin`` of the budget and two steps' time for checkpoints
    and noise."""
    per_step = step_seconds + validation_seconds / max(1, validate_every)
    left = max_minutes * 60 * (1 - margin) - elapsed - 2 * per_step
    return done + max(1, int(left / max(per_step, 1e-6)))


class StepPlan:
    """How many steps a run takes: ``bounds.max_steps``, or with ``max_steps: auto`` as many as
    ``bounds.max_minutes`` allow on this machine. ``bounds`` is a section with the step bounds
    (:class:`polyvox.config.StepBounds`); ``train.max_minutes`` and its kin are read here only.

    An auto plan times ``calibration_steps`` steps (their mean, less the first few, which warm caches
    and allocators) and the validation pass after them, then plans the rest of the budget; the plan
    is kept in last.pt (:meth:`state`), so a resumed run keeps it and the cosine schedule decays over
    the whole budget. It is re-planned at each validation from the recent pace (the steps since the
    last re-plan, their validation included): the machine may be busier or freer than during the
    timed start or an hour ago, and the schedule should end with the budget, not past it or well
    before it; an average since the start would lag a change of pace by as long as the run had
    lasted. Under DDP every rank runs rank 0's plan (timings differ a little between ranks)."""

    def __init__(self, bounds, label: str, section: str, world: int = 1):
        self.bounds, self.label, self.section, self.world = bounds, label, section, world
        self.auto = not isinstance(bounds.max_steps, int)
        self.steps: int | None = None if self.auto else bounds.max_steps
        self.trained_before = 0.0  # training seconds of the run being resumed: a plan spends the run's budget
        self.validation_seconds = 0.0  # the last validation pass's (:meth:`validation`)
        self._window = (0, 0.0)  # (step, monotonic time) of the last (re-)plan

    def resume(self, last: Path) -> None:
        """Keep the plan of the run being resumed from ``last`` (made on its timed start); one killed
        before it planned, or whose plan is spent already (the bounds grew), plans again."""
        if not self.auto:
            return
        saved = torch.load(last, map_location="cpu", weights_only=True)
        planned = saved.get("planned_steps")
        self.steps = int(planned) if planned and planned > int(saved["step"]) else None
        self.trained_before = float(saved.get("trained_seconds") or 0.0)

    def state(self, elapsed: float) -> dict:
        """What last.pt keeps of the plan (``elapsed``: this call's training seconds)."""
        return {"planned_steps": self.steps, "trained_seconds": self.trained_before + elapsed}

    def validation(self, run: Callable[[], float]) -> float:
        """``run()`` (a validation pass), timed for the plan."""
        started = time.monotonic()
        value = run()
        self.validation_seconds = time.monotonic() - started
        return value

    def _agreed(self, steps: int) -> int:
        if self.world == 1:
            return steps
        import torch.distributed as dist

        shared = torch.tensor([steps], dtype=torch.int64)
        dist.broadcast(shared, src=0)
        return int(shared[0])

    def calibrate(self, step: int, run_step: Callable[[int, bool], int], session: "Session") -> tuple[int, bool]:
        """With no plan yet (auto), run the timed start from ``step`` through ``run_step(step,
        validate)`` and plan; returns (the step reached, whether the clock stopped it first)."""
        if self.steps is None:
            start, timed = step, []
            while step < start + self.bounds.calibration_steps and not session.out_of_time():
                self.validation_seconds = 0.0
                started = time.monotonic()
                step = run_step(step, step + 1 == start + self.bounds.calibration_steps)
                timed.append(time.monotonic() - started - self.validation_seconds)
            if step < start + self.bounds.calibration_steps:
                return step, True
            pace = statistics.mean(timed[min(3, len(timed) - 1):])
            self.steps = self._agreed(plan_steps(step, self.trained_before + session.elapsed(), pace,
                                                 self.validation_seconds, self.bounds.max_minutes,
                                                 self.bounds.validate_every))
            log.info("%s: %.3f s/step and %.1f s a validation pass here; %d steps fit %s.max_minutes %g", self.label,
                     pace, self.validation_seconds, self.steps, self.section, self.bounds.max_minutes)
        self._window = (step, time.monotonic())
        return step, False

    def remaining(self, step: int) -> Iterator[int]:
        """Steps from ``step`` up to the plan, which :meth:`replan` may move while they run."""
        while step < self.steps:
            yield step
            step += 1

    def replan(self, step: int, elapsed: float) -> None:
        """After step ``step`` (done): at a validation step of an auto plan, plan again from the pace
        since the last plan (``elapsed``: this call's training seconds)."""
        if not (self.auto and step % self.bounds.validate_every == 0 and self._window[0] < step < self.steps):
            return
        now = time.monotonic()
        pace = (now - self._window[1]) / (step - self._window[0])
        self._window = (step, now)
        replanned = self._agreed(plan_steps(step, self.trained_before + elapsed, pace, 0.0, self.bounds.max_minutes,
                                            self.bounds.validate_every))
        if abs(replanned - self.steps) > max(1, self.steps // 100):
            log.info("%s: %.3f s/step lately; %d steps fit %s.max_minutes %g (planned %d)", self.label, pace,
                     replanned, self.section, self.bounds.max_minutes, self.steps)
            self.steps = replanned


class Session:
    """The bookkeeping of one run of a training loop into ``out``: the exact resume from last.pt,
    the metrics log (metrics.csv), the best and last checkpoints and the time bound. The caller
    owns the steps; only rank 0 (``write``) writes files."""

    def __init__(self, out: Path, model: torch.nn.Module, optimiser, scheduler, scaler, *, device: torch.device,
                 amp: bool, best_key: str, losses: tuple[str, ...], val_name: str, max_minutes: float,
                 validate_every: int, checkpoint_every: int, resume: bool, write: bool = True,
                 extra: Callable[[], dict] = dict, companions: dict | None = None, label: str = "run"):
        self.out, self.write, self.extra = out, write, extra
        self._objects = (model, optimiser, scheduler, scaler)
        self.companions = companions or {}
        self.best_key, self.amp, self.losses = best_key, amp, losses
        self.max_minutes, self.validate_every, self.checkpoint_every = max_minutes, validate_every, checkpoint_every
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
        return self.elapsed() > self.max_minutes * 60

    def validation_due(self, step: int, last: bool) -> bool:
        return step % self.validate_every == 0 or last

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
        if self.write and (step % self.checkpoint_every == 0 or last):
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
