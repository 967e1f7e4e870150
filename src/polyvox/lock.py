"""One writer per workspace: a second pipeline run in the same folder stops at once, saying who holds it.

The lock is an advisory ``flock`` on ``<workspace>/.polyvox.lock``: the kernel drops it when its
process ends, however it ends (``kill -9`` included), so a crashed run never leaves a stale lock;
the file only records who held it last. Re-entrant within one process (the Prefect flow holds it
while its tasks call stage functions). Under ``torchrun`` only rank 0 takes it: the other ranks
belong to the same run.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".polyvox.lock"

_held: dict[str, tuple[int, int]] = {}  # lock path → (file descriptor, depth) held by this process
_guard = threading.Lock()


class WorkspaceBusy(RuntimeError):
    """Another polyvox process is writing in this workspace."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} ({info.get('command', '?')}, since {started})"


@contextmanager
def workspace_lock(root: Path, command: str) -> Iterator[None]:
    """Hold the workspace for ``command``; raises :class:`WorkspaceBusy` naming the holder when taken."""
    if int(os.environ.get("RANK", "0")) > 0:
        yield
        return
    path = Path(root).resolve() / LOCK_NAME
    key = str(path)
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
        else:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise WorkspaceBusy(f"{path}: cannot create the workspace lock ({exc.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WorkspaceBusy(f"workspace {path.parent} is in use by {_holder(path)}: wait for it to finish, "
                                    f"or run in another folder") from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                                     "started": time.time()}).encode())
            _held[key] = (fd, 1)
    try:
        yield
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


def writer_active(root: Path) -> bool:
    """Whether another process holds the workspace at ``root`` now (a reader, such as the service,
    leaves a writer's half-done folder swap alone then). False where there is no lock file."""
    path = Path(root).resolve() / LOCK_NAME
    if str(path) in _held:
        return False  # this process is the writer
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing the descriptor drops the probe's shared lock
    return False
