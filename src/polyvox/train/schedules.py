"""The learning-rate schedules of the trainers, as multipliers of the peak rate per step: a linear
warm-up, then a cosine down to ``LR_FLOOR`` of the peak, or an inverse square root; with
``max_steps: auto`` the cosine runs over the plan of :class:`polyvox.train.budget.StepPlan`."""

from __future__ import annotations

import math
from collections.abc import Callable

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
