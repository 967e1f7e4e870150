"""The teacher: a catalogue voice (:data:`polyvox.engines.CATALOG`) reading the very text a model is
given, at training and at synthesis alike. This module is its one home: what decides a rendering
(:class:`TeacherSettings`) and the rendering itself, trimmed and loudness-normalised as ``clean``
treats a corpus take, so training and synthesis see the same audio. Two kinds of model read it:

- the text→mel model (``features.teacher_voice``, an offline engine such as flite): the rendering's
  log-mel (:func:`teacher_mel`) enters the decoder beside the text; the model aligns it to the text
  with its own alignment search and warps it onto the durations it predicts
  (:mod:`polyvox.models.teacher`), so the decoder learns the target's timbre and prosody rather than
  speech itself; the features stage caches one rendering per text (:mod:`polyvox.features.teacher`);
- a conversion member (``converter.teacher_voice``, Piper joe by default): the rendering's audio
  (:func:`teacher_audio`, ``length_scale`` honoured) becomes content features and a pitch contour
  that the member's decoder turns into the speaker's voice (:mod:`polyvox.runtime.converter`).

The voices the demo corpus and the base's corpus are read by are catalogue voices too, but not
teachers: they make takes, not inputs.
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


# The pace a teacher may be set to for a speaker: beyond twice or half the teacher's own, the measured
# takes are more likely mislabelled or padded with silence than spoken that way.
TEMPO_RANGE = (0.5, 2.0)
TEMPO_STEPS = 4  # renderings of the texts at most, beyond the teacher's own pace
TEMPO_TOLERANCE = 0.01  # of the takes' seconds: close enough to stop


def tempo(takes: list[tuple[str, float]], settings: TeacherSettings) -> float | None:
    """The teacher's ``length_scale`` at which it speaks at a speaker's pace: the one at which its
    cleaned renderings of the texts last as long as the speaker's cleaned takes of them (``takes``:
    (text, seconds) pairs), within :data:`TEMPO_RANGE`. Whole sentences, pauses included, as the
    teacher's rendering at synthesis has them. A rendering's length is affine in the scale, not
    proportional (Piper joe: ×1.3 gives ×1.18; short phones and the edges do not stretch), so the scale
    is found by secant steps from the teacher's own pace. None when the teacher has no pace to set
    (not Piper) or none of the texts can be rendered."""
    from polyvox.engines import SynthesisError, resolve_voices

    if resolve_voices([settings.voice])[0].engine != "piper":  # installed, or an error naming the package
        return None
    texts, spoken, own = [], 0.0, 0
    for text, seconds in takes:
        try:
            own += _audio(text, settings, repr(text[:60]), 1.0).size
        except SynthesisError:  # nothing in it to pronounce: a text that says nothing of the pace
            continue
        texts.append(text)
        spoken += seconds
    if not texts:
        return None

    def length(scale: float) -> float:
        return sum(_audio(text, settings, repr(text[:60]), scale).size for text in texts) / settings.audio.sample_rate

    low, high = TEMPO_RANGE
    scales, lengths = [1.0], [own / settings.audio.sample_rate]
    scale = float(np.clip(spoken / lengths[0], low, high))
    for _ in range(TEMPO_STEPS):
        if scale == scales[-1]:
            break
        scales.append(scale)
        lengths.append(length(scale))
        if abs(lengths[-1] - spoken) <= TEMPO_TOLERANCE * spoken or lengths[-1] == lengths[-2]:
            break
        slope = (lengths[-1] - lengths[-2]) / (scales[-1] - scales[-2])
        scale = float(np.clip(scales[-1] + (spoken - lengths[-1]) / slope, low, high))
    return round(scales[-1], 3)


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
