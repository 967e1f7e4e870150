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
- :func:`asr_scores`: what a judge (:mod:`polyvox.judges`: Whisper, or pocketsphinx) heard, against
  the reference text, with one normalisation for both texts.
- :class:`SpeakerEncoder`: resemblyzer d-vectors (its weights ship in the package), cosine
  similarity to a speaker's centroid.
- :func:`dnsmos`: DNSMOS P.835 (speechmos; its ONNX models ship in the package) overall MOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyvox.judges import Judge, recognize
from polyvox.text.normalize import words_for_scoring
from polyvox.validate.asr import ASR_RATE, edit_distance

CEPSTRA = 25  # c0..c24; c0 dropped in the distance
MCD_SCALE = 10.0 / np.log(10.0) * np.sqrt(2.0)
CENTS_PER_LN = 1200.0 / np.log(2.0)


@dataclass(frozen=True)
class Analysis:
    cepstra: np.ndarray  # (CEPSTRA, frames)
    f0: np.ndarray  # (frames,) Hz, 0 where unvoiced


def analyse(signal: np.ndarray, rate: int, f0_min: float = 65.0, f0_max: float = 600.0, sample_rate: int = 22050,
            n_fft: int = 1024, hop: int = 256, n_mels: int = 80, f0_resolution: float = 0.1) -> Analysis:
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


@dataclass(frozen=True)
class AsrScore:
    hypothesis: str
    words: int  # reference words
    word_errors: int
    characters: int
    character_errors: int

    @property
    def wer(self) -> float:
        return self.word_errors / max(1, self.words)

    @property
    def cer(self) -> float:
        return self.character_errors / max(1, self.characters)


def asr_scores(signal: np.ndarray, rate: int, reference_text: str, judge: Judge) -> AsrScore:
    hypothesis = recognize(np.asarray(signal, dtype=np.float32), rate, judge)
    ref_words, hyp_words = words_for_scoring(reference_text), words_for_scoring(hypothesis)
    ref_chars, hyp_chars = " ".join(ref_words), " ".join(hyp_words)
    return AsrScore(hypothesis=hypothesis, words=len(ref_words), word_errors=edit_distance(ref_words, hyp_words),
                    characters=len(ref_chars), character_errors=edit_distance(ref_chars, hyp_chars))


def corpus_error_rates(scores: list[AsrScore]) -> dict[str, float]:
    """Corpus-level WER/CER: total edits over total reference words/characters."""
    return {"wer": sum(s.word_errors for s in scores) / max(1, sum(s.words for s in scores)),
            "cer": sum(s.character_errors for s in scores) / max(1, sum(s.characters for s in scores))}


class SpeakerEncoder:
    """resemblyzer's d-vector encoder (GE2E, 256-d, unit norm), loaded once."""

    def __init__(self, device: str = "cpu"):
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device, verbose=False)

    def embed(self, signal: np.ndarray, rate: int) -> np.ndarray:
        from resemblyzer import preprocess_wav

        return self.encoder.embed_utterance(preprocess_wav(np.asarray(signal, dtype=np.float32), source_sr=rate))

    @staticmethod
    def centroid(embeddings: list[np.ndarray]) -> np.ndarray:
        mean = np.mean(embeddings, axis=0)
        return mean / np.linalg.norm(mean)

    @staticmethod
    def similarity(embedding: np.ndarray, centroid: np.ndarray) -> float:
        return float(embedding @ centroid / (np.linalg.norm(embedding) * np.linalg.norm(centroid)))


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
