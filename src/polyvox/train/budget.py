"""How much of a shared machine a training run spends, and how: the step plan that fits
``max_minutes`` (:class:`StepPlan`, timed on this machine and re-planned as its pace changes) and the
thread count that keeps a CPU run fast beside other processes (:class:`ThreadGovernor`)."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import torch

log = logging.getLogger(__name__)


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


class Clocked(Protocol):
    """What a plan asks of the run it plans (:class:`polyvox.train.loop.Session` is one)."""

    def elapsed(self) -> float: ...

    def out_of_time(self) -> bool: ...


class StepPlan:
    """How many steps a run takes: ``bounds.max_steps``, or with ``max_steps: auto`` as many as
    ``bounds.max_minutes`` allow on this machine. ``bounds`` is a section with the step bounds
    (:class:`polyvox.config.StepBounds`): the plan reads ``max_steps``, ``max_minutes``,
``calibration_steps`` and ``validate_every`` (its re-plans), :class:`polyvox.train.loop.Session` the
time bound and when to validate and checkpoint.

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

    def calibrate(self, step: int, run_step: Callable[[int, bool], int], session: Clocked) -> tuple[int, bool]:
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
