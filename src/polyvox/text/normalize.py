"""English text normalisation for TTS: numbers, dates, times, money, abbreviations, symbols → words.

``normalize_text`` is used for training transcripts (clean) and, later, for ASR scoring, so that
"42", "forty-two" and "Forty two" compare equal. Rules run in a fixed order; each is a regular
expression with a small function, so adding a case means adding one rule.
"""

from __future__ import annotations

import re
import unicodedata

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]
ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                     "nine": "ninth", "twelve": "twelfth"}

ABBREVIATIONS = {
    "Dr.": "doctor", "Mr.": "mister", "Mrs.": "missus", "Ms.": "miz", "Prof.": "professor", "Jr.": "junior",
    "Sr.": "senior", "Mt.": "mount", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "Ave.": "avenue", "Rd.": "road", "Capt.": "captain",
    "Gen.": "general", "Lt.": "lieutenant", "Sgt.": "sergeant", "Co.": "company", "Inc.": "incorporated",
}
UNITS = {"km": "kilometres", "kg": "kilograms", "cm": "centimetres", "mm": "millimetres", "m": "metres",
         "g": "grams", "mph": "miles per hour", "kph": "kilometres per hour", "ml": "millilitres", "l": "litres"}
CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
              "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "sen", "sen")}
SYMBOLS = {"&": " and ", "%": " percent", "+": " plus ", "@": " at ", "=": " equals ", "#": " number ",
           "°": " degrees"}
QUOTES = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - ", "\u2026": "..."}


def cardinal(n: int) -> str:
    if n < 0:
        return "minus " + cardinal(-n)
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + cardinal(rest))
    for scale, name in SCALES:
        if n >= scale:
            rest = n % scale
            return cardinal(n // scale) + " " + name + ("" if rest == 0 else " " + cardinal(rest))
    raise AssertionError(n)


def ordinal(n: int) -> str:
    words = cardinal(n)
    head, sep, last = words.rpartition(" " if "-" not in words.split(" ")[-1] else "-")
    if last in ORDINAL_IRREGULAR:
        last = ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def year(n: int) -> str:
    if 2000 <= n <= 2009:
        return cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return cardinal(high) + " " + ("oh " + ONES[low] if low < 10 else cardinal(low))


def _digits(text: str) -> str:
    return " ".join(ONES[int(d)] for d in text)


def _money(match: re.Match) -> str:
    symbol, whole, fraction, scale = match.group(1), match.group(2).replace(",", ""), match.group(3), match.group(4)
    one, many, sub_one, sub_many = CURRENCIES[symbol]
    if scale:  # "$2.5 million" -> "two point five million dollars"
        number = cardinal(int(whole)) + (" point " + _digits(fraction) if fraction else "")
        return f"{number} {scale} {many}"
    words = f"{cardinal(int(whole))} {one if int(whole) == 1 else many}"
    if fraction and int(fraction.ljust(2, "0")[:2]):
        cents = int(fraction.ljust(2, "0")[:2])
        words += f" {cardinal(cents)} {sub_one if cents == 1 else sub_many}"
    return words


def _time(match: re.Match) -> str:
    hour, minute, suffix = int(match.group(1)), int(match.group(2)), match.group(3)
    if minute == 0:
        words = cardinal(hour) + (" o'clock" if not suffix else "")
    elif minute < 10:
        words = f"{cardinal(hour)} oh {ONES[minute]}"
    else:
        words = f"{cardinal(hour)} {cardinal(minute)}"
    if suffix:
        words += " " + " ".join(ch for ch in suffix.lower() if ch.isalpha())
    return words


def _number(match: re.Match) -> str:
    text = match.group(0)
    if "." in text:
        whole, fraction = text.split(".")
        return cardinal(int(whole.replace(",", ""))) + " point " + _digits(fraction)
    value = int(text.replace(",", ""))
    if "," not in text and len(text) == 4 and 1100 <= value <= 2099:
        return year(value)
    if len(text) > 1 and text.startswith("0"):
        return _digits(text)
    return cardinal(value)


def _saint_or_street(match: re.Match) -> str:
    # "St. Mary" is a saint; "Elm St." (then anything else) is a street.
    return "saint " if match.group(2)[:1].isupper() else "street" + match.group(1)


RULES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"\b(\d+)\s?-\s?(?=\d)"), lambda m: _digits(m.group(1)) + " "),  # 4-4-9-1-8, digit by digit
    (re.compile(r"([$£€¥])\s?(\d[\d,]*)(?:\.(\d+))?(?:\s(million|billion|thousand))?"), _money),
    (re.compile(r"\b(\d{1,2}):(\d{2})\s?([ap]\.?\s?m\.?)?(?=\W|$)", re.IGNORECASE), _time),
    (re.compile(r"\b(\d{1,2})\s?([ap])\.\s?m\.", re.IGNORECASE), lambda m: f"{cardinal(int(m.group(1)))} {m.group(2).lower()} m"),
    (re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE), lambda m: ordinal(int(m.group(1)))),
    (re.compile(r"\b(\d+(?:\.\d+)?)\s?(" + "|".join(sorted(UNITS, key=len, reverse=True)) + r")\b"),
     lambda m: f"{m.group(1)} {UNITS[m.group(2)]}"),
    (re.compile(r"\bSt\.(\s?)(?=(\w?))"), _saint_or_street),
    (re.compile(r"\bNo\.\s?(?=\d)"), lambda m: "number "),
]
NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
ABBREVIATION = re.compile("|".join(rf"(?<!\w){re.escape(a)}" for a in sorted(ABBREVIATIONS, key=len, reverse=True)))
SPACES = re.compile(r"\s+")
SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")


def normalize_text(text: str) -> str:
    """Spoken-form text: digits, symbols and abbreviations as words; punctuation kept for prosody."""
    original = text
    text = unicodedata.normalize("NFKC", text)
    text = "".join(QUOTES.get(ch, ch) for ch in text)
    text = ABBREVIATION.sub(lambda m: ABBREVIATIONS[m.group(0)], text)
    for pattern, replace in RULES:
        text = pattern.sub(replace, text)
    text = NUMBER.sub(_number, text)
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = SPACE_BEFORE_PUNCT.sub(r"\1", SPACES.sub(" ", text)).strip()
    # "... at 8 p.m." and "..., etc." lose their full stop to the expansion: give it back.
    if original.rstrip().endswith(".") and text and text[-1] not in ".!?":
        text += "."
    return text


def words_for_scoring(text: str) -> list[str]:
    """Lower-case words without punctuation, for WER/CER: one normalisation for both sides."""
    spoken = normalize_text(text).lower().replace("-", " ")
    return re.findall(r"[a-z']+", spoken)
