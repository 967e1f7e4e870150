from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from polyvox.judges.scores import character_error_rate, word_error_rate
from polyvox.validate.errors import ValidationFailed
from polyvox.validate.probes import speech_probes

import corpora
from stages import params_for, run_stages


def _digest_tree(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory, kathleen_files):
    """A manifest corpus of good takes and one row per kind of problem, with the reason each expects."""
    root = tmp_path_factory.mktemp("bad")
    clips = root / "clips"
    clips.mkdir()
    take, rate = sf.read(kathleen_files[0], dtype="float32")
    rng = np.random.default_rng(0)

    def wav(name, signal, sr=rate, subtype="PCM_16"):
        sf.write(clips / name, signal, sr, subtype=subtype)
        return f"clips/{name}"

    rows, expected = [], {}

    def add(utt_id, text, audio, reason=None, speaker="kat"):
        rows.append([utt_id, speaker, text, audio])
        if reason:
            expected[len(rows) - 1] = reason

    for index, source in enumerate(kathleen_files[:3]):
        add(f"good{index}", "A good take.", wav(f"good{index}.wav", sf.read(source, dtype="float32")[0]))
    add("good0", "Same id again.", wav("dup_id.wav", take * 0.9), "duplicate_id")
    add("bad id", "Spaces in the id.", wav("unsafe.wav", take * 0.8), "unsafe_id")
    add("nospeaker", "Who said this?", wav("nospk.wav", take * 0.7), "missing_speaker", speaker="")
    add("notext", "", wav("notext.wav", take * 0.6), "empty_text")
    add("longtext", "word " * 200, wav("long.wav", take * 0.5), "text_too_long")
    (clips / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    add("broken", "Broken audio.", "clips/broken.wav", "unknown_sample_rate")
    add("missing", "Missing file.", "clips/nowhere.wav", "parse_error")
    add("lowrate", "Telephone quality.", wav("lowrate.wav", take[::3], sr=rate // 3), "sample_rate_too_low")
    add("short", "Too short.", wav("short.wav", take[: int(0.2 * rate)]), "duration_out_of_bounds")
    add("silence", "Nothing at all.", wav("silence.wav", np.zeros(2 * rate, dtype=np.float32)), "silent")
    add("clipped", "Far too loud.", wav("clipped.wav", np.clip(take * 30, -1, 1)), "clipped")
    noisy = take + rng.normal(0, 0.2, take.size).astype(np.float32)
    add("noisy", "Buried in noise.", wav("noisy.wav", np.clip(noisy, -1, 1)), "noisy")
    nan = take.copy()
    nan[1000:1010] = np.nan
    add("nan", "Not a number.", wav("nan.wav", nan, subtype="FLOAT"), "non_finite_samples")
    add("sameaudio", "Same audio, other id.", "clips/good1.wav", "duplicate_audio")

    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "speaker", "text", "audio"])
        writer.writerows(rows)
    with open(manifest, "ab") as handle:  # a transcript in the wrong encoding
        handle.write(b"latin1,kat,caf\xe9,clips/good2.wav\n")
    expected[len(rows)] = "parse_error"
    return manifest, expected, len(rows) + 1


def test_every_row_lands_in_exactly_one_table_with_its_reason(bad_corpus, tmp_path):
    manifest, expected, count = bad_corpus
    before = _digest_tree(manifest.parent)
    params = params_for(manifest, "validate.min_accepted_share=0.1")
    result = run_stages(params, tmp_path, upto="validate")["validate"]
    accepted = pd.read_parquet(tmp_path / "data/validated/accepted.parquet")
    quarantine = pd.read_parquet(tmp_path / "data/validated/quarantine.parquet")
    assert sorted([*accepted["row"], *quarantine["row"]]) == list(range(count))
    assert set(accepted["row"]) == {0, 1, 2}
    got = dict(zip(quarantine["row"], quarantine["reason"]))
    assert got == expected
    for _, row in quarantine.iterrows():
        assert row["reasons"].split(";")[0] == row["reason"] and row["detail"]
    broken = quarantine.set_index("id").loc["broken"]
    assert "undecodable_audio" in broken["reasons"]
    assert "0.5" in quarantine.set_index("id").loc["short", "detail"]  # names the bound it broke
    assert result.rows == count and result.accepted == 3 and sum(result.reasons.values()) == count - 3
    assert _digest_tree(manifest.parent) == before  # sources untouched
    # A rerun probes nothing again (probes are keyed by audio content) and decides the same.
    again = run_stages(params, tmp_path, upto="validate")["validate"]
    assert again.probed == 0 and again.reasons == result.reasons
    assert pd.read_parquet(tmp_path / "data/validated/quarantine.parquet")["row"].tolist() == quarantine["row"].tolist()


def test_outputs_summary_and_data_docs(bad_corpus, tmp_path):
    manifest, expected, count = bad_corpus
    run_stages(params_for(manifest, "validate.min_accepted_share=0.1"), tmp_path, upto="validate")
    out = tmp_path / "data/validated"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == count and summary["reasons"]["parse_error"] == 2
    assert "| silent | 1 |" in (out / "summary.md").read_text()
    docs = out / "gx/uncommitted/data_docs/local_site/index.html"
    assert docs.is_file() and "raw_manifest" in docs.read_text()


def test_stage_fails_below_min_accepted_share(bad_corpus, tmp_path):
    manifest, _, count = bad_corpus
    with pytest.raises(ValidationFailed) as info:
        run_stages(params_for(manifest), tmp_path, upto="validate")
    message = str(info.value)
    assert "validate.min_accepted_share 0.8" in message and f"3/{count}" in message
    assert (tmp_path / "data/validated/quarantine.parquet").is_file()  # written before failing


def test_a_rerun_of_the_same_manifest_and_settings_validates_nothing_and_fails_the_same(bad_corpus, tmp_path):
    """The flow after `dvc repro` (or a nightly run without new data) must leave data/validated as it
    is: no new Great Expectations results; a failing validation still fails; a changed setting reruns."""
    from polyvox.validate.stage import validate
    from polyvox.workspace import Workspace

    manifest, _, count = bad_corpus
    params = params_for(manifest, "validate.min_accepted_share=0.1")
    run_stages(params, tmp_path, upto="validate")
    out = tmp_path / "data/validated"
    before = _digest_tree(out)
    again = validate(params, Workspace(tmp_path))
    assert _digest_tree(out) == before and again.probed == 0 and again.rows == count
    strict = params_for(manifest)  # min_accepted_share 0.8: a setting of the stage changed, so it validates
    for _ in range(2):  # and a failure stands on a rerun of the same inputs
        with pytest.raises(ValidationFailed, match="validate.min_accepted_share 0.8"):
            validate(strict, Workspace(tmp_path))
    assert _digest_tree(out) != before


def test_all_of_kathleen_is_accepted_with_default_thresholds(kathleen, tmp_path):
    params = params_for(kathleen, "parallel.workers=2")
    result = run_stages(params, tmp_path, upto="validate")["validate"]
    assert (result.rows, result.accepted, result.quarantined) == (917, 917, 0)


def test_asr_check_catches_a_transcript_that_does_not_match(kathleen, kathleen_files, tmp_path):
    texts = corpora.kathleen_texts(kathleen)
    files = [kathleen_files[0], kathleen_files[3], kathleen_files[6]]
    true_texts = [texts[f.stem] for f in files]
    wrong = true_texts[:2] + ["The quarterly report is due on the third of October."]
    manifest = corpora.kathleen_manifest(tmp_path / "c", files, wrong)
    params = params_for(manifest, "validate.asr_check=true", "validate.min_accepted_share=0.5")
    run_stages(params, tmp_path / "ws", upto="validate")
    quarantine = pd.read_parquet(tmp_path / "ws/data/validated/quarantine.parquet")
    accepted = pd.read_parquet(tmp_path / "ws/data/validated/accepted.parquet")
    assert list(quarantine["reason"]) == ["transcript_mismatch"] and list(quarantine["row"]) == [2]
    assert (accepted["cer"] < 0.3).all() and quarantine["cer"].iloc[0] > 0.6
    assert quarantine["detail"].iloc[0].startswith("whisper-base heard ")  # the judge is named (evaluate.asr)


def test_probes_on_synthetic_signals():
    rate = 16000
    t = np.arange(rate * 2) / rate
    speech_like = (0.3 * np.sin(2 * np.pi * 200 * t) * (np.sin(2 * np.pi * 2 * t) > 0)).astype(np.float32)
    probes = speech_probes(speech_like, rate)
    assert probes["snr_db"] > 60 and 0.3 < probes["speech_ratio"] < 0.7 and probes["clipping_ratio"] == 0
    assert speech_probes(np.zeros(rate, dtype=np.float32), rate)["speech_ratio"] == 0
    assert speech_probes(np.ones(rate, dtype=np.float32), rate)["clipping_ratio"] == 1


def test_error_rates():
    assert word_error_rate("It costs 42 dollars.", "it costs forty two dollars") == 0
    assert character_error_rate("Doctor Who", "doctor who") == 0
    assert word_error_rate("a b c d", "a x c") == 0.5
    assert 0 < character_error_rate("hello world", "hello word") < 0.2


def test_an_empty_corpus_fails_a_critical_expectation(tmp_path):
    corpus = tmp_path / "empty"
    (corpus / "wavs").mkdir(parents=True)
    (corpus / "metadata.csv").write_text("")
    with pytest.raises(ValidationFailed, match="critical expectation failed: .*expect_table_row_count_to_be_between: 0"):
        run_stages(params_for(corpus, "validate.min_accepted_share=0"), tmp_path / "ws", upto="validate")


def test_cli_validate_exits_non_zero_naming_the_threshold(bad_corpus, workspace):
    from typer.testing import CliRunner

    from polyvox.cli import app

    manifest, _, _ = bad_corpus
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", "--corpus", str(manifest)]).exit_code == 0
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1 and "validate.min_accepted_share 0.8" in result.output
    result = runner.invoke(app, ["validate", "-S", "validate.min_accepted_share=0.1"])
    assert result.exit_code == 0 and "3/18 rows accepted" in result.output and "Data Docs:" in result.output
