"""Audio probes computed from the signal, one file at a time (runs in worker processes).

Every probe is a number or a flag that a Great Expectations expectation then judges against a
threshold from ``params.yaml``; nothing here decides whether a row is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf

from polyvox.judges import Judge

# Frame energies: 25 ms windows every 10 ms, the usual speech-activity resolution.
FRAME_SECONDS, HOP_SECONDS = 0.025, 0.010
# Frame levels are floored here, so digital silence has a finite level (and a finite SNR).
FLOOR_DB = -100.0
# A frame counts as speech when it is within this range of the loud (95th percentile) frames and
# above an absolute level. Relative to the loud frames, not the noise floor: a tightly trimmed take
# has hardly any pause, and its quietest frames are speech (measured on kathleen-a).
ACTIVITY_RANGE_DB, ACTIVITY_MIN_DBFS = 25.0, -55.0


# What :func:`probe` returns for every row (None where a probe could not be computed).
FIELDS = ("row", "decodable", "decode_error", "finite", "decoded_duration", "clipping_ratio", "snr_db",
          "speech_ratio", "noise_floor_dbfs", "speech_level_dbfs", "asr_judge", "asr_hypothesis", "cer")


@dataclass(frozen=True)
class ProbeTask:
    row: int
    audio: str | None  # absolute path, or None when the reader found no file
    text: str | None
    judge: Judge | None  # validate.asr_check: the ASR that checks the transcript; None: no check


def frame_levels_db(signal: np.ndarray, rate: int) -> np.ndarray:
    """RMS level of each frame in dBFS, shape (frames,)."""
    frame, hop = max(1, int(FRAME_SECONDS * rate)), max(1, int(HOP_SECONDS * rate))
    if signal.size < frame:
        signal = np.pad(signal, (0, frame - signal.size))
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), FLOOR_DB)


def speech_probes(signal: np.ndarray, rate: int) -> dict[str, float]:
    """Clipping ratio, noise floor, speech level, SNR estimate and share of frames with speech."""
    levels = frame_levels_db(signal, rate)
    noise_floor = float(np.percentile(levels, 5))
    speech_level = float(np.percentile(levels, 95))
    threshold = max(speech_level - ACTIVITY_RANGE_DB, ACTIVITY_MIN_DBFS)
    return {
        "clipping_ratio": float(np.mean(np.abs(signal) >= 0.999)),
        "noise_floor_dbfs": round(noise_floor, 3),
        "speech_level_dbfs": round(speech_level, 3),
        "snr_db": round(speech_level - noise_floor, 3),
        "speech_ratio": float(np.mean(levels > threshold)),
    }


def probe(task: ProbeTask) -> dict[str, object]:
    """All probes for one row. Never raises on bad audio: the failure is a probe value."""
    result: dict[str, object] = {**dict.fromkeys(FIELDS), "row": task.row, "decodable": False}
    if task.audio is None:
        result["decode_error"] = "no audio file"
        return result
    try:
        signal, rate = sf.read(task.audio, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        result["decode_error"] = f"{type(exc).__name__}: {exc}"
        return result
    if signal.shape[0] == 0:
        result["decode_error"] = "no samples"
        return result
    mono = signal.mean(axis=1)
    finite = bool(np.isfinite(mono).all())
    result.update(decodable=True, finite=finite, decoded_duration=signal.shape[0] / rate)
    if not finite:
        return result
    result.update(speech_probes(mono, rate))
    if task.judge is not None and task.text:
        from polyvox.judges import recognize
        from polyvox.judges.scores import character_error_rate

        hypothesis = recognize(mono, rate, task.judge)
        result.update(asr_judge=task.judge.name, asr_hypothesis=hypothesis,
                      cer=character_error_rate(task.text, hypothesis))
    return result
