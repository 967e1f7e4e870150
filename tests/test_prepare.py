from __future__ import annotations

import hashlib

import pyarrow.parquet as pq
import pytest

from polyvox.corpus.prepare import prepare
from polyvox.corpus.schema import MANIFEST_COLUMNS, read_manifest
from polyvox.workspace import Workspace

import corpora
from conftest import with_overrides
from stages import params_for


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_kathleen(kathleen, params, workspace):
    ws = Workspace(workspace)
    result = prepare(with_overrides(params, prepare={"corpus": kathleen}), ws)
    assert (result.rows, result.speakers, result.parse_errors, result.format) == (917, 1, 0, "ljspeech")
    assert 40 / 60 < result.hours < 50 / 60  # 45.9 minutes of audio
    table = read_manifest(ws.raw_manifest)
    assert table.column_names == list(MANIFEST_COLUMNS)
    rows = table.to_pylist()
    assert {row["sample_rate"] for row in rows} == {22050} and {row["channels"] for row in rows} == {1}
    first = rows[0]
    assert first["audio"] == "audio/kathleen-a/arctic_a0001_1592748574.flac"
    assert first["source_audio"] == "wavs/arctic_a0001_1592748574.flac"
    assert first["source_hash"] == digest(kathleen / first["source_audio"]) == digest(ws.raw / first["audio"])
    assert result.copied == 917

    before = ws.raw_manifest.read_bytes()
    again = prepare(with_overrides(params, prepare={"corpus": kathleen}), ws)
    assert (again.copied, again.reused) == (0, 917)
    assert ws.raw_manifest.read_bytes() == before


def test_prepare_carries_bad_rows_and_never_touches_sources(tmp_path, kathleen_files, params, workspace):
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files)
    sources = {p: digest(p) for p in corpus.rglob("*") if p.is_file()}
    ws = Workspace(workspace)
    result = prepare(with_overrides(params, prepare={"corpus": corpus, "speaker": "kat"}), ws)
    assert (result.rows, result.parse_errors) == (8, 5)
    rows = pq.read_table(ws.raw_manifest).to_pylist()
    assert [row["parse_error"] is None for row in rows] == [True] * 3 + [False] * 5
    # A row with a bad transcript but a real file keeps its audio, so validation can still probe it.
    assert rows[5]["audio"] and rows[5]["duration"] > 0 and "UTF-8" in rows[5]["parse_error"]
    assert rows[7]["audio"] is None and rows[7]["id"] == "../../etc/passwd"
    assert all(not p.name.startswith(".tmp-") for p in ws.raw.rglob("*"))
    assert {p: digest(p) for p in corpus.rglob("*") if p.is_file()} == sources


def test_prepare_copies_references_and_images_once(tmp_path, kathleen_files, params, workspace):
    from PIL import Image

    image = tmp_path / "avatar.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)
    corpus = corpora.manifest_csv(tmp_path / "m", kathleen_files, image, bad_rows=False)
    ws = Workspace(workspace)
    prepare(with_overrides(params, prepare={"corpus": corpus}), ws)
    rows = pq.read_table(ws.raw_manifest).to_pylist()
    assert len({row["image"] for row in rows}) == 1 and len(list((ws.raw / "images").iterdir())) == 1
    assert all((ws.raw / row["reference_audio"]).is_file() for row in rows)
    assert {row["speaker"] for row in rows} == {"kathleen", "kat2"}
    # Hashed once here, so later stages key their caches on these instead of hashing again.
    assert all(row["reference_hash"] == digest(ws.raw / row["reference_audio"]) for row in rows)
    assert all(row["image_hash"] == digest(image) for row in rows)

    from stages import run_stages

    results = run_stages(params_for(corpus), workspace, upto="features")
    # Four takes, each also another row's reference: four clean files and four feature files, not eight.
    assert results["clean"].audio_processed == 4 and results["features"].processed == 4
    index = pq.read_table(ws.features_index).to_pylist()
    assert all(row["reference_features"] for row in index) and len({row["image_features"] for row in index}) == 1


def test_prepare_removes_stale_copies(tmp_path, kathleen_files, params, workspace):
    ws = Workspace(workspace)
    big = corpora.ljspeech(tmp_path / "big", kathleen_files, bad_rows=False)
    prepare(with_overrides(params, prepare={"corpus": big, "speaker": "kat"}), ws)
    assert len(list((ws.raw / "audio").rglob("*.flac"))) == 3
    lines = (big / "metadata.csv").read_text().splitlines()
    (big / "metadata.csv").write_text(lines[0] + "\n")
    result = prepare(with_overrides(params, prepare={"corpus": big, "speaker": "kat"}), ws)
    assert result.rows == 1 and len(list((ws.raw / "audio").rglob("*.flac"))) == 1


def test_duplicate_ids_get_distinct_copies(tmp_path, kathleen_files, params, workspace):
    root = tmp_path / "dup"
    (root / "clips").mkdir(parents=True)
    for source in kathleen_files[:2]:
        (root / "clips" / source.name).write_bytes(source.read_bytes())
    names = [p.name for p in kathleen_files[:2]]
    (root / "manifest.csv").write_text(
        "id,speaker,text,audio\n" + "".join(f"same,kat,Text {i}.,clips/{n}\n" for i, n in enumerate(names))
    )
    ws = Workspace(workspace)
    prepare(with_overrides(params, prepare={"corpus": root}), ws)
    rows = pq.read_table(ws.raw_manifest).to_pylist()
    assert [row["id"] for row in rows] == ["same", "same"]
    assert rows[0]["audio"] != rows[1]["audio"]
    assert [row["source_hash"] for row in rows] == [digest(root / "clips" / n) for n in names]


def test_unreadable_audio_header_is_recorded(tmp_path, params, workspace):
    root = tmp_path / "broken"
    (root / "wavs").mkdir(parents=True)
    (root / "wavs" / "x.wav").write_bytes(b"RIFF\x00\x00not really audio")
    (root / "metadata.csv").write_text("x|Broken audio.\n")
    ws = Workspace(workspace)
    prepare(with_overrides(params, prepare={"corpus": root}), ws)
    (row,) = pq.read_table(ws.raw_manifest).to_pylist()
    assert row["parse_error"] is None and row["duration"] is None
    assert "cannot read audio header" in row["probe_error"]


@pytest.mark.parametrize("fmt", ["vctk", "manifest"])
def test_forced_format_mismatch_is_a_clear_error(tmp_path, kathleen, params, workspace, fmt):
    from polyvox.corpus.schema import CorpusError

    with pytest.raises(CorpusError):
        prepare(with_overrides(params, prepare={"corpus": kathleen, "format": fmt}), Workspace(workspace))


@pytest.mark.parametrize("mode", ["auto", "copy"])
def test_link_modes(tmp_path, kathleen_files, params, workspace, mode):
    corpus = corpora.ljspeech(tmp_path / "lj", kathleen_files, bad_rows=False)
    ws = Workspace(workspace)
    prepare(with_overrides(params, prepare={"corpus": corpus, "link": mode}), ws)
    for row in pq.read_table(ws.raw_manifest).to_pylist():
        source, copy = corpus / row["source_audio"], ws.raw / row["audio"]
        assert copy.read_bytes() == source.read_bytes()
        # tmp_path and the workspace share a filesystem, so auto links; copy never does.
        assert source.samefile(copy) is (mode == "auto")
