"""The service's heap under uploads: glibc's malloc, told to keep fewer arenas and to give freed
memory back.

A request thread that decodes a reference upload and runs the reference encoder allocates tens of
MB and frees them again. glibc gives each thread that contends for the heap an arena of its own (up
to 8 per core) and returns freed memory from those arenas to the system only when asked: under the
hostile load of ``benchmarks/serve_load.py --hostile`` (263 wide uploads) the server grew by 670 MB
and kept it, 369 MB with two arenas (``MALLOC_ARENA_MAX=2``). Where glibc is not the allocator (musl,
macOS) these are no-ops."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_libc = _glibc()


def limit_arenas(arenas: int = 2) -> bool:
    """At most ``arenas`` malloc arenas from now on (threads created later share them); False where
    the allocator is not glibc's. An ``MALLOC_ARENA_MAX`` in the environment has been applied by
    glibc already, and this call overrides it, so the caller skips it then."""
    return bool(_libc is not None and _libc.mallopt(M_ARENA_MAX, arenas))


class Trimmer:
    """``malloc_trim(0)`` (every arena's free pages back to the system) after requests that allocated
    big, at most once per ``every`` seconds: a trim walks the heaps, a few ms, and is not worth it per
    small request. Thread-safe; call :meth:`after_request` when such a request has freed its memory."""

    def __init__(self, every: float = 1.0):
        self.every = every
        self._last = 0.0
        self._lock = threading.Lock()

    def after_request(self) -> bool:
        if _libc is None:
            return False
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.every:
                return False
            self._last = now
        _libc.malloc_trim(0)
        return True
