"""The evaluation metrics, pinned down on real recordings (kathleen-a) and a teacher voice."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from polyvox.config import load_params
from polyvox.engines import resolve_voices, synthesize
from polyvox.evaluate import metrics as m
from polyvox.judges import POCKETSPHINX, Judge
from polyvox.judges.dnsmos import dnsmos
from polyvox.judges.scores import asr_scores, corpus_error_rates
from polyvox.judges.speaker import SpeakerEncoder

from conftest import REPO

PROMPT = "arctic_a0289"
TEXT = "They are not regular oyster pirates, Nicholas continued."


@pytest.fixture(scope="module")
def renditions(kathleen, tmp_path_factory):
    """Two real takes of one prompt, another real sentence, and the same prompt by a flite voice."""
    takes = sorted((kathleen / "wavs").glob(f"{PROMPT}_*.flac"))[:2]
    other = sorted((kathleen / "wavs").glob("arctic_a0001_*.flac"))[0]
    flite = tmp_path_factory.mktemp("flite") / "rms.wav"
    synthesize(resolve_voices(["flite_rms"])[0], TEXT, flite, PROMPT)
    return {name: sf.read(str(path), dtype="float32") for name, path in
            (("take1", takes[0]), ("take2", takes[1]), ("other", other), ("flite", flite))}


@pytest.fixture(scope="module")
def analyses(renditions):
    audio = load_params(REPO / "params.yaml").audio  # the pitch range and resolution evaluate tracks with
    return {name: m.analyse(signal, rate, audio.f0_min, audio.f0_max, audio.f0_resolution)
            for name, (signal, rate) in renditions.items()}


def test_mcd_is_zero_on_itself_and_orders_takes_before_another_voice(analyses):
    a = analyses
    assert m.mel_cepstral_distortion(a["take1"], a["take1"]) == pytest.approx(0.0, abs=1e-9)
    same_speaker = m.mel_cepstral_distortion(a["take1"], a["take2"])
    other_voice = m.mel_cepstral_distortion(a["take1"], a["flite"])
    assert 0.5 < same_speaker < other_voice, (same_speaker, other_voice)
    assert same_speaker < 8.0  # two takes of one speaker: a few dB, the scale of published MCDs


def test_log_f0_rmse_same_speaker_below_other_voice(analyses):
    a = analyses
    assert m.log_f0_rmse(a["take1"], a["take1"]) == pytest.approx(0.0, abs=1e-9)
    assert m.log_f0_rmse(a["take1"], a["take2"]) < m.log_f0_rmse(a["take1"], a["flite"])


@pytest.mark.parametrize("judge", [Judge("whisper"), POCKETSPHINX], ids=lambda j: j.name)
def test_wer_of_speech_far_below_wer_of_noise(renditions, judge):
    signal, rate = renditions["take1"]
    speech = asr_scores(signal, rate, TEXT, judge)
    noise = asr_scores(np.random.default_rng(0).normal(0, 0.1, len(signal)).astype(np.float32), rate, TEXT, judge)
    assert speech.wer <= 0.5 and noise.wer >= 0.9 and speech.cer < noise.cer
    assert corpus_error_rates([speech, noise])["wer"] == pytest.approx(
        (speech.word_errors + noise.word_errors) / (speech.words + noise.words))


def test_speaker_similarity_same_speaker_above_other_voice(renditions):
    encoder = SpeakerEncoder()
    centroid = encoder.centroid([encoder.embed(*renditions[n]) for n in ("take1", "other")])
    same = encoder.similarity(encoder.embed(*renditions["take2"]), centroid)
    other = encoder.similarity(encoder.embed(*renditions["flite"]), centroid)
    assert same > 0.8 and same - other > 0.1, (same, other)


def test_dnsmos_prefers_speech_to_noise(renditions):
    signal, rate = renditions["take1"]
    speech = dnsmos(signal, rate)
    noise = dnsmos(np.random.default_rng(1).normal(0, 0.3, len(signal)).astype(np.float32), rate)
    assert set(speech) == {"mos_ovrl", "mos_sig", "mos_bak", "mos_p808"}
    assert speech["mos_ovrl"] > noise["mos_ovrl"] + 0.5
