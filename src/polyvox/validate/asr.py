"""Offline ASR (pocketsphinx, which ships its en-us model) and character error rate.

A fresh decoder per utterance: a reused pocketsphinx decoder carries state between utterances
and gives different text for identical audio (measured on this project's machines).
"""

from __future__ import annotations

import numpy as np

from polyvox.text.normalize import words_for_scoring

ASR_RATE = 16000


def recognize(signal: np.ndarray, rate: int) -> str:
    """Transcribe mono float audio in [-1, 1]."""
    from pocketsphinx import Decoder

    if rate != ASR_RATE:
        import librosa

        signal = librosa.resample(signal, orig_sr=rate, target_sr=ASR_RATE, res_type="soxr_hq")
    pcm = (np.clip(signal, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    decoder = Decoder(samprate=ASR_RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


def edit_distance(reference: list | str, hypothesis: list | str) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def character_error_rate(reference: str, hypothesis: str) -> float:
    """CER over normalised characters (words joined by single spaces), the reference's length."""
    ref, hyp = " ".join(words_for_scoring(reference)), " ".join(words_for_scoring(hypothesis))
    return edit_distance(ref, hyp) / max(1, len(ref))


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref, hyp = words_for_scoring(reference), words_for_scoring(hypothesis)
    return edit_distance(ref, hyp) / max(1, len(ref))
