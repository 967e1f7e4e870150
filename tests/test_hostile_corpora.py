"""Hostile corpora (issue 20): links out of the corpus, FIFOs, names too long for the filesystem, a
transcript that is a folder, duplicate ids, and the Hugging Face Parquet layout. No row crashes a
reader or hangs it; a file outside the corpus is never read (so never copied into data/raw, nor
pushed with it); every refused file is a row with its reason."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from polyvox.corpus.prepare import ingest
from polyvox.corpus.readers import read_corpus

import corpora


def _lj(root, files, lines: list[str]):
    (root / "wavs").mkdir(parents=True)
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def test_links_out_of_the_corpus_are_refused_and_links_inside_it_read(tmp_path, kathleen_files):
    secret = tmp_path / "home" / "secret.wav"
    secret.parent.mkdir()
    shutil.copy(kathleen_files[0], secret)
    root = _lj(tmp_path / "lj", kathleen_files, ["good|Fine.", "escape|Out.", "inside|In.", "rooted|Root."])
    shutil.copy(kathleen_files[1], root / "wavs" / "good.wav")
    os.symlink(secret, root / "wavs" / "escape.wav")  # audio/a.wav -> ~/secret
    os.symlink(root / "wavs" / "good.wav", root / "wavs" / "inside.wav")  # a link within the corpus: fine
    (root / "wavs" / "rooted.wav").mkdir()  # not a file at all
    _, _, rows = read_corpus(root)
    by_id = {row.id: row for row in rows}
    assert by_id["good"].audio is not None and by_id["good"].parse_error is None
    assert by_id["inside"].audio is not None and by_id["inside"].parse_error is None
    assert by_id["escape"].audio is None and "resolves outside the corpus" in by_id["escape"].parse_error
    assert by_id["rooted"].audio is None and "not a regular file" in by_id["rooted"].parse_error
    records, _, _ = ingest(rows, root, tmp_path / "raw", workers=1)
    copied = [p for p in (tmp_path / "raw").rglob("*") if p.is_file() and p.suffix == ".wav"]
    assert len(copied) == 2 and not any(p.read_bytes() == secret.read_bytes() for p in copied)


def test_a_folder_link_to_the_root_of_the_filesystem_reads_nothing_outside(tmp_path, kathleen_files):
    root = tmp_path / "m"
    root.mkdir()
    os.symlink("/", root / "everything")
    (root / "manifest.csv").write_text("id,speaker,text,audio,image\n"
                                       "a,s,Hello.,everything/etc/passwd,\n"
                                       "b,s,Hello.,ok.wav,everything/etc/hostname\n")
    shutil.copy(kathleen_files[0], root / "ok.wav")
    _, _, rows = read_corpus(root)
    assert rows[0].audio is None and "outside the corpus" in rows[0].parse_error
    assert rows[1].audio is not None and rows[1].image is None and "image: " in rows[1].parse_error


def test_a_fifo_never_blocks_the_reader(tmp_path, kathleen_files):
    root = _lj(tmp_path / "lj", kathleen_files, ["x|A pipe.", "y|A file."])
    os.mkfifo(root / "wavs" / "x.wav")  # opening it would wait for a writer forever
    shutil.copy(kathleen_files[0], root / "wavs" / "y.wav")
    _, _, rows = read_corpus(root)
    assert rows[0].audio is None and "not a regular file" in rows[0].parse_error
    records, _, _ = ingest(rows, root, tmp_path / "raw", workers=1)
    assert records[0]["audio"] is None and records[1]["audio"] is not None


def test_a_name_too_long_and_a_transcript_that_is_a_folder_are_rows(tmp_path, kathleen_files):
    root = tmp_path / "m"
    root.mkdir()
    (root / "manifest.csv").write_text(f"id,speaker,text,audio\na,s,Hi.,{'x' * 300}.wav\n")
    _, _, rows = read_corpus(root)
    assert rows[0].audio is None and "too long" in rows[0].parse_error.lower()

    vctk = corpora.vctk(tmp_path / "vctk", kathleen_files)
    speaker = next(p.name for p in (vctk / "txt").iterdir())
    (vctk / "txt" / speaker / "odd.txt").mkdir()  # a folder named like a transcript
    _, _, rows = read_corpus(vctk)
    odd = next(row for row in rows if row.id == "odd")
    assert odd.text is None and "cannot read the transcript" in odd.parse_error


def test_ids_that_collide_on_disk_get_a_file_each(tmp_path, kathleen_files):
    root = _lj(tmp_path / "lj", kathleen_files, ["a.2|One.", "a|Two.", "a|Three."])
    for name, source in (("a.2.wav", kathleen_files[0]), ("a.wav", kathleen_files[1])):
        shutil.copy(source, root / "wavs" / name)
    _, _, rows = read_corpus(root)
    records, _, _ = ingest(rows, root, tmp_path / "raw", workers=1)
    names = [record["audio"] for record in records]
    assert len(set(names)) == 3, names  # the third no longer overwrites the first's file
    assert all((tmp_path / "raw" / name).is_file() for name in names)


def test_the_hugging_face_parquet_layout_is_read(tmp_path, kathleen_files):
    root = tmp_path / "hf"
    root.mkdir()
    embedded = kathleen_files[0].read_bytes()
    shutil.copy(kathleen_files[1], root / "beside.flac")
    audio = pa.array([{"bytes": embedded, "path": "clip0.flac"}, {"bytes": None, "path": "beside.flac"},
                      {"bytes": None, "path": "../outside.flac"}],
                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"id": ["u0", "u1", "u2"], "speaker": ["s"] * 3, "text": ["One.", "Two.", "Three."],
                             "audio": audio}), root / "manifest.parquet")
    _, _, rows = read_corpus(root)
    assert rows[0].audio_bytes == embedded and rows[0].parse_error is None
    assert rows[1].audio == root / "beside.flac" and rows[1].parse_error is None
    assert rows[2].audio is None and "escapes the corpus" in rows[2].parse_error
    records, _, _ = ingest(rows, root, tmp_path / "raw", workers=1)
    assert (tmp_path / "raw" / records[0]["audio"]).read_bytes() == embedded
    assert records[0]["duration"] and records[0]["duration"] > 0.5 and records[0]["source_hash"]
    assert "embedded clip0.flac" in records[0]["source_audio"]
