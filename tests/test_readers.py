from __future__ import annotations

import pytest

from polyvox.corpus.readers import detect_format, read_corpus, read_ljspeech, read_manifest_corpus, read_vctk
from polyvox.corpus.schema import CorpusError

import corpora


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "avatar.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_kathleen_as_ljspeech(kathleen):
    fmt, root, rows = read_corpus(kathleen)
    assert fmt == "ljspeech" and root == kathleen
    assert len(rows) == 917
    assert {row.speaker for row in rows} == {"kathleen-a"}
    assert all(row.parse_error is None for row in rows)
    assert all(row.audio is not None and row.audio.suffix == ".flac" for row in rows)
    assert rows[0].text == "Author of the danger trail, Philip Steels, etc."
    assert all(row.normalized_text for row in rows)


def test_ljspeech_carries_every_bad_row(tmp_path, kathleen_files):
    root = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    rows = read_ljspeech(root, speaker="kat")
    assert len(rows) == 8  # 3 good + 5 bad lines; the blank line is not a row
    good, bad = rows[:3], rows[3:]
    assert all(row.parse_error is None and row.audio is not None for row in good)
    assert all(row.parse_error for row in bad)
    errors = [row.parse_error for row in bad]
    assert "expected 2 or 3" in errors[0] and "found 1" in errors[0]
    assert "found 4" in errors[1]
    assert "not valid UTF-8" in errors[2] and "line 6" in errors[2]
    assert bad[2].audio is not None  # a bad-encoding row still points at its audio
    assert "audio file not found" in errors[3]
    assert "not a safe file name" in errors[4] and bad[4].audio is None
    assert [row.source_line for row in rows] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_vctk_tree(tmp_path, kathleen_files):
    root = corpora.vctk(tmp_path / "vctk", kathleen_files)
    assert detect_format(root) == "vctk"
    rows = read_vctk(root, mic="mic1")
    by_id = {row.id: row for row in rows}
    assert sorted(by_id) == ["p001_001", "p001_002", "p001_003", "p002_001", "p002_002", "p002_003", "p002_009"]
    assert by_id["p001_001"].audio.name == "p001_001_mic1.flac"
    assert by_id["p001_001"].text == "Sentence 1 of p001." and by_id["p001_001"].speaker == "p001"
    assert "no transcript" in by_id["p001_003"].parse_error and by_id["p001_003"].audio is not None
    assert "audio file not found" in by_id["p002_009"].parse_error
    assert sum(row.parse_error is None for row in rows) == 4
    assert read_vctk(root, mic="mic2")[0].audio.name == "p001_001_mic2.flac"


def test_manifest_csv_with_bad_rows(tmp_path, kathleen_files, image):
    path = corpora.manifest_csv(tmp_path / "m", kathleen_files, image)
    assert detect_format(path) == "manifest" and detect_format(path.parent) == "manifest"
    rows = read_manifest_corpus(path)
    assert len(rows) == 11
    good = rows[:4]
    assert all(row.parse_error is None for row in good)
    assert all(row.reference_audio is not None and row.image is not None for row in good)
    errors = {row.id: row.parse_error for row in rows[4:]}
    assert "audio file not found: clips/nope.flac" in errors["gone"]
    assert "escapes the corpus root" in errors["escape"]
    assert "escapes the corpus root" in errors["absolute"]
    assert "expected 6 fields, found 2" in errors["short"]
    assert "empty id" in errors["manifest.csv:10"]  # the id falls back to file:line
    assert "image file not found: nobody.png" in errors["badimage"]
    assert "not valid UTF-8" in errors["latin"]


def test_manifest_parquet(tmp_path, kathleen_files, image):
    path = corpora.manifest_parquet(tmp_path / "p", kathleen_files, image)
    fmt, root, rows = read_corpus(path)
    assert fmt == "manifest" and root == path.parent
    assert len(rows) == 5
    assert [row.parse_error is None for row in rows] == [True] * 4 + [False]


def test_manifest_missing_required_column(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("id,text,audio\nx,hello,x.wav\n")
    with pytest.raises(CorpusError, match=r"lacks required column\(s\) \['speaker'\]"):
        read_manifest_corpus(path)


def test_undetectable_and_missing_corpus(tmp_path):
    with pytest.raises(CorpusError, match="cannot tell the corpus format"):
        detect_format(tmp_path)
    with pytest.raises(CorpusError, match="corpus not found"):
        read_corpus(tmp_path / "nope")
    with pytest.raises(CorpusError, match="no metadata.csv"):
        read_corpus(tmp_path, "ljspeech")
