"""The features stage's worker for teacher renderings (``features.teacher_voice``): one text's
rendering (:func:`polyvox.frontends.teacher.teacher_mel`, the same function synthesis calls) cached
as an ``.npy``."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from polyvox.fileio import atomic_write_bytes
from polyvox.frontends.teacher import TeacherSettings, teacher_mel

TEACHER_VERSION = "1"


@dataclass(frozen=True)
class TeacherTask:
    text: str
    target: str
    settings: TeacherSettings
    label: str


def render(task: TeacherTask) -> int:
    """Worker: the teacher mel of one text into ``target`` (.npy, atomically); returns its frames."""
    mel = teacher_mel(task.text, task.settings, task.label)
    buffer = io.BytesIO()
    np.save(buffer, mel, allow_pickle=False)
    atomic_write_bytes(Path(task.target), buffer.getvalue())
    return int(mel.shape[1])
