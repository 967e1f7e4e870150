"""Work that kills its worker process, for tests/test_parallel.py (module-level: the pool's fork
server imports it by name)."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def square_or_die(item: tuple[int, str | None]) -> int:
    """Segfault on the item whose second field is "die"; on "once:<path>" only the first time."""
    value, mode = item
    if mode == "die":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode and mode.startswith("once:"):
        marker = Path(mode.removeprefix("once:"))
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # the out-of-memory killer, once
    return value * value
