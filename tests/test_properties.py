"""Property-based tests (hypothesis): the corpus readers and the text normaliser take arbitrary
bytes, encodings and line shapes without crashing and without losing a row."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polyvox.corpus.readers import read_ljspeech, read_manifest_corpus
from polyvox.corpus.schema import CorpusError
from polyvox.text.normalize import normalize_text, words_for_scoring

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Lines as a corpus may really hold them: text in any script, '|' and ',' and quotes, stray
# control characters, bytes in other encodings (Latin-1, UTF-16 fragments, lone continuation bytes).
ENCODINGS = ("utf-8", "latin-1", "utf-16-le", "cp1252")
text_pieces = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
encoded_pieces = st.builds(lambda text, encoding: text.encode(encoding, errors="replace"), text_pieces,
                           st.sampled_from(ENCODINGS))
line_bytes = st.lists(st.one_of(encoded_pieces, st.binary(max_size=12), st.sampled_from([b"|", b"||", b",", b'"'])),
                      max_size=6).map(b"".join)


def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="polyvox-prop-"))


@SETTINGS
@given(lines=st.lists(line_bytes, max_size=12), ending=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_ljspeech_reader_keeps_every_line(lines, ending):
    root = _folder()
    try:
        (root / "wavs").mkdir()
        (root / "metadata.csv").write_bytes(ending.join(lines))
        rows = read_ljspeech(root, speaker="s")
        # one row per non-blank physical line, in order, each pointing back at its line
        expected = [number for number, raw in enumerate((root / "metadata.csv").read_bytes().splitlines(), start=1)
                    if raw.strip()]
        assert [row.source_line for row in rows] == expected
        for row in rows:
            assert row.id and isinstance(row.id, str)
            assert row.audio is None and row.parse_error  # no audio exists, so every row says why
    finally:
        shutil.rmtree(root)


@SETTINGS
@given(data=st.binary(max_size=400))
def test_manifest_reader_survives_arbitrary_bytes(data):
    root = _folder()
    try:
        (root / "manifest.csv").write_bytes(b"id,speaker,text,audio\n" + data)
        rows = read_manifest_corpus(root / "manifest.csv")
        for row in rows:  # nothing on disk: every row is kept with its reason, none is accepted
            assert row.parse_error and row.source_file == "manifest.csv"
    except CorpusError as exc:  # only a file that cannot be read at all may stop the reader, and it names it
        assert "manifest.csv" in str(exc)
    finally:
        shutil.rmtree(root)


cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@SETTINGS
@given(records=st.lists(st.tuples(cell, cell, cell, cell), min_size=1, max_size=10),
       encoding_bom=st.booleans())
def test_manifest_reader_keeps_every_record(records, encoding_bom):
    """Any cell content (commas, quotes, newlines inside quotes, any script) written as proper CSV
    comes back as one row per record, in order, with its id (or a placeholder naming the row)."""
    root = _folder()
    try:
        buffer = io.StringIO()
        writer = csv.writer(buffer)  # "\r\n" rows: a cell holding \r or \n gets quoted
        writer.writerow(["id", "speaker", "text", "audio"])
        kept = [r for r in records if any(value.strip() for value in r)]  # an all-blank record is no row
        writer.writerows(records)
        (root / "manifest.csv").write_bytes((b"\xef\xbb\xbf" if encoding_bom else b"") + buffer.getvalue().encode())
        rows = read_manifest_corpus(root / "manifest.csv")
        assert len(rows) == len(kept)
        for row, record in zip(rows, kept):
            assert row.id == (record[0].strip() or f"manifest.csv:{row.source_line}")
            assert row.text == record[2].strip()
            assert row.parse_error  # no audio file exists for any of them
    finally:
        shutil.rmtree(root)


@SETTINGS
@given(text=st.text(max_size=200))
def test_normaliser_never_crashes(text):
    spoken = normalize_text(text)
    assert isinstance(spoken, str) and spoken == spoken.strip()
    assert all(ch.isprintable() for ch in spoken)
    assert all(isinstance(word, str) and word for word in words_for_scoring(text))


@SETTINGS
@given(number=st.integers(min_value=0, max_value=10**12), prefix=st.sampled_from(["", "$", "about ", "No. "]),
       suffix=st.sampled_from(["", ".", "%", " kg", "th"]))
def test_normaliser_spells_out_ascii_numbers(number, prefix, suffix):
    spoken = normalize_text(f"{prefix}{number:,}{suffix}" if number % 2 else f"{prefix}{number}{suffix}")
    assert not any(ch.isdigit() for ch in spoken), spoken


@pytest.mark.parametrize("text", ["", "   ", "\x00\x01", "\u200b", "1" * 60, "$" * 5, "..."])
def test_normaliser_edge_cases(text):
    assert isinstance(normalize_text(text), str)
