"""Which letters a voice's text front-end can read: a text in another script is refused, not read
out as letter names ("Привет" under en-us became six "Cyrillic letter" names, "你好" four times
"Chinese letter")."""

from __future__ import annotations

import unicodedata

# The script of each language's own letters where it is not Latin; Latin is always allowed too
# (names, brands and abbreviations appear in any text). Languages not listed read Latin only.
NATIVE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: frozenset({"CYRILLIC"}) for code in ("ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "tt", "ba")},
    **{code: frozenset({"CJK"}) for code in ("zh", "cmn", "yue", "hak")},
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA"}), "ko": frozenset({"HANGUL"}), "el": frozenset({"GREEK"}),
    **{code: frozenset({"ARABIC"}) for code in ("ar", "fa", "ur", "ps")}, "he": frozenset({"HEBREW"}),
    **{code: frozenset({"DEVANAGARI"}) for code in ("hi", "mr", "ne")}, "th": frozenset({"THAI"}),
    "ka": frozenset({"GEORGIAN"}), "hy": frozenset({"ARMENIAN"}), "bn": frozenset({"BENGALI"}),
    "ta": frozenset({"TAMIL"}),
}


class UnreadableText(ValueError):
    """Letters of a script the voice's language does not use."""


def script(letter: str) -> str:
    """The Unicode script of a letter as its name begins ("LATIN", "CYRILLIC", "CJK", …)."""
    name = unicodedata.name(letter, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def check_readable(text: str, language: str) -> None:
    """Raise :class:`UnreadableText` naming the first foreign word when ``text`` holds letters
    outside the scripts of ``language`` (an espeak code such as en-us; its part before '-')."""
    allowed = {"LATIN"} | NATIVE_SCRIPTS.get(language.split("-")[0].lower(), frozenset())
    for word in text.split():
        foreign = sorted({script(ch) for ch in word if ch.isalpha() and script(ch) not in allowed})
        if foreign:
            shown = word[:40] + ("…" if len(word) > 40 else "")
            raise UnreadableText(f"the voice reads {language} ({', '.join(sorted(allowed)).lower()} letters) and cannot "
                                 f"read {shown!r} ({', '.join(foreign).lower()} letters): write it out in its "
                                 f"language's letters or use a voice of that language")
