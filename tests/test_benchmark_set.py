"""The held-out benchmark sentences (benchmarks/heldout_sentences.txt) are what they promise: many,
varied, and in no corpus the project builds or trains on here."""

from __future__ import annotations

import csv
import re
import sys

import pytest

from polyvox.corpus.demo.build import load_prompts

from conftest import KATHLEEN, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from heldout import load_sentences  # noqa: E402


def _key(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _runs(text: str, n: int = 5) -> set[str]:
    """Every run of ``n`` consecutive words (the whole text when shorter)."""
    words = _key(text).split()
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def _overlaps(held_out: list[str], corpus: list[str]) -> list[str]:
    """Held-out sentences that a corpus text contains whole, or shares a run of five words with."""
    runs = set().union(*(_runs(text) for text in corpus))
    joined = " | ".join(_key(text) for text in corpus)
    return [text for text in held_out
            if _runs(text) & runs or re.search(rf"(^|[| ]){re.escape(_key(text))}($|[| ])", joined)]


def test_the_set_is_large_varied_and_stable():
    sentences = load_sentences()
    texts = [text for _, text in sentences]
    assert len(texts) >= 200 and len({_key(t) for t in texts}) == len(texts)
    assert [sid for sid, _ in sentences[:3]] == ["h001", "h002", "h003"]
    # append only: an id keeps its text, so figures of different versions stay comparable
    assert texts[0] == "Good evening, Mrs. Abernathy." and texts[248].startswith("The store received 300 new phones")
    assert sum(t.endswith("?") for t in texts) >= 30  # questions
    assert sum(bool(re.search(r"\d", t)) for t in texts) >= 20  # written numbers, times, money
    assert sum(len(t.split()) <= 3 for t in texts) >= 10 and sum(len(t.split()) >= 18 for t in texts) >= 10
    assert sum(bool(re.search(r"\b(Dr|Mr|Mrs)\. [A-Z]", t)) for t in texts) >= 3  # names with titles


def test_no_corpus_of_the_project_holds_a_benchmark_sentence():
    held_out = [text for _, text in load_sentences()]
    assert _overlaps(["The dentist said I should floss more often."], ["Dentist said I should floss more, she said."])
    assert _overlaps(["Good morning."], ["Good morning."]) and not _overlaps(["Good morning."], ["Good mornings."])
    assert not _overlaps(held_out, [prompt.text for prompt in load_prompts()])  # the demo and teacher corpora
    if KATHLEEN is None:
        pytest.skip("kathleen-a corpus not found: only the demo prompts were checked")
    with open(KATHLEEN / "metadata.csv", encoding="utf-8", newline="") as handle:
        arctic = [row[1] for row in csv.reader(handle, delimiter="|") if len(row) > 1]
    assert len(arctic) > 500 and not _overlaps(held_out, arctic)
