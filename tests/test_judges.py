"""The judge of intelligibility (polyvox.judges): Whisper hears real speech and not its reverse; the
shipped model is joined from its two packages only when every byte checks out."""

from __future__ import annotations

import multiprocessing
import pickle
import re
import shutil

import pytest
import soundfile as sf

from polyvox.config import ConfigError
from polyvox.judges.scores import asr_scores
from polyvox.fileio import sha256_file
from polyvox.judges import POCKETSPHINX, Judge
from polyvox.judges import whisper as w

import corpora
from conftest import with_overrides


@pytest.fixture(scope="module")
def part_copies(tmp_path_factory):
    """Copies (not links: a test corrupts them) of the installed parts of model.bin."""
    folder = tmp_path_factory.mktemp("parts")
    copies = []
    for part in w.shipped_parts():
        shutil.copyfile(part, folder / part.name)
        copies.append(folder / part.name)
    return copies


def test_whisper_hears_a_real_take_and_not_the_same_take_reversed(kathleen):
    texts = corpora.kathleen_texts(kathleen)
    take = sorted((kathleen / "wavs").glob("arctic_a0025_*.flac"))[0]  # "I was about to do this when cooler ..."
    signal, rate = sf.read(take, dtype="float32")
    judge = Judge("whisper")
    heard = asr_scores(signal, rate, texts[take.stem], judge)
    reversed_ = asr_scores(signal[::-1].copy(), rate, texts[take.stem], judge)
    assert heard.wer <= 0.1, heard
    assert reversed_.wer >= 0.8, reversed_


def test_the_judge_comes_from_params_and_travels_to_workers(params, tmp_path):
    judge = Judge.from_params(params)
    assert (judge.asr, judge.language, judge.name) == ("whisper", "en", "whisper-base")
    assert judge.second_opinion() == POCKETSPHINX and POCKETSPHINX.second_opinion() is None
    assert pickle.loads(pickle.dumps(judge)) == judge and Judge.from_dict(judge.to_dict()) == judge
    assert Judge.from_params(with_overrides(params, evaluate={"asr": "pocketsphinx"})).name == "pocketsphinx"
    named = Judge.from_params(with_overrides(params, evaluate={"whisper_model": tmp_path / "faster-whisper-small"}))
    assert named.name == "whisper:faster-whisper-small" and named.whisper_model == str(tmp_path / "faster-whisper-small")
    with pytest.raises(ConfigError, match="clean.language 'xx-yy'"):
        Judge.from_params(with_overrides(params, clean={"language": "xx-yy"}))
    # what the judge hears is part of every fingerprint that depends on it
    assert judge.identity() != POCKETSPHINX.identity()
    assert judge.identity() != Judge("whisper", None, "de").identity()


def test_assembly_is_whole_and_done_once(part_copies, tmp_path):
    folder = w.assemble_base_model(tmp_path, parts=part_copies)
    assert folder == tmp_path / f"faster-whisper-base-{w.BASE_SHA256[:12]}"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*w.MODEL_FILES, w.STAMP])
    assert (folder / "model.bin").stat().st_size == w.BASE_BYTES
    before = (folder / "model.bin").stat()
    assert w.assemble_base_model(tmp_path, parts=[tmp_path / "gone1", tmp_path / "gone2"]) == folder  # not reread
    after = (folder / "model.bin").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()] == []  # no staging left
    # a model.bin cut short after the stamp was written is noticed, and assembled again
    with open(folder / "model.bin", "r+b") as handle:
        handle.truncate(1000)
    assert (w.assemble_base_model(tmp_path, parts=part_copies) / "model.bin").stat().st_size == w.BASE_BYTES


def _assemble(cache, parts, results):
    results.put(str(w.assemble_base_model(cache, parts=parts)))


def test_two_processes_assembling_at_once_both_get_a_whole_folder(part_copies, tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_assemble, args=(tmp_path, part_copies, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0]
    folder = w.base_model_folder(tmp_path)
    assert {results.get(timeout=5), results.get(timeout=5)} == {str(folder)}
    assert sha256_file(folder / "model.bin") == w.BASE_SHA256


def test_a_corrupted_part_is_refused_naming_it(part_copies, tmp_path):
    bad = tmp_path / "bad" / part_copies[1].name
    bad.parent.mkdir()
    shutil.copyfile(part_copies[1], bad)
    with open(bad, "r+b") as handle:
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cache = tmp_path / "cache"
    with pytest.raises(w.WhisperModelError, match=rf"{re.escape(str(bad))}: sha256 [0-9a-f]{{64}}, expected {w.BASE_PARTS[1][4]}"):
        w.assemble_base_model(cache, parts=[part_copies[0], bad])
    assert not w.base_model_folder(cache).exists() and not any(p.is_dir() for p in cache.iterdir())

    short = tmp_path / "short" / part_copies[0].name
    short.parent.mkdir()
    shutil.copyfile(part_copies[0], short)
    with open(short, "r+b") as handle:
        handle.truncate(w.BASE_PARTS[0][3] - 1)
    with pytest.raises(w.WhisperModelError, match=rf"{re.escape(str(short))}: {w.BASE_PARTS[0][3] - 1} bytes, expected {w.BASE_PARTS[0][3]}"):
        w.assemble_base_model(cache, parts=[short, part_copies[1]])


def test_a_missing_part_is_refused_naming_it(part_copies, tmp_path):
    missing = tmp_path / "model.bin.part1"
    with pytest.raises(w.WhisperModelError, match=rf"{re.escape(str(missing))}: missing"):
        w.assemble_base_model(tmp_path / "cache", parts=[missing, part_copies[1]])
    assert not w.base_model_folder(tmp_path / "cache").exists()


def test_a_configured_model_folder_missing_a_file_is_refused_naming_it(params, tmp_path):
    folder = tmp_path / "my-whisper"
    folder.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json"):
        (folder / name).write_bytes(b"{}")
    cfg = with_overrides(params, evaluate={"whisper_model": folder}).evaluate
    with pytest.raises(w.WhisperModelError, match=rf"{re.escape(str(folder))}: tokenizer.json missing"):
        w.whisper_model_folder(cfg)
    (folder / "tokenizer.json").write_bytes(b"{}")
    assert w.whisper_model_folder(cfg) == folder
    with pytest.raises(w.WhisperModelError, match=rf"{re.escape(str(tmp_path / 'nowhere'))}: no such folder"):
        w.whisper_model_folder(with_overrides(params, evaluate={"whisper_model": tmp_path / "nowhere"}).evaluate)


def test_evaluate_scoring_adds_pocketsphinx_as_a_second_opinion_to_whisper_only(kathleen):
    from polyvox.evaluate.scoring import ScoreItem, score

    texts = corpora.kathleen_texts(kathleen)
    take = sorted((kathleen / "wavs").glob("arctic_a0049_*.flac"))[0]  # "Gregson was asleep when he re-entered ..."
    by_whisper = score(ScoreItem("real", str(take), texts[take.stem], judge=Judge("whisper")))
    by_pocketsphinx = score(ScoreItem("real", str(take), texts[take.stem], judge=POCKETSPHINX))
    second = {k.removeprefix("ps_"): v for k, v in by_whisper.items() if k.startswith("ps_")}
    assert set(second) == {"hypothesis", "words", "word_errors", "characters", "character_errors", "wer", "cer"}
    assert second == {k: by_pocketsphinx[k] for k in second}  # the same pocketsphinx, beside the judge
    assert not any(k.startswith("ps_") for k in by_pocketsphinx)
    with pytest.raises(ValueError, match="needs a judge"):
        score(ScoreItem("real", str(take), texts[take.stem]))
