"""The teacher's rendering of a text: an offline engine (flite, festival) reads it, and its log-mel
becomes an input of the acoustic model beside the text (``features.teacher_voice``).

The engine's frames carry what a text-only model must otherwise learn from scratch (the sounds of
each phone and the transitions between them); the model aligns them to the text with its own
alignment search and warps them onto the durations it predicts, so the decoder has to learn the
target's timbre and prosody rather than speech itself. The same function renders the teacher for
training (the features stage, cached by content) and for synthesis (the Synthesizer), so the two
see the same audio: trimmed and loudness-normalised as ``clean`` treats a corpus take.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from polyvox.config import AudioSection


@dataclass(frozen=True)
class TeacherSettings:
    """What decides a teacher rendering's frames: the voice, the signal and the cleaning it gets."""

    voice: str  # a name of polyvox.engines.CATALOG
    audio: AudioSection
    trim_top_db: float
    loudness_lufs: float

    def to_dict(self) -> dict:
        return {"voice": self.voice, "audio": self.audio.model_dump(), "trim_top_db": self.trim_top_db,
                "loudness_lufs": self.loudness_lufs}

    @classmethod
    def from_dict(cls, data: dict) -> "TeacherSettings":
        return cls(voice=data["voice"], audio=AudioSection(**data["audio"]), trim_top_db=float(data["trim_top_db"]),
                   loudness_lufs=float(data["loudness_lufs"]))

    @classmethod
    def from_params(cls, params) -> "TeacherSettings | None":
        if params.features.teacher_voice is None:
            return None
        return cls(voice=params.features.teacher_voice, audio=params.audio, trim_top_db=params.clean.trim_top_db,
                   loudness_lufs=params.clean.loudness_lufs)


def teacher_mel(text: str, settings: TeacherSettings, label: str = "the text") -> np.ndarray:
    """(n_mels, frames) float32 log-mel of the teacher voice reading ``text``. ``label`` names the row
    in errors (a missing engine or a failed rendering is a SynthesisError that says which).

    The last few renderings are kept: every member of an ensemble (and the ONNX runtime beside
    PyTorch) reads the same text's rendering, which is one engine process, not one per member."""
    return _mel(text, settings, label).copy()


def teacher_audio(text: str, settings: TeacherSettings, label: str = "the text", length_scale: float = 1.0) -> np.ndarray:
    """The teacher voice reading ``text`` at ``settings.audio.sample_rate``, trimmed and loudness-normalised
    as ``clean`` treats a corpus take (float32). ``length_scale`` slows (>1) or speeds (<1) the voice's
    own pace; only a Piper teacher has one (its duration predictor's scale)."""
    return _audio(text, settings, label, float(length_scale)).copy()


@lru_cache(maxsize=16)
def _mel(text: str, settings: TeacherSettings, label: str) -> np.ndarray:
    import torch

    from polyvox.signal.mel import log_mel

    audio = _audio(text, settings, label, 1.0)
    return log_mel(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), settings.audio).numpy().astype(np.float32)


@lru_cache(maxsize=16)
def _audio(text: str, settings: TeacherSettings, label: str, length_scale: float) -> np.ndarray:
    import librosa

    from polyvox.engines import piper_render, resolve_voices, synthesize
    from polyvox.signal.loudness import loudness

    cfg = settings.audio
    voice = resolve_voices([settings.voice])[0]
    if voice.engine == "piper":
        mono, rate = piper_render(voice, text, label, length_scale)
    else:
        if length_scale != 1.0:
            raise ValueError(f"length_scale {length_scale:g}: the teacher voice {voice.name} ({voice.engine}) has no "
                             "pace to set; only a Piper teacher does")
        with tempfile.TemporaryDirectory(prefix="polyvox-teacher-") as scratch:
            wav = Path(scratch) / "teacher.wav"
            synthesize(voice, text, wav, label)
            signal, rate = sf.read(str(wav), dtype="float32", always_2d=True)
        mono = signal.mean(axis=1)
    if rate != cfg.sample_rate:
        mono = librosa.resample(mono, orig_sr=rate, target_sr=cfg.sample_rate, res_type="soxr_hq")
    trimmed, _ = librosa.effects.trim(mono, top_db=settings.trim_top_db, frame_length=cfg.win_length,
                                      hop_length=cfg.hop_length)
    measured = loudness(trimmed, cfg.sample_rate)
    if np.isfinite(measured):
        trimmed = trimmed * 10 ** ((settings.loudness_lufs - measured) / 20)
    return np.ascontiguousarray(trimmed, dtype=np.float32)
