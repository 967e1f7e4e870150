"""Train/val/test splits with no prompt leakage.

Every take of one prompt text falls in one split: rows are grouped by their spoken-form prompt
(lower-case words, punctuation dropped), and each group's split is drawn from a hash of the seed
and the group alone. So the assignment is deterministic, and adding recordings never moves an
existing prompt to another split (the test set stays the test set as a corpus grows).
"""

from __future__ import annotations

import hashlib

from polyvox.config import SplitSection
from polyvox.text.normalize import words_for_scoring

SPLITS = ("train", "val", "test")


def prompt_group(text: str) -> str:
    return " ".join(words_for_scoring(text))


def _draw(seed: int, group: str) -> float:
    digest = hashlib.sha256(f"{seed}\x00{group}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(texts: list[str], cfg: SplitSection, seed: int) -> list[str]:
    """The split of each row, from its text."""
    if cfg.val + cfg.test >= 1:
        raise ValueError(f"features.splits: val {cfg.val} + test {cfg.test} leaves nothing to train on")
    groups = [prompt_group(text) for text in texts]
    draws = {group: _draw(seed, group) for group in set(groups)}
    split_of = {g: "test" if u < cfg.test else "val" if u < cfg.test + cfg.val else "train" for g, u in draws.items()}
    # A small corpus may draw no group for a requested split: give it the lowest-drawn training group.
    if len(draws) >= 3:
        for split, share in (("test", cfg.test), ("val", cfg.val)):
            if share > 0 and split not in split_of.values():
                candidates = sorted((u, g) for g, u in draws.items() if split_of[g] == "train")
                if len(candidates) > 1:
                    split_of[candidates[0][1]] = split
    return [split_of[group] for group in groups]
