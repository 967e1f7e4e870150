"""Objective speech metrics, each computed from audio.

- :func:`mel_cepstral_distortion`: MCD in dB between two renditions of one sentence, after DTW.
  Cepstra are the DCT-II of the natural-log *magnitude* mel spectrum (80 Slaney mel bands,
  1024-point FFT, 256 hop at 22.05 kHz) scaled by 1/(2·80) as a real cepstrum is, coefficients
  c1..c24 (c0, the level, excluded),
  so ``10 / ln 10 · sqrt(2 · Σ (c − c')²)`` averaged over the DTW path; leading/trailing silence
  is trimmed first. Mel-filterbank cepstra, not SPTK all-pass mel-cepstra: figures compare with
  each other, and only roughly with papers that use SPTK's ``mcep``.
- :func:`log_f0_rmse`: RMSE of natural-log F0 (pYIN) over frames voiced in both, on the same
  DTW path; reported in cents too (1 ln-unit = 1731 cents).

What needs no reference rendition (what an ASR heard, speaker similarity, DNSMOS) is a judge's,
in :mod:`polyvox.judges`, which validate and the ensemble's rerank use too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CEPSTRA = 25  # c0..c24; c0 dropped in the distance
MCD_SCALE = 10.0 / np.log(10.0) * np.sqrt(2.0)
CENTS_PER_LN = 1200.0 / np.log(2.0)


@dataclass(frozen=True)
class Analysis:
    cepstra: np.ndarray  # (CEPSTRA, frames)
    f0: np.ndarray  # (frames,) Hz, 0 where unvoiced


def analyse(signal: np.ndarray, rate: int, f0_min: float, f0_max: float, f0_resolution: float, sample_rate: int = 22050,
            n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> Analysis:
    """Mel cepstra and F0 on one frame grid, after resampling to ``sample_rate`` and trimming silence."""
    import librosa
    import scipy.fft

    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    if rate != sample_rate:
        signal = librosa.resample(signal, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    trimmed, _ = librosa.effects.trim(signal, top_db=40, frame_length=n_fft, hop_length=hop)
    if len(trimmed) >= n_fft:
        signal = trimmed
    mel = librosa.feature.melspectrogram(y=signal, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=n_mels,
                                         power=1.0, fmax=sample_rate / 2)
    # DCT-II scaled by 1/(2·n_mels): the real cepstrum of the evenly extended log spectrum, the
    # convention MCD's 10/ln10·sqrt(2·Σ) constant assumes (an orthonormal DCT would inflate it ~13x).
    cepstra = scipy.fft.dct(np.log(np.maximum(mel, 1e-5)), type=2, axis=0)[:CEPSTRA] / (2 * n_mels)
    f0, _, _ = librosa.pyin(signal.astype(np.float64), fmin=f0_min, fmax=f0_max, sr=sample_rate, frame_length=n_fft,
                            hop_length=hop, resolution=f0_resolution)
    frames = min(cepstra.shape[1], len(f0))
    return Analysis(cepstra=cepstra[:, :frames], f0=np.nan_to_num(f0[:frames], nan=0.0))


def dtw_path(a: Analysis, b: Analysis) -> np.ndarray:
    """(steps, 2) frame pairs of the cheapest monotonic alignment on c1..c24 (Euclidean)."""
    import librosa

    _, path = librosa.sequence.dtw(X=a.cepstra[1:], Y=b.cepstra[1:], metric="euclidean")
    return path[::-1]


def mel_cepstral_distortion(a: Analysis, b: Analysis, path: np.ndarray | None = None) -> float:
    path = dtw_path(a, b) if path is None else path
    diff = a.cepstra[1:, path[:, 0]] - b.cepstra[1:, path[:, 1]]
    return float(np.mean(MCD_SCALE * np.sqrt((diff ** 2).sum(axis=0))))


def log_f0_rmse(a: Analysis, b: Analysis, path: np.ndarray | None = None) -> float | None:
    """ln-F0 RMSE over aligned frames voiced in both; None when no frame is."""
    path = dtw_path(a, b) if path is None else path
    fa, fb = a.f0[path[:, 0]], b.f0[path[:, 1]]
    both = (fa > 0) & (fb > 0)
    if not both.any():
        return None
    return float(np.sqrt(np.mean((np.log(fa[both]) - np.log(fb[both])) ** 2)))
