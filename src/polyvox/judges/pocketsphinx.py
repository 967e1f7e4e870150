"""Offline ASR: pocketsphinx, which ships its en-us model (the fallback judge and second opinion).

A fresh decoder per utterance: a reused pocketsphinx decoder carries state between utterances
and gives different text for identical audio (measured on this project's machines).
"""

from __future__ import annotations

import numpy as np

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
