"""Fingerprints of a stage's inputs, so a rerun with nothing changed is a no-op in every way in
(CLI, DVC, the nightly Prefect deployment) — and a rerun with something changed redoes the work.

A stage stores the fingerprint it ran on next to its outputs; on the next call it compares.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def fingerprint(*parts) -> str:
    """sha256 of the parts (anything JSON-able; other objects by ``str``)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(folder: Path) -> str:
    """Digest of every file under ``folder`` (names and contents); '' when it does not exist."""
    if not folder.is_dir():
        return ""
    return fingerprint([(p.relative_to(folder).as_posix(), file_digest(p))
                        for p in sorted(folder.rglob("*")) if p.is_file()])


VOICE_FILE = "voice.json"  # what a voice folder says about itself (polyvox.runtime.voice.Voice)
VOICE_PARTS = (VOICE_FILE, "members", "vocoder", "centroids.npz")


def voice_digest(folder: Path) -> str:
    """Digest of what makes a voice speak as it does (voice.json, members, vocoder, centroids) —
    the same for a candidate folder and the bundle made from it; '' when there is no voice."""
    if not (folder / VOICE_FILE).is_file():
        return ""
    files = []
    for part in VOICE_PARTS:
        target = folder / part
        files += sorted(p for p in target.rglob("*") if p.is_file()) if target.is_dir() else [target] * target.is_file()
    return fingerprint([(p.relative_to(folder).as_posix(), file_digest(p)) for p in files])


def source_digest(*subpackages: str) -> str:
    """Digest of polyvox's own source under the given subpackages/modules (code changes redo work)."""
    files = []
    for name in subpackages:
        target = PACKAGE / name
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
    return fingerprint([(p.relative_to(PACKAGE).as_posix(), file_digest(p)) for p in files])


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def current_stamp(stamp: Path, outputs: list[Path], inputs) -> dict | None:
    """The stamp a stage wrote at ``stamp`` when every one of its ``outputs`` exists and it records
    exactly these ``inputs`` (a fingerprint, or a callable computing it only when needed); else None."""
    previous = read_stamp(stamp)
    if not previous or not all(path.is_file() for path in outputs):
        return None
    return previous if previous.get("inputs") == (inputs() if callable(inputs) else inputs) else None
