"""Speaker similarity: resemblyzer d-vectors (its weights ship in the package), cosine similarity
to a speaker's centroid."""

from __future__ import annotations

import numpy as np


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
