"""Small I/O helpers used at the edges: atomic writes, content hashes, and the ``.npz`` arrays
that features write and training, the vocoder and the ensemble read."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CHUNK = 1 << 20

# Errors of the write itself (as opposed to, say, a missing source file read inside the block).
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


class OutputNotWritten(Exception):
    """An output file could not be written (a full disk, a read-only or unwritable folder).

    Deliberately not an ``OSError``: code that treats an unreadable *input* as a bad row
    (``except OSError``) must not quietly turn a full disk into rejected data.
    """

    def __init__(self, target: str, reason: str, code: int | None = None):
        super().__init__(target, reason, code)  # args round-trip through pickle (worker processes)
        self.target, self.reason, self.errno = target, reason, code

    def __str__(self) -> str:
        return f"cannot write {self.target}: {self.reason}"


def _not_written(target: Path, exc: OSError, tmp: Path | None = None) -> OutputNotWritten:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.filename is not None and str(exc.filename) not in (str(target), str(tmp)):
        reason += f" ({exc.filename})"  # e.g. the folder that could not be made
    return OutputNotWritten(str(target), reason, exc.errno)


def _folder_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs (Windows) or the folder is gone
        return False


CHECKPOINTS = ("best.pt", "last.pt")  # a trained folder's weights: the best validated, else the newest


def chosen_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a trained folder (member, base, vocoder) is used by: best.pt, else last.pt."""
    return next((folder / name for name in CHECKPOINTS if (folder / name).is_file()), None)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _same_bytes(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as left, open(b, "rb") as right:
        while True:
            chunk = left.read(CHUNK)
            if chunk != right.read(CHUNK):
                return False
            if not chunk:
                return True


def cache_root() -> Path:
    """Where polyvox keeps what it derives once per machine (an assembled Whisper model, an optimised
    Piper graph): ``$POLYVOX_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/polyvox``."""
    if os.environ.get("POLYVOX_CACHE"):
        return Path(os.environ["POLYVOX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polyvox"


@contextmanager
def atomic_path(target: Path, keep_unchanged: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    A reader never sees a half-written file, and a killed writer leaves only a ``.tmp-*`` file
    that the next run overwrites. A write that fails for want of space or permission raises
    :class:`OutputNotWritten`, naming ``target`` and the reason. ``keep_unchanged``: a target that
    already holds these bytes is left as it is (an index a rerun rewrites identically keeps its
    mtime, so DVC and make-like tools see no change).
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.stem}.", suffix=target.suffix, dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _not_written(target, exc) from exc
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS and exc.filename in (None, str(tmp), tmp):
                raise _not_written(target, exc, tmp) from exc
            raise
        except RuntimeError as exc:
            # libsndfile and torch report a full disk as their own errors ("System error.")
            if _folder_full(target.parent):
                raise OutputNotWritten(str(target), os.strerror(errno.ENOSPC), errno.ENOSPC) from exc
            raise
        try:
            if keep_unchanged and _same_bytes(tmp, target):
                return
            if tmp.exists():
                tmp.chmod(0o644)  # mkstemp creates it private; outputs are ordinary files
            os.replace(tmp, target)
        except OSError as exc:
            raise _not_written(target, exc, tmp) from exc
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def recover_folder(target: Path) -> bool:
    """Undo a :func:`replace_folder` killed between its two renames: ``target`` is missing and the
    old folder waits aside as ``.<name>-old``, so it goes back. True when it did."""
    previous = target.with_name(f".{target.name}-old")
    if target.exists() or not previous.is_dir():
        return False
    previous.rename(target)
    return True


def remove_staging(target: Path) -> list[Path]:
    """Delete the staging folders a killed writer left beside ``target`` (``.<name>-*`` from
    ``mkdtemp``; never ``.<name>-old``, which :func:`recover_folder` owns). Call it as the workspace's
    writer, or when no writer is active. Returns what it removed."""
    removed = []
    for stale in sorted(target.parent.glob(f".{target.name}-*")):
        if stale.name != f".{target.name}-old" and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def replace_folder(staging: Path, target: Path) -> None:
    """Put the fully written folder ``staging`` in place of ``target``: the old one is renamed aside
    first and removed last, so a reader finds the old folder or the new one, never a mix. A kill
    between the two renames leaves no ``target`` but ``.<name>-old`` beside it; :func:`recover_folder`
    (which readers of a served folder and this function call first) puts it back."""
    previous = target.with_name(f".{target.name}-old")
    recover_folder(target)
    if previous.exists():
        shutil.rmtree(previous)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    if previous.exists():
        shutil.rmtree(previous)


def remove_unreferenced(folder: Path, keep: set[str], suffix: str) -> None:
    """Delete the ``*suffix`` files under ``folder`` whose stem is not in ``keep``: a stage's outputs
    for rows no longer in its input (the clean audio, features, content of a dropped take)."""
    for path in folder.rglob(f"*{suffix}") if folder.is_dir() else []:
        if path.stem not in keep:
            path.unlink()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` whose bytes depend only on the arrays (np.savez stamps the current time)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}
