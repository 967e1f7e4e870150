"""Per-file scoring, run in worker processes (``polyvox.parallel.map_items``), and the paired bootstrap.

:func:`score` is module-level and takes one picklable :class:`ScoreItem`, so the same call runs
inline, in the local process pool or on dask. Each worker loads the speaker encoder (and the
Whisper model) once. With a Whisper judge, pocketsphinx's second opinion fills the ``ps_*`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import soundfile as sf

from polyvox.config import AudioSection
from polyvox.evaluate import metrics as m
from polyvox.judges import Judge
from polyvox.judges.dnsmos import dnsmos
from polyvox.judges.scores import asr_scores
from polyvox.judges.speaker import SpeakerEncoder

_encoder: SpeakerEncoder | None = None


def _speaker_encoder() -> SpeakerEncoder:
    global _encoder
    if _encoder is None:
        _encoder = SpeakerEncoder()
    return _encoder


@dataclass(frozen=True)
class ScoreItem:
    kind: str  # "centroid" (embedding only) | "real" | "synthesis" (also MCD and log-F0 RMSE against `real`)
    audio: str  # path of the WAV/FLAC to score
    text: str = ""
    real: str | None = None
    pitch: AudioSection | None = None  # its f0_min, f0_max and f0_resolution track the pitch of "synthesis"
    judge: Judge | None = None  # the ASR for "real" and "synthesis"


def _read(path: str) -> tuple[np.ndarray, int]:
    signal, rate = sf.read(path, dtype="float32", always_2d=True)
    return signal.mean(axis=1), rate


def score(item: ScoreItem) -> dict:
    """ASR errors, speaker embedding, DNSMOS, and for synthesis MCD/log-F0 RMSE against the real take."""
    signal, rate = _read(item.audio)
    out: dict = {"embedding": _speaker_encoder().embed(signal, rate).astype(np.float32)}
    if item.kind == "centroid":
        return out
    if item.judge is None:
        raise ValueError(f"{item.audio}: a {item.kind!r} item needs a judge to score its intelligibility")
    asr = asr_scores(signal, rate, item.text, item.judge)
    out.update({"hypothesis": asr.hypothesis, "words": asr.words, "word_errors": asr.word_errors,
                "characters": asr.characters, "character_errors": asr.character_errors, "wer": asr.wer, "cer": asr.cer,
                "seconds": len(signal) / rate, **dnsmos(signal, rate)})
    second = item.judge.second_opinion()
    if second is not None:
        ps = asr_scores(signal, rate, item.text, second)
        out.update({"ps_hypothesis": ps.hypothesis, "ps_words": ps.words, "ps_word_errors": ps.word_errors,
                    "ps_characters": ps.characters, "ps_character_errors": ps.character_errors, "ps_wer": ps.wer,
                    "ps_cer": ps.cer})
    if item.kind == "synthesis" and item.real is not None:
        real, real_rate = _read(item.real)
        if item.pitch is None:
            raise ValueError(f"{item.audio}: a 'synthesis' item needs the audio settings its pitch is tracked with")
        f0 = (item.pitch.f0_min, item.pitch.f0_max, item.pitch.f0_resolution)
        ours, theirs = m.analyse(signal, rate, *f0), m.analyse(real, real_rate, *f0)
        path = m.dtw_path(theirs, ours)
        f0 = m.log_f0_rmse(theirs, ours, path)
        out.update({"mcd_db": m.mel_cepstral_distortion(theirs, ours, path),
                    "log_f0_rmse_cents": None if f0 is None else f0 * m.CENTS_PER_LN})
    return out


def paired_bootstrap(a_num: np.ndarray, a_den: np.ndarray, b_num: np.ndarray, b_den: np.ndarray, resamples: int,
                     confidence: float, seed: int) -> dict[str, float]:
    """Difference a − b of the ratio statistics Σnum/Σden over paired utterances, and its percentile
    bootstrap interval (utterances resampled with replacement, the same draw for both systems).

    A mean is the ratio with ``den`` all ones; corpus WER is word errors over reference words."""
    a_num, a_den, b_num, b_den = (np.asarray(v, dtype=np.float64) for v in (a_num, a_den, b_num, b_den))
    keep = ~(np.isnan(a_num) | np.isnan(b_num))
    a_num, a_den, b_num, b_den = a_num[keep], a_den[keep], b_num[keep], b_den[keep]
    if not len(a_num):
        return {"difference": float("nan"), "low": float("nan"), "high": float("nan"), "pairs": 0}
    difference = a_num.sum() / a_den.sum() - b_num.sum() / b_den.sum()
    draws = np.random.default_rng(seed).integers(0, len(a_num), size=(resamples, len(a_num)))
    diffs = a_num[draws].sum(axis=1) / np.maximum(a_den[draws].sum(axis=1), 1e-12) \
        - b_num[draws].sum(axis=1) / np.maximum(b_den[draws].sum(axis=1), 1e-12)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return {"difference": float(difference), "low": float(low), "high": float(high), "pairs": int(len(a_num))}
