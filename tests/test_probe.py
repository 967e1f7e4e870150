from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from polyvox.corpus.probe import parse_header, read_header


def _fast(path):
    data = path.read_bytes()
    return parse_header(data[: 1 << 20], len(data))


def test_flac_headers_match_libsndfile(kathleen_files):
    for path in kathleen_files:
        assert _fast(path) == read_header(path)


@pytest.mark.parametrize(
    "fmt, subtype, channels, rate",
    [("WAV", "PCM_16", 1, 16000), ("WAV", "FLOAT", 2, 44100), ("WAV", "PCM_24", 1, 22050), ("FLAC", "PCM_16", 2, 48000)],
)
def test_written_files_match_libsndfile(tmp_path, fmt, subtype, channels, rate):
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, np.zeros((rate // 3 + 7, channels)), rate, format=fmt, subtype=subtype)
    header = _fast(path)
    assert header == read_header(path)
    assert (header.sample_rate, header.channels, header.frames) == (rate, channels, rate // 3 + 7)


def test_odd_headers_fall_back_to_none(tmp_path):
    assert parse_header(b"OggS" + bytes(60), 64) is None
    assert parse_header(b"RIFF\x00\x00\x00\x00WAVEdata\xff\xff\xff\xff", 24) is None  # data larger than the file
    assert parse_header(b"fLaC" + bytes(60), 64) is None  # unknown length
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF1234WAVEjunk")
    with pytest.raises(ValueError, match="cannot read audio header"):
        read_header(bad)
