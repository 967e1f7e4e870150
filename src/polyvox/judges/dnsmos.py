"""Naturalness: DNSMOS P.835 (speechmos; its ONNX models ship in the package)."""

from __future__ import annotations

import numpy as np

from polyvox.judges.pocketsphinx import ASR_RATE


def dnsmos(signal: np.ndarray, rate: int) -> dict[str, float]:
    """DNSMOS P.835 (signal, background, overall) and P.808 MOS of one utterance, at 16 kHz."""
    import librosa
    from speechmos import dnsmos as model

    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    if rate != ASR_RATE:
        signal = librosa.resample(signal, orig_sr=rate, target_sr=ASR_RATE, res_type="soxr_hq")
    peak = float(np.abs(signal).max()) if signal.size else 0.0
    if peak > 1.0:
        signal = signal / peak
    scores = model.run(signal, sr=ASR_RATE)
    return {"mos_ovrl": float(scores["ovrl_mos"]), "mos_sig": float(scores["sig_mos"]),
            "mos_bak": float(scores["bak_mos"]), "mos_p808": float(scores["p808_mos"])}
