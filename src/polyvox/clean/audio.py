"""Audio cleaning for one file (runs in worker processes): downmix, resample, trim, loudness.

Deterministic: the same input bytes and settings give the same output bytes (soxr resampling,
PCM 16-bit WAV, no timestamps in the header).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from polyvox.fileio import atomic_path
from polyvox.signal.loudness import loudness


@dataclass(frozen=True)
class CleanAudioTask:
    source: str
    target: str
    sample_rate: int
    trim_top_db: float
    trim_margin: float
    loudness_lufs: float
    peak_dbfs: float
    # Silence trimming resolution, from the analysis settings in params (audio.win_length/hop_length).
    frame_length: int
    hop_length: int


def clean_audio(task: CleanAudioTask) -> dict[str, float]:
    import librosa

    signal, rate = sf.read(task.source, dtype="float32", always_2d=True)
    mono = signal.mean(axis=1)
    if rate != task.sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=task.sample_rate, res_type="soxr_hq")
    _, (start, end) = librosa.effects.trim(mono, top_db=task.trim_top_db, frame_length=task.frame_length,
                                          hop_length=task.hop_length)
    margin = int(task.trim_margin * task.sample_rate)
    start, end = max(0, start - margin), min(mono.size, end + margin)
    trimmed = mono[start:end].astype(np.float64)

    measured = loudness(trimmed, task.sample_rate)
    gain_db = task.loudness_lufs - measured if np.isfinite(measured) else 0.0
    out = trimmed * 10 ** (gain_db / 20)
    limit = 10 ** (task.peak_dbfs / 20)
    peak = float(np.max(np.abs(out))) if out.size else 0.0
    if peak > limit:
        out *= limit / peak
    target = Path(task.target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        sf.write(tmp, out.astype(np.float32), task.sample_rate, format="WAV", subtype="PCM_16")
    return {
        "clean_duration": out.size / task.sample_rate,
        "loudness_in": round(measured, 3) if np.isfinite(measured) else None,
        "gain_db": round(gain_db, 3),
        "trim_start": start / task.sample_rate,
        "trim_end": (mono.size - end) / task.sample_rate,
    }
