"""The Whisper judge: faster-whisper (CTranslate2, int8 on CPU) transcribing audio for WER/CER.

The models and how they load live in :mod:`polyvox.frontends.whisper` (the content encoder uses them
too); their names are re-exported here for the judge's callers.

Decoding is set to judge the audio rather than the language model's guesses: greedy, no
temperature fallback (a retry at a higher temperature samples until something plausible comes
out), no conditioning on the previous window's text, the language fixed, no VAD filter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from polyvox.frontends.whisper import (BASE_BYTES, BASE_PARTS, BASE_SHA256, MODEL_FILES, SIDE_FILES, STAMP,  # noqa: F401
                                       WHISPER_RATE, WhisperModelError, assemble_base_model, base_model_folder,
                                       cache_root, check_model_folder, folder_identity, load_model, model_folder,
                                       model_sha256, shipped_parts, whisper_model_folder)

# faster-whisper's transcribe() arguments. temperature=0.0 alone: no fallback; without_timestamps:
# a sentence-long take needs no segment times, and timestamp tokens cost decoding steps.
DECODING = {"beam_size": 1, "best_of": 1, "temperature": 0.0, "condition_on_previous_text": False,
            "without_timestamps": True, "vad_filter": False, "initial_prompt": None}


def transcribe(signal: np.ndarray, rate: int, folder: Path, language: str, threads: int = 1) -> str:
    """Mono float audio in [-1, 1] → the words Whisper heard."""
    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    if rate != WHISPER_RATE:
        import librosa

        signal = librosa.resample(signal, orig_sr=rate, target_sr=WHISPER_RATE, res_type="soxr_hq")
    if not signal.size:
        return ""
    segments, _ = load_model(folder, threads).transcribe(np.clip(signal, -1.0, 1.0), language=language, **DECODING)
    return " ".join(segment.text.strip() for segment in segments).strip()
