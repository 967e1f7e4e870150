"""The phoneme inventory: phoneme strings from ``clean`` → token ids, and back.

Phones are space-separated with `` | `` between words (see polyvox.text.phonemes); punctuation
that espeak attaches to a phone ("ɪ,") becomes its own token, so pauses are explicit.
"""

from __future__ import annotations

import re

PAD, UNKNOWN, WORD = "<pad>", "<unk>", "|"
_PUNCT = re.compile(r"^(.*?)([.,!?;:]+)$")


def tokenize(phonemes: str) -> list[str]:
    tokens: list[str] = []
    for piece in phonemes.split():
        match = _PUNCT.match(piece)
        if match and match.group(1):
            tokens += [match.group(1), *match.group(2)]
        elif match:
            tokens += list(match.group(2))
        else:
            tokens.append(piece)
    return tokens


class Vocabulary:
    def __init__(self, symbols: list[str]):
        self.symbols = [PAD, UNKNOWN, *[s for s in symbols if s not in (PAD, UNKNOWN)]]
        self.index = {symbol: i for i, symbol in enumerate(self.symbols)}

    @classmethod
    def build(cls, phoneme_strings: list[str]) -> "Vocabulary":
        return cls(sorted({token for text in phoneme_strings for token in tokenize(text)}))

    def encode(self, phonemes: str) -> list[int]:
        return [self.index.get(token, 1) for token in tokenize(phonemes)]

    def __len__(self) -> int:
        return len(self.symbols)
