from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from polyvox.signal.loudness import loudness
from polyvox.text import phonemes as phonemes_module
from polyvox.text.normalize import normalize_text, words_for_scoring

import corpora
from stages import params_for, run_stages


def _tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory, kathleen_files):
    """Kathleen takes, plus one stereo 44.1 kHz take with a second of silence before it."""
    root = tmp_path_factory.mktemp("mixed")
    manifest = corpora.kathleen_manifest(root, kathleen_files[:4])
    take, rate = sf.read(kathleen_files[4], dtype="float32")
    import librosa

    upsampled = librosa.resample(take, orig_sr=rate, target_sr=44100)
    padded = np.concatenate([np.zeros(44100, dtype=np.float32), upsampled])
    sf.write(root / "clips/stereo.wav", np.stack([padded, padded * 0.5], axis=1), 44100)
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write("stereo,kathleen,It costs $3.50 at 7:45 on June 14th.,clips/stereo.wav\n")
    return manifest, len(take) / rate


def test_clean_audio_contract(mixed_corpus, tmp_path):
    manifest, stereo_seconds = mixed_corpus
    result = run_stages(params_for(manifest), tmp_path, upto="clean")["clean"]
    assert result.rows == 5 and result.audio_processed == 5 and result.phonemizer == "espeak"
    clean = pd.read_parquet(tmp_path / "data/clean/manifest.parquet")
    for _, row in clean.iterrows():
        signal, rate = sf.read(tmp_path / "data/clean" / row["audio"], always_2d=True)
        info = sf.info(tmp_path / "data/clean" / row["audio"])
        assert rate == 22050 and signal.shape[1] == 1 and info.subtype == "PCM_16"
        assert np.abs(signal).max() <= 10 ** (-1 / 20) + 1e-3  # peak limit
        measured = loudness(signal[:, 0], rate)
        assert measured == pytest.approx(-23.0, abs=0.5) or np.abs(signal).max() > 0.88
    stereo = clean.set_index("id").loc["stereo"]
    # A second of leading silence is gone; the take itself is kept (within the trim margins).
    assert stereo_seconds - 0.3 < stereo["clean_duration"] < stereo_seconds + 0.2
    assert stereo["clean_text"] == "It costs three dollars fifty cents at seven forty-five on June fourteenth."
    assert stereo["phonemes"].count("|") >= 10


def test_clean_is_deterministic(mixed_corpus, tmp_path):
    manifest, _ = mixed_corpus
    for name in ("a", "b"):
        run_stages(params_for(manifest), tmp_path / name, upto="clean")
    assert _tree(tmp_path / "a/data/clean") == _tree(tmp_path / "b/data/clean")


def test_clean_redoes_exactly_what_changed(kathleen_files, tmp_path):
    corpus = tmp_path / "corpus"
    manifest = corpora.kathleen_manifest(corpus, kathleen_files[:3])
    ws = tmp_path / "ws"
    first = run_stages(params_for(manifest), ws, upto="clean")["clean"]
    assert (first.audio_processed, first.text_processed) == (3, 3)

    stamps = {p: p.stat().st_mtime_ns for p in sorted((ws / "data").rglob("*")) if p.is_file()}
    again = run_stages(params_for(manifest), ws, upto="clean")["clean"]
    assert (again.audio_processed, again.audio_reused, again.text_processed) == (0, 3, 0)
    # a rerun with nothing new rewrites no file (DVC would rehash what it rewrote, and see a change)
    assert {p: p.stat().st_mtime_ns for p in sorted((ws / "data").rglob("*")) if p.is_file()} == stamps

    shutil.copy(kathleen_files[5], corpus / "clips" / kathleen_files[5].name)
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(f"new,kathleen,A new take.,clips/{kathleen_files[5].name}\n")
    added = run_stages(params_for(manifest), ws, upto="clean")["clean"]
    assert (added.audio_processed, added.audio_reused, added.text_processed) == (1, 3, 1)

    louder = run_stages(params_for(manifest, "clean.loudness_lufs=-20"), ws, upto="clean")["clean"]
    assert (louder.audio_processed, louder.text_processed, louder.text_reused) == (4, 0, 4)

    graphemes = run_stages(params_for(manifest, "clean.loudness_lufs=-20", "clean.phonemizer=graphemes"), ws, upto="clean")
    assert (graphemes["clean"].audio_processed, graphemes["clean"].text_processed) == (0, 4)
    assert graphemes["clean"].phonemizer == "graphemes"
    assert len(list((ws / "data/clean/audio").rglob("*.wav"))) == 4  # outputs of old settings removed


def test_grapheme_fallback_without_espeak(monkeypatch):
    monkeypatch.setattr(phonemes_module, "espeak_available", lambda language="en-us": False)
    phones, backend = phonemes_module.phonemize(["Hello, world."], "en-us", "espeak")
    assert backend == "graphemes" and phones == ["h e l l o | , | w o r l d | ."]


@pytest.mark.parametrize(
    "raw, spoken",
    [
        ("Our train leaves at 7:45.", "Our train leaves at seven forty-five."),
        ("We counted 1,284 birds.", "We counted one thousand two hundred eighty-four birds."),
        ("Born on the 9th of November, 1941.", "Born on the ninth of November, nineteen forty-one."),
        ("It sold for 2.5 million dollars.", "It sold for two point five million dollars."),
        ("The fare is $2.75, or £1.", "The fare is two dollars seventy-five cents, or one pound."),
        ("Dr. Okafor lives on Elm St. near St. Mary's.", "doctor Okafor lives on Elm street near saint Mary's."),
        ("Sales grew 12% & more in 2005.", "Sales grew twelve percent and more in two thousand five."),
        ("Your order is 4-4-9-1-8.", "Your order is four four nine one eight."),
        ("Meet at 4:05 p.m. on the 21st.", "Meet at four oh five p m on the twenty-first."),
        ("It is 3.5 km and 4 kg.", "It is three point five kilometres and four kilograms."),
        ("\u201cQuoted\u201d \u2014 fine\u2026", '"Quoted" - fine...'),
    ],
)
def test_text_normalisation(raw, spoken):
    assert normalize_text(raw) == spoken


def test_scoring_words_agree_across_spellings():
    assert words_for_scoring("Forty-two, Dr. Who!") == words_for_scoring("forty two doctor who")
    assert words_for_scoring("42 doctor who") == ["forty", "two", "doctor", "who"]


def test_phonemize_is_safe_from_many_threads():
    """The HTTP service phonemises in worker threads; espeak-ng is one library with global state."""
    from concurrent.futures import ThreadPoolExecutor

    from polyvox.text.phonemes import espeak_available, phonemize

    if not espeak_available("en-us"):
        pytest.skip("espeak-ng is not installed")
    texts = ["Not yet.", "The meeting starts at half past nine, in room twelve.", "Please call Stella.",
             "What would you like for dinner on Friday?"] * 25
    expected = {text: phonemize([text], "en-us", "espeak")[0][0] for text in set(texts)}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda text: phonemize([text], "en-us", "espeak")[0][0], texts))
    assert got == [expected[text] for text in texts]
