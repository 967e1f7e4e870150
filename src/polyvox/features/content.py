"""The features stage's worker for content features (:mod:`polyvox.frontends.content`, for members of
``kind: convert``): one clean take's encoder output at 50 Hz, cached as a float16 ``.npy`` (half the
bytes; the encoder itself runs in int8). Training moves it onto the mel grid when it loads it."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from polyvox.fileio import atomic_write_bytes
from polyvox.frontends.content import ContentSettings, encode

CONTENT_VERSION = "1"


@dataclass(frozen=True)
class ContentTask:
    audio: str
    target: str
    settings: ContentSettings


def extract_content(task: ContentTask) -> int:
    """Worker: the content features of one take into ``target`` (atomically); returns their frames."""
    signal, rate = sf.read(task.audio, dtype="float32", always_2d=True)
    try:
        content = encode(signal.mean(axis=1), rate, task.settings)
    except ValueError as exc:
        raise ValueError(f"{task.audio}: {exc}") from None
    buffer = io.BytesIO()
    np.save(buffer, content.astype(np.float16), allow_pickle=False)
    atomic_write_bytes(Path(task.target), buffer.getvalue())
    return int(content.shape[0])
