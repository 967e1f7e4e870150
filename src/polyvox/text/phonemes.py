"""Phonemes through phonemizer + espeak-ng, with a grapheme fallback when espeak-ng is absent.

The phoneme string separates phones by spaces and words by `` | ``, keeping punctuation, so the
text encoder sees pauses. ``backend_name`` records which front-end produced a row, so a model
never mixes the two inventories unknowingly.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

log = logging.getLogger(__name__)

WORD_SEPARATOR = " | "
# espeak-ng is one C library with global state: concurrent calls (the HTTP service's worker threads)
# mix up each other's lines ("number of lines in input and output must be equal"). One at a time.
_ESPEAK_LOCK = threading.Lock()


@lru_cache(maxsize=4)
def _espeak(language: str):
    from phonemizer.backend import EspeakBackend

    # phonemizer warns when espeak splits or joins words ("forty-two"); we keep no word alignment,
    # so that is not a problem here, only noise.
    quiet = logging.getLogger("polyvox.text.phonemizer")
    quiet.setLevel(logging.ERROR)
    return EspeakBackend(language, preserve_punctuation=True, with_stress=True, language_switch="remove-flags",
                         logger=quiet)


def espeak_available(language: str = "en-us") -> bool:
    try:
        _espeak(language)
    except RuntimeError:  # phonemizer raises RuntimeError when espeak-ng is not installed
        return False
    return True


def espeak_ipa(text: str, language: str) -> str:
    """espeak-ng's IPA for ``text`` as Piper voices read it: stressed, punctuation kept, phones
    not separated, words by one space. Raises RuntimeError when espeak-ng is not installed."""
    from phonemizer.separator import Separator

    with _ESPEAK_LOCK:
        phones = _espeak(language).phonemize([text], separator=Separator(phone="", word=" ", syllable=""),
                                             strip=True, njobs=1)
    return re.sub(r"\s+", " ", phones[0]).strip()


def graphemes(text: str) -> str:
    """The fallback inventory: lower-case letters and punctuation, words separated as for phones."""
    words = re.findall(r"[\w']+|[.,!?;:]", text.lower())
    return WORD_SEPARATOR.join(" ".join(word) for word in words)


def phonemize(texts: list[str], language: str, backend: str) -> tuple[list[str], str]:
    """Phonemes for each text, and the name of the front-end that made them (espeak | graphemes)."""
    if backend == "espeak":
        if espeak_available(language):
            from phonemizer.separator import Separator

            separator = Separator(phone=" ", word=WORD_SEPARATOR, syllable="")
            with _ESPEAK_LOCK:
                phones = _espeak(language).phonemize(texts, separator=separator, strip=True, njobs=1)
            return [re.sub(r"\s+", " ", p).strip() for p in phones], "espeak"
        log.warning("espeak-ng is not installed: falling back to graphemes (install the Debian package espeak-ng)")
    return [graphemes(text) for text in texts], "graphemes"
