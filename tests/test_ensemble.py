"""Ensemble integration (polyvox.ensemble) and the evaluate stage, on tiny members trained on real takes."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from polyvox.config import ConfigError
from polyvox.runtime import VoiceError
from polyvox.ensemble.fit import aligned_l1, fit_weights
from polyvox.ensemble.stage import ensemble
from polyvox.runtime.voice import Voice
from polyvox.evaluate.scoring import paired_bootstrap
from polyvox.judges import Judge
from polyvox.workspace import Workspace

import corpora
from stages import params_for, run_stages
from tiny_project import TINY_TRAINING

TINY = [*TINY_TRAINING, "train.validate_every=10", "train.checkpoint_every=10",
        "train.max_steps=20", "train.lr=0.003",
        "train.members=[{name: a, seed: 1, conditioning: audio+image, variant: {}},"
        " {name: b, seed: 2, conditioning: audio, variant: {kernel_size: 3}}]",
        "vocoder.channels=32", "vocoder.layers=2", "vocoder.intermediate=96", "vocoder.batch_size=4",
        "vocoder.max_steps=4", "vocoder.validate_every=4", "vocoder.checkpoint_every=4",
        "ensemble.fit_utterances=3", "ensemble.fit_steps=100",
        "evaluate.max_utterances=2", "evaluate.rtf_sentences=1", "evaluate.report_samples=2",
        "evaluate.centroid_takes=2", "evaluate.bootstrap_resamples=200"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, kathleen):
    """Two tiny members (different seeds, conditioning and kernel size) and a tiny vocoder on 12 real takes."""
    from polyvox.train.trainer import train
    from polyvox.train.vocoder import train_vocoder

    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:36:3]
    manifest = corpora.kathleen_manifest(tmp_path_factory.mktemp("corpus"), files, [texts[f.stem] for f in files])
    root = tmp_path_factory.mktemp("ws")
    params = params_for(manifest, "features.splits.val=0.25", "features.splits.test=0.25", *TINY)
    run_stages(params, root)
    ws = Workspace(root)
    for member in ("a", "b"):
        train(params, ws, member=member)
    train_vocoder(params, ws)
    return params, ws


def test_fit_weights_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    weights = np.array([0.6, 0.3, 0.1])
    members, references = [], []
    for frames in (40, 55, 70):
        mels = rng.normal(size=(3, 8, frames))
        members.append(mels)
        # the recording is slower than the synthesis: every 3rd frame repeated (DTW must absorb it)
        mixed = np.einsum("k,kmf->mf", weights, mels)
        references.append(np.repeat(mixed, [2 if f % 3 == 0 else 1 for f in range(frames)], axis=1))
    fitted, history = fit_weights(members, references, steps=400)
    assert np.allclose(fitted.sum(), 1.0) and (fitted >= 0).all()
    assert np.abs(fitted - weights).max() < 0.05, fitted
    assert history[-1] < history[0] / 3
    assert aligned_l1(members[0][0], members[0][0]) == 0.0


def test_paired_bootstrap_tells_a_real_difference_from_noise():
    rng = np.random.default_rng(1)
    ones = np.ones(60)
    base = rng.normal(3.0, 0.5, 60)
    same = paired_bootstrap(base, ones, base, ones, 500, 0.95, seed=0)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    shifted = paired_bootstrap(base + 0.3 + rng.normal(0, 0.05, 60), ones, base, ones, 500, 0.95, seed=0)
    assert 0 < shifted["low"] < 0.3 < shifted["high"]
    noise = paired_bootstrap(base + rng.normal(0, 0.5, 60), ones, base, ones, 500, 0.95, seed=0)
    assert noise["low"] < 0 < noise["high"]
    # a ratio statistic: 3 errors in 10 words vs 1 in 10 on every utterance → WER difference 0.2 exactly
    wer = paired_bootstrap(np.full(20, 3.0), np.full(20, 10.0), np.full(20, 1.0), np.full(20, 10.0), 200, 0.9, seed=0)
    assert wer["difference"] == pytest.approx(0.2) and wer["low"] == pytest.approx(0.2)


def test_weighted_voice_averages_members_on_shared_durations_and_round_trips(trained, tmp_path):
    params, ws = trained
    voice = Voice.from_members({"a": ws.models / "a", "b": ws.models / "b"}, weights=[0.25, 0.75], vocoder=ws.vocoder)
    speaker = voice.speakers[0]
    text = "The ensemble speaks."
    mels = voice.member_mels(text, speaker=speaker)
    assert mels["a"].shape == mels["b"].shape  # shared durations
    assert not torch.equal(mels["a"], mels["b"])
    torch.testing.assert_close(voice.mel(text, speaker=speaker), 0.25 * mels["a"] + 0.75 * mels["b"])
    own = voice.member_mels(text, speaker=speaker, shared_durations=False)
    assert own["a"].shape[1] != own["b"].shape[1] or not torch.equal(own["a"], mels["a"])

    voice.save(tmp_path / "voice")
    assert sorted(p.name for p in (tmp_path / "voice").iterdir()) == ["members", "vocoder", "voice.json"]
    loaded = Voice.load(tmp_path / "voice")
    assert [m.weight for m in loaded.members] == [0.25, 0.75]
    wave, rate = voice.synthesize(text, speaker=speaker)
    again, rate_again = loaded.synthesize(text, speaker=speaker)
    assert rate == rate_again == params.audio.sample_rate
    np.testing.assert_array_equal(wave, again)
    # an image alone: the audio-only member `b` sits out, `a` speaks alone
    image = np.load(ws.features / pd.read_parquet(ws.features_index)["image_features"].dropna().iloc[0]) \
        if pd.read_parquet(ws.features_index)["image_features"].notna().any() else np.full((3, 64, 64), 0.5, np.float32)
    assert list(voice.member_mels(text, image=image)) == ["a"]
    with pytest.raises(ValueError, match="unknown speaker"):
        voice.mel(text, speaker="nobody")


def test_ensemble_stage_records_the_comparison_and_keeps_only_a_winner(trained, tmp_path):
    params, ws = trained
    result = ensemble(params, ws)
    assert result.members == ["a", "b"] and result.split == "val" and result.utterances >= 1
    assert sum(result.weights.values()) == pytest.approx(1.0)
    best = min(result.member_scores.values())
    assert result.kept == (result.ensemble_score < best * (1 - params.ensemble.min_gain))
    recorded = json.loads((ws.reports / "ensemble.json").read_text())
    assert recorded["member_scores"] == result.member_scores and recorded["kept"] == result.kept
    per_utterance = pd.read_csv(ws.reports / "ensemble.csv")
    assert {"a", "b", "ensemble"} <= set(per_utterance.columns)
    assert per_utterance["ensemble"].mean() == pytest.approx(result.ensemble_score)
    candidate = Voice.load(ws.candidate)
    expected = ["a", "b"] if result.kept else [min(result.member_scores, key=result.member_scores.get)]
    assert [m.name for m in candidate.members] == expected
    assert candidate.vocoder is not None and candidate.info["member_scores"] == result.member_scores
    stamp = (ws.candidate / "voice.json").stat().st_mtime_ns
    assert ensemble(params, ws) == result  # nothing changed: a no-op
    assert (ws.candidate / "voice.json").stat().st_mtime_ns == stamp


def test_an_ensemble_of_identical_members_is_not_kept(trained, tmp_path):
    params, ws = trained
    copy = Workspace(tmp_path)
    shutil.copytree(ws.data, copy.data)
    shutil.copytree(ws.models / "a", copy.models / "a")
    shutil.copytree(ws.models / "a", copy.models / "b")  # "b" is the same weights as "a"
    shutil.copytree(ws.vocoder, copy.vocoder)
    result = ensemble(params, copy)
    assert result.member_scores["a"] == pytest.approx(result.member_scores["b"])
    assert not result.kept and result.candidate == "a"
    assert [m.name for m in Voice.load(copy.candidate).members] == ["a"]


def test_one_member_is_synthesised_once_per_row_and_scored_on_its_own_durations(trained, monkeypatch, tmp_path):
    from polyvox.runtime.voice import Voice as RuntimeVoice

    params, ws = trained
    copy = Workspace(tmp_path)
    shutil.copytree(ws.data, copy.data)
    shutil.copytree(ws.models / "a", copy.models / "a")
    shutil.copytree(ws.vocoder, copy.vocoder)
    one = params.model_copy(update={"ensemble": params.ensemble.model_copy(update={"members": ["a"]})})
    calls = []
    real = RuntimeVoice.member_mels
    monkeypatch.setattr(RuntimeVoice, "member_mels", lambda self, *a, **k: calls.append(k) or real(self, *a, **k))
    result = ensemble(one, copy)
    assert len(calls) == result.utterances and all(k["shared_durations"] for k in calls)
    voice = RuntimeVoice.from_members({"a": copy.models / "a"})
    rows = pd.read_csv(copy.reports / "ensemble.csv")
    assert rows["a"].to_numpy() == pytest.approx(rows["ensemble"].to_numpy())  # its weight is 1
    index = pd.read_parquet(copy.features_index).set_index("id")
    first = rows.iloc[0]
    text = index.loc[first["id"], "clean_text"]
    shared = real(voice, text, speaker=first["speaker"], shared_durations=True)["a"]
    own = real(voice, text, speaker=first["speaker"], shared_durations=False)["a"]
    assert torch.equal(shared, own)


def test_rerank_keeps_the_candidate_with_the_best_score(trained, monkeypatch, tmp_path):
    from polyvox.judges import scores

    params, ws = trained
    voice = Voice.from_members({"a": ws.models / "a", "b": ws.models / "b"}, mode="rerank", vocoder=ws.vocoder)
    own = voice.member_mels("Pick the better one.", speaker=voice.speakers[0], shared_durations=False)
    lengths = {name: voice.vocode(mel).size for name, mel in own.items()}
    assert lengths["a"] != lengths["b"], "the test needs the members' syntheses to differ in length"
    # a stand-in ASR that understands member b's synthesis perfectly and member a's not at all
    monkeypatch.setattr(scores, "asr_scores", lambda wave, rate, text, judge: scores.AsrScore(
        "", 4, 0, 10, 0 if wave.size == lengths["b"] else 10))
    wave, _ = voice.synthesize("Pick the better one.", speaker=voice.speakers[0])
    assert wave.size == lengths["b"]
    # the judge it reranks with is saved with it (a voice saved without one keeps pocketsphinx)
    voice.judge = Judge("whisper")
    voice.save(tmp_path / "rerank")
    assert Voice.load(tmp_path / "rerank").judge == Judge("whisper")
    meta = json.loads((tmp_path / "rerank/voice.json").read_text())
    (tmp_path / "rerank/voice.json").write_text(json.dumps({**meta, "judge": {"asr": "vosk"}}))
    with pytest.raises(VoiceError, match=r"rerank/voice.json: not a judge: \{'asr': 'vosk'\}"):
        Voice.load(tmp_path / "rerank")


def test_ensemble_refuses_untrained_members(trained, tmp_path):
    params, ws = trained
    empty = Workspace(tmp_path)
    shutil.copytree(ws.data, empty.data)
    with pytest.raises(ConfigError, match="polyvox train --member a"):
        ensemble(params, empty)


def test_evaluate_scores_candidate_champion_and_real_and_renders_the_report(trained):
    from polyvox.evaluate.stage import evaluate

    params, ws = trained
    if not (ws.candidate / "voice.json").is_file():
        ensemble(params, ws)
    first = evaluate(params, ws)
    assert set(first.metrics["systems"]) == {"candidate", "real"} and first.metrics["difference"] == {}

    shutil.copytree(ws.candidate, ws.champion, dirs_exist_ok=True)  # champion = the same voice
    assert evaluate(params, ws).metrics == first.metrics  # a champion identical to the candidate changes nothing
    (ws.evaluation / "metrics.json").unlink()  # so force the comparison, to check it on identical audio
    result = evaluate(params, ws)
    systems = result.metrics["systems"]
    assert set(systems) == {"candidate", "champion", "real"}
    for metric in ("wer", "cer", "mcd_db", "speaker_similarity", "mos_ovrl", "rtf_one_thread", "parameters", "size_mb"):
        assert metric in systems["candidate"], metric
    assert systems["real"]["speaker_similarity"] > 0.5
    assert 0 <= systems["real"]["wer"] <= 1 and systems["candidate"]["rtf_one_thread"] > 0
    # the same voice against itself: identical audio, identical scores, an interval of exactly zero
    assert result.metrics["difference"]["wer"] == pytest.approx(
        {"difference": 0.0, "low": 0.0, "high": 0.0, "pairs": 2, "confidence": 0.95, "lower_is_better": True})
    # Whisper judges; pocketsphinx's second opinion is scored beside it, bootstrap included
    assert (result.metrics["asr"], result.metrics["asr_second_opinion"]) == ("whisper-base", "pocketsphinx")
    assert 0 <= systems["real"]["wer_pocketsphinx"] <= 1.5 and "cer_pocketsphinx" in systems["candidate"]
    assert result.metrics["difference"]["wer_pocketsphinx"]["difference"] == 0.0
    assert "WER (whisper-base)" in result.summary() and "WER (pocketsphinx)" in result.summary()

    out = ws.evaluation
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["systems"]["candidate"]["wer"] == systems["candidate"]["wer"]
    table = pd.read_csv(out / "per_utterance.csv")
    assert len(table) == 2 * 3 and set(table["system"]) == {"candidate", "champion", "real"}
    assert {"ps_hypothesis", "ps_word_errors", "ps_words", "ps_character_errors", "ps_characters"} <= set(table)
    assert (out / "plots" / "per_utterance.png").stat().st_size > 1000

    html = result.report.read_text()
    assert "http://" not in html and "https://" not in html  # works offline
    assert "WER (whisper-base)" in html and "WER (pocketsphinx, second opinion)" in html
    sources = re.findall(r'<audio controls preload="none" src="data:audio/wav;base64,([^"]+)"', html)
    assert len(sources) == 2 * 3
    for encoded in sources:
        wave, rate = sf.read(io.BytesIO(base64.b64decode(encoded)))
        assert rate == params.audio.sample_rate and len(wave) > rate // 10 and np.abs(wave).max() > 0.01
    assert html.count('src="data:image/png;base64,') == 1 + 2  # the distributions + one spectrogram per sample
