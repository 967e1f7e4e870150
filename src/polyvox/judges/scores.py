"""What a judge heard, counted: edit distance, WER and CER over one normalisation of both texts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyvox.judges import Judge, recognize
from polyvox.text.normalize import words_for_scoring


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
