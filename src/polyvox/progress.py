"""Progress for long work: a rich bar on a terminal, periodic log lines elsewhere (Prefect, CI)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def track(
    items: Iterable[T], total: int, description: str, logger: logging.Logger, size: Callable[[T], int] = lambda _: 1,
    total_now: Callable[[], int] | None = None,
) -> Iterator[T]:
    """Yield ``items`` while showing progress out of ``total`` (each item counts ``size(item)``);
    ``total_now``, when given, is asked after each item for a total that may have changed (a
    training run that re-plans its step count).

    On a terminal this is a rich bar; elsewhere (Prefect logs, CI) a log line every ~10 %.
    """
    if total == 0:
        return
    if sys.stderr.isatty():
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total)
            for item in items:
                yield item
                bar.advance(task, size(item))
                if total_now is not None:
                    bar.update(task, total=total_now())
        return
    done, next_report, was = 0, total / 10, None
    for item in items:
        yield item
        done += size(item)
        if total_now is not None and total_now() != total:
            # said once, on the next line, so that a total that moves is read as a new plan, not a glitch
            was, total = (total if was is None else was), total_now()
            next_report = min(next_report, done + total / 10)
        if done >= next_report or done == total:
            moved = f"; the total was {was}, re-planned" if was is not None else ""
            logger.info("%s: %d/%d (%d%%)%s", description, done, total, round(100 * done / max(1, total)), moved)
            next_report, was = done + total / 10, None
