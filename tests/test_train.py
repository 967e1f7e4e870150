from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from polyvox.config import ConfigError, load_params
from polyvox.models.acoustic import AcousticModel
from polyvox.train.data import mel_statistics, vocabulary_and_speakers
from polyvox.train.trainer import model_config, train
from polyvox.workspace import Workspace

import corpora
from conftest import REPO
from tiny_project import TINY_TRAINING
from stages import params_for, run_stages

TINY = [*TINY_TRAINING, "train.validate_every=2", "train.checkpoint_every=2",
        # a schedule that does not depend on max_steps: the resume tests grow max_steps between runs
        "train.lr_schedule=inverse_sqrt"]


@pytest.fixture(scope="module")
def featured(tmp_path_factory, kathleen):
    """Features for eight real takes (train/val/test), shared by the training tests."""
    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:24:3]
    manifest = corpora.kathleen_manifest(tmp_path_factory.mktemp("corpus"), files, [texts[f.stem] for f in files])
    ws = tmp_path_factory.mktemp("ws")
    params = params_for(manifest, "features.splits.val=0.25", "features.splits.test=0.1", *TINY)
    run_stages(params, ws)
    return params, ws


def _copy_features(source, target):
    shutil.copytree(source / "data", target / "data")
    return Workspace(target)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_exact_resume(featured, tmp_path, precision):
    # bf16: CPU autocast (train.precision, or auto on a CPU with native bf16) resumes exactly too
    params, ws = featured
    straight = _copy_features(ws, tmp_path / "straight")
    resumed = _copy_features(ws, tmp_path / "resumed")
    p4, p2 = (params.model_copy(update={"train": params.train.model_copy(update={"max_steps": steps, "precision": precision})})
              for steps in (4, 2))

    result = train(p4, straight, member="m")
    train(p2, resumed, member="m")
    with open(resumed.models / "m/metrics.csv", "a") as handle:  # rows a killed run logged after its checkpoint
        handle.write("3,9,9,9,9,9,9,9,,0.1,1.0\n")
    again = train(p4, resumed, member="m")
    assert result.steps == again.steps == 4 and again.stopped_by == "steps"
    a = torch.load(straight.models / "m/last.pt", weights_only=True)
    b = torch.load(resumed.models / "m/last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor.float(), b["model"][name].float(), atol=1e-6), name
    assert a["step"] == b["step"] == 4 and a["best_val_loss"] == pytest.approx(b["best_val_loss"])
    rows = list(csv.DictReader(open(resumed.models / "m/metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4] and rows[1]["val_loss"] and rows[3]["val_loss"]
    assert (resumed.models / "m/best.pt").is_file() and (resumed.models / "m/model.json").is_file()
    assert result.precision == again.precision == precision


def test_rerun_on_the_same_inputs_is_a_no_op_and_new_inputs_retrain(featured, tmp_path):
    params, ws = featured
    target = _copy_features(ws, tmp_path / "again")
    p2 = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})})
    first = train(p2, target, member="n")
    stamp = (target.models / "n/last.pt").stat().st_mtime_ns
    again = train(p2, target, member="n")
    assert again == first and (target.models / "n/last.pt").stat().st_mtime_ns == stamp  # nothing trained
    longer = train(params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 3})}), target,
                   member="n")
    assert longer.steps == 3 and len(list(csv.DictReader(open(target.models / "n/metrics.csv")))) == 3  # resumed
    other = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2, "lr": 5e-4})})
    fresh = train(other, target, member="n")  # another learning rate: the old run says nothing about this one
    assert fresh.steps == 2 and [int(r["step"]) for r in csv.DictReader(open(target.models / "n/metrics.csv"))] == [1, 2]


def test_time_bound_stops_and_checkpoints(featured, tmp_path):
    params, ws = featured
    target = _copy_features(ws, tmp_path / "timed")
    bounded = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 10_000, "max_minutes": 0.0001})})
    result = train(bounded, target, member="t")
    assert result.stopped_by == "time" and result.steps < 10_000
    assert torch.load(target.models / "t/last.pt", weights_only=True)["step"] == result.steps


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_training_step(featured, tmp_path):
    params, ws = featured
    target = _copy_features(ws, tmp_path / "gpu")
    result = train(params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})}), target)
    assert result.device.startswith("cuda")


def test_two_process_ddp_on_cpu_keeps_ranks_identical(featured, tmp_path):
    import socket

    import torch.multiprocessing as mp

    import ddp_worker

    params, ws = featured
    target = _copy_features(ws, tmp_path / "ddp")
    params = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 3, "batch_size": 1})})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(ddp_worker.run, args=(2, port, params, str(target.root), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2 and ranks[0]["steps"] == 3
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(tensor, ranks[1]["model"][name]), name
    saved = torch.load(target.models / "ddp/last.pt", weights_only=True)["model"]  # written by rank 0 only
    for name, tensor in ranks[0]["model"].items():
        assert torch.equal(saved[name], tensor), name


def test_train_command_trains_every_listed_member(featured, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from polyvox.cli import app

    params, ws = featured
    target = _copy_features(ws, tmp_path / "cli")
    monkeypatch.chdir(target.root)
    shutil.copy(REPO / "params.yaml", target.root / "params.yaml")
    overrides = sum((["-S", o] for o in ["train.max_steps=1", *TINY]), [])
    result = CliRunner().invoke(app, ["train", *overrides])
    assert result.exit_code == 0, result.output
    listed = [m.name for m in load_params(REPO / "params.yaml").train.members]
    for member in listed:
        assert f"{member}: 1 steps on cpu x1" in result.output and (target.models / member / "last.pt").is_file()
    # each member's seed and architecture variant are what params.yaml lists
    for spec in load_params(REPO / "params.yaml").train.members:
        meta = json.loads((target.models / spec.name / "model.json").read_text())
        assert meta["seed"] == spec.seed and meta["conditioning"] == spec.conditioning
        for key, value in spec.variant.items():
            assert meta["model"][key] == value, (spec.name, key)

    unknown = CliRunner().invoke(app, ["train", "--member", "nobody", *overrides])
    assert unknown.exit_code == 2 and "no member named 'nobody'" in unknown.output


def test_audio_only_member_has_no_image_path(featured, tmp_path):
    from polyvox.runtime.synthesizer import Synthesizer

    params, ws = featured
    target = _copy_features(ws, tmp_path / "audio-only")
    member = {"name": "voice", "seed": 3, "conditioning": "audio", "variant": {"channels": 48}}
    p = params.model_copy(update={"train": params.train.model_copy(update={
        "max_steps": 2, "members": [type(params.train.members[0]).model_validate(member)]})})
    train(p, target, member="voice")
    state = torch.load(target.models / "voice/last.pt", weights_only=True)["model"]
    torch.manual_seed(3)  # as the trainer seeds before building the model
    fresh = AcousticModel(model_config(p, len(vocabulary_and_speakers(target)[0]), p.train.member("voice")),
                          *mel_statistics(target)).state_dict()
    image_weights = [n for n in fresh if n.startswith("image.") and fresh[n].dtype.is_floating_point]
    # the image encoder of an audio-only member never trains: it keeps its initial weights
    assert image_weights and all(torch.equal(state[n], fresh[n]) for n in image_weights)
    assert not torch.equal(state["text.embedding.weight"], fresh["text.embedding.weight"])
    assert state["text.embedding.weight"].shape[1] == 48
    synthesizer = Synthesizer(target.models / "voice")
    assert synthesizer.conditioning == "audio"
    with pytest.raises(ValueError, match="takes no image"):
        synthesizer.mel("Hello there.", image=np.zeros((3, 64, 64), np.float32))
    assert synthesizer.mel("Hello there.", speaker="kathleen").shape[0] == params.audio.n_mels


def test_warm_start_copies_weights_and_maps_phonemes(featured, tmp_path):
    from polyvox.train.trainer import warm_start

    params, ws = featured
    source = _copy_features(ws, tmp_path / "pretrain")
    short = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})})
    train(short, source, member="pre")
    pretrained = torch.load(source.models / "pre/best.pt", weights_only=True)["model"]
    old_symbols = json.loads((source.models / "pre/model.json").read_text())["symbols"]

    vocab, _ = vocabulary_and_speakers(source)
    symbols = list(reversed(vocab.symbols[1:])) + ["ʘ"]  # the same phonemes in another order, plus a new one
    symbols = [vocab.symbols[0], *symbols]
    model = AcousticModel(model_config(params, len(symbols)), *mel_statistics(source))
    counts = warm_start(model, symbols, source.models / "pre")
    state = model.state_dict()
    assert counts["shared_symbols"] == len(vocab.symbols) and counts["skipped"] == 0
    for i, symbol in enumerate(symbols):
        if symbol in old_symbols:
            assert torch.equal(state["text.embedding.weight"][i], pretrained["text.embedding.weight"][old_symbols.index(symbol)])
    assert torch.equal(state["decoder.to_mel.weight"], pretrained["decoder.to_mel.weight"])

    # through train(): a fresh member warm-started from the pretrained one starts from its weights
    target = _copy_features(ws, tmp_path / "finetune")
    zero_steps = short.model_copy(update={"train": short.train.model_copy(update={"init_from": str(source.models / "pre"),
                                                                                 "max_steps": 1, "lr": 1e-12})})
    train(zero_steps, target, member="tuned")
    tuned = torch.load(target.models / "tuned/last.pt", weights_only=True)["model"]
    assert torch.allclose(tuned["variance.duration.conv1.weight"], pretrained["variance.duration.conv1.weight"], atol=1e-6)
    assert json.loads((target.models / "tuned/model.json").read_text())["init_from"] == str(source.models / "pre")

    with pytest.raises(ConfigError, match="init_from"):
        warm_start(model, symbols, tmp_path / "nowhere")


def test_mlflow_tracking_when_uri_is_set(featured, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    params, ws = featured
    target = _copy_features(ws, tmp_path / "tracked")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    train(params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 4})}), target, member="t")
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("polyvox")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["member"] == "t" and run.data.tags["data_version"]
    assert run.data.params["train.batch_size"] == str(params.train.batch_size)
    history = client.get_metric_history(run.info.run_id, "train_mel")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2  # validate_every=2
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.csv", "model.json"}


def test_synthesize_with_every_conditioning(featured, tmp_path, kathleen_files):
    from PIL import Image

    from polyvox.runtime.synthesizer import Synthesizer

    params, ws = featured
    target = _copy_features(ws, tmp_path / "synth")
    train(params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})}), target, member="s")
    synthesizer = Synthesizer(target.models / "s")
    assert list(synthesizer.speakers) == ["kathleen"]
    face = tmp_path / "face.png"
    Image.new("RGB", (50, 50), (10, 200, 30)).save(face)
    text = "Doctor Okafor will see you at 4:30."
    for kwargs in ({}, {"speaker": "kathleen"}, {"reference_audio": kathleen_files[1]}, {"image": face},
                   {"reference_audio": kathleen_files[1], "image": face}):
        wave, rate = synthesizer.synthesize(text, **kwargs)
        assert rate == 22050 and wave.ndim == 1 and wave.size > 0.1 * rate and np.isfinite(wave).all(), kwargs
    with pytest.raises(ValueError, match="unknown speaker 'nobody'"):
        synthesizer.synthesize(text, speaker="nobody")


def test_images_reach_the_batches_and_train_the_image_encoder(featured, tmp_path):
    import pandas as pd

    from polyvox.train.data import Corpus

    params, ws = featured
    target = _copy_features(ws, tmp_path / "imaged")
    face = np.random.default_rng(0).random((3, 64, 64)).astype(np.float32)
    np.save(target.features / "face.npy", face, allow_pickle=False)
    index = pd.read_parquet(target.features_index)
    index["image_features"] = "face.npy"
    index.to_parquet(target.features_index)

    vocab, speakers = vocabulary_and_speakers(target)
    with_images = Corpus(target, "train", vocab, speakers).collate([0, 1], 1, 0)
    assert with_images.image is not None and bool(with_images.image_present.all())
    assert torch.equal(with_images.image[0], torch.from_numpy(face))
    assert Corpus(target, "train", vocab, speakers, images=False).collate([0, 1], 1, 0).image is None

    p = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2}),
                                  "model": params.model.model_copy(update={"modality_dropout": 0.0})})
    torch.manual_seed(p.seed)
    initial = AcousticModel(model_config(p, len(vocab)), *mel_statistics(target)).state_dict()
    train(p, target, member="imaged")
    trained = torch.load(target.models / "imaged/last.pt", weights_only=True)["model"]
    image_weights = [n for n in initial if n.startswith("image.") and initial[n].dtype.is_floating_point]
    assert any(not torch.equal(trained[n], initial[n]) for n in image_weights)


def test_lr_schedules_warm_up_then_decay(params):
    from polyvox.train.schedules import LR_FLOOR
    from polyvox.train.schedules import lr_factor

    cosine = params.train.model_copy(update={"lr_schedule": "cosine", "warmup_steps": 10, "max_steps": 110})
    factor = lr_factor(cosine)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(59) == pytest.approx(LR_FLOOR + (1 - LR_FLOOR) * 0.5)  # half way through the decay
    assert factor(109) == pytest.approx(LR_FLOOR) and factor(500) == pytest.approx(LR_FLOOR)
    assert all(factor(s) >= factor(s + 1) for s in range(9, 120))
    inverse = lr_factor(params.train.model_copy(update={"lr_schedule": "inverse_sqrt", "warmup_steps": 100}))
    assert inverse(99) == pytest.approx(1.0) and inverse(399) == pytest.approx(0.5)


def test_plan_steps_fills_the_budget():
    from polyvox.train.budget import plan_steps

    # 20 steps done in 10 s; 0.5 s a step and a 4 s validation every 200 steps → 0.52 s a step
    planned = plan_steps(20, 10.0, 0.5, 4.0, max_minutes=16, validate_every=200, margin=0.0)
    assert planned == 20 + int((16 * 60 - 10 - 2 * 0.52) / 0.52)
    assert plan_steps(20, 10.0, 1.0, 0.0, 16, 200) < plan_steps(20, 10.0, 0.5, 0.0, 16, 200)  # a slower machine: fewer
    assert plan_steps(5, 999.0, 1.0, 0.0, 1, 200) == 6  # over budget already: one more step, never zero


class FakeClock:
    """time.monotonic for the trainer: every reading advances a fixed 50 ms, so the plan does not
    depend on how busy the machine is."""

    def __init__(self):
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.05
        return self.now


def test_auto_steps_spend_the_minutes_and_a_resume_keeps_the_plan(featured, tmp_path, monkeypatch):
    from polyvox.train import budget, loop
    from polyvox.train.schedules import LR_FLOOR

    clock = FakeClock()  # the plan's clock (polyvox.train.budget.StepPlan) and the session's (loop.Session)
    monkeypatch.setattr(budget, "time", clock)
    monkeypatch.setattr(loop, "time", clock)
    params, ws = featured
    target = _copy_features(ws, tmp_path / "auto")
    auto = params.model_copy(update={"train": params.train.model_copy(update={
        "max_steps": "auto", "max_minutes": 0.1, "calibration_steps": 3, "lr_schedule": "cosine"})})
    result = train(auto, target, member="a")
    assert result.planned_steps is not None and result.planned_steps > 3
    assert result.stopped_by == "steps" and result.steps == result.planned_steps  # the plan fitted the budget
    assert result.seconds <= 6.0
    last = torch.load(target.models / "a/last.pt", weights_only=True)
    assert last["planned_steps"] == result.planned_steps == last["step"]
    rows = list(csv.DictReader(open(target.models / "a/metrics.csv")))
    assert float(rows[-1]["lr"]) == pytest.approx(LR_FLOOR * auto.train.lr, rel=1e-3)  # decayed over the plan
    assert rows[2]["val_loss"]  # the timed start ends with a validation pass

    # A run interrupted after its plan was made resumes under that same plan (and schedule) ...
    planned = result.planned_steps + 4
    last["planned_steps"] = planned
    torch.save(last, target.models / "a/last.pt")
    no_replan = auto.train.model_copy(update={"max_minutes": 5, "validate_every": 1000})
    resumed = train(auto.model_copy(update={"train": no_replan}), target, member="a")
    assert resumed.planned_steps == planned and resumed.steps == planned
    # ... and a re-plan spends what is left of the run's budget (kept in last.pt), not a fresh one:
    # this run's 0.1 minutes are spent, so the first re-plan ends it at once.
    last = torch.load(target.models / "a/last.pt", weights_only=True)
    assert last["trained_seconds"] >= result.seconds
    last["planned_steps"] = planned + 40
    torch.save(last, target.models / "a/last.pt")
    spent = auto.train.model_copy(update={"max_minutes": 0.1 + 1e-9})  # bounds changed: resume
    ended = train(auto.model_copy(update={"train": spent}), target, member="a")
    assert ended.stopped_by == "steps" and planned < ended.steps <= planned + 4 and ended.planned_steps == ended.steps


def test_pretrain_builds_a_base_that_fine_tunes_keep_conditioned_on_audio_and_images(featured, tmp_path):
    """A corpus of one's own: `polyvox pretrain` builds the base corpus beside it (pretrain/),
    trains the base there and publishes it; a member fine-tuned from it (train.init_from: base)
    starts from its weights, image encoder included, and answers to a speaker and to an image."""
    from polyvox.runtime.synthesizer import Synthesizer
    from polyvox.pretrain.stage import pretrain
    from polyvox.train.trainer import completed

    params, ws = featured
    target = _copy_features(ws, tmp_path / "own")
    teachers = {"demo": params.demo.model_copy(update={"utterances_per_speaker": 3}),
                "pretrain": params.pretrain.model_copy(update={"max_steps": 2})}
    p = params.model_copy(update={**teachers, "train": params.train.model_copy(update={"init_from": "base"})})
    with pytest.raises(ConfigError, match="polyvox pretrain"):
        train(p, target, member="voice")  # no base yet: said so, not a scratch run in disguise

    built = pretrain(p, target)
    assert built.origin == "trained" and built.train.steps == 2
    assert (target.root / "pretrain/data/features/index.parquet").is_file()  # the base corpus, apart from yours
    base = target.models / "base"
    meta = json.loads((base / "model.json").read_text())
    assert meta["conditioning"] == "audio+image" and set(meta["speakers"]) == set(params.demo.voices)
    assert pretrain(p, target).train == built.train  # a second call trains nothing

    tuned = p.model_copy(update={"train": p.train.model_copy(update={"max_steps": 1, "lr": 1e-12})})
    train(tuned, target, member="voice")
    assert completed(tuned, target, "voice") is not None
    from polyvox.fingerprint import file_digest
    tuned_meta = json.loads((target.models / "voice/model.json").read_text())
    assert (tuned_meta["init_from"], tuned_meta["init_sha256"]) == ("base", file_digest(base / "best.pt"))
    state = torch.load(target.models / "voice/last.pt", weights_only=True)["model"]
    base_state = torch.load(base / "best.pt", weights_only=True)["model"]
    image_weights = [n for n in base_state if n.startswith("image.") and base_state[n].dtype.is_floating_point]
    assert image_weights and all(torch.allclose(state[n], base_state[n], atol=1e-6) for n in image_weights)
    synthesizer = Synthesizer(target.models / "voice")
    assert synthesizer.conditioning == "audio+image" and "kathleen" in synthesizer.speakers
    by_speaker = synthesizer.mel("Hello there.", speaker="kathleen")
    rng = np.random.default_rng(0)
    by_image = [synthesizer.mel("Hello there.", image=rng.random((3, 64, 64), dtype=np.float32)) for _ in range(2)]
    assert by_speaker.shape[0] == params.audio.n_mels and np.isfinite(by_image[0]).all()
    assert not np.allclose(by_image[0], by_image[1])  # the image path reaches the output

    # a retrained base is a new input: its fine-tunes are no longer up to date
    retrained = p.model_copy(update={"pretrain": p.pretrain.model_copy(update={"max_steps": 3})})
    pretrain(retrained, target)
    assert completed(tuned, target, "voice") is None


def test_pretrain_source_copies_a_base_built_elsewhere(featured, tmp_path):
    from polyvox.pretrain.stage import pretrain

    params, ws = featured
    elsewhere = _copy_features(ws, tmp_path / "elsewhere")
    short = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})})
    train(short, elsewhere, member="pre")  # trained with audio+image conditioning, like a base
    here = _copy_features(ws, tmp_path / "here")
    p = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"source": elsewhere.models / "pre"}),
                                  "train": params.train.model_copy(update={"init_from": "base"})})  # a member needs it
    result = pretrain(p, here)
    assert result.train is None and result.origin == str(elsewhere.models / "pre")
    assert (here.models / "base/best.pt").read_bytes() == (elsewhere.models / "pre/best.pt").read_bytes()
    assert not (here.root / "pretrain").exists()  # nothing trained, no base corpus built

    (elsewhere.models / "pre/speakers.pt").unlink()
    with pytest.raises(ConfigError, match=r"pre is not a trained base \(missing speakers.pt\)"):
        pretrain(p, here)


def test_teacher_input_is_rendered_aligned_warped_and_learned(featured, tmp_path):
    """features.teacher_voice: each text's flite rendering is cached beside the features, batches carry
    it, the warp puts it on the target's frame grid, a fine-tune starts from the base's exact behaviour
    (the projection starts at zero) and learns to use it, and synthesis renders it again."""
    from polyvox.features.stage import features
    from polyvox.models.teacher import TeacherTrack, warp_teacher
    from polyvox.runtime.synthesizer import Synthesizer
    from polyvox.models.variance import frame_tokens
    from polyvox.train.data import Corpus

    params, ws = featured
    base = _copy_features(ws, tmp_path / "ws")
    train(params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})}), base, member="plain")
    taught = load_params(REPO / "params.yaml", [f"prepare.corpus={params.prepare.corpus}", "features.splits.val=0.25",
                                                "features.splits.test=0.1", *TINY, "features.teacher_voice=flite_slt",
                                                "train.max_steps=6", f"train.init_from={base.models / 'plain'}"])
    result = features(taught, base)
    index = __import__("pandas").read_parquet(base.features_index)
    assert index["teacher_features"].notna().all() and result.rows == len(index)
    assert len(set(index["teacher_features"])) == index["clean_text"].nunique()  # one rendering per text
    first = np.load(base.features / index["teacher_features"].iloc[0])
    assert first.shape[0] == taught.audio.n_mels and first.shape[1] > 20 and np.isfinite(first).all()

    vocab, speakers = vocabulary_and_speakers(base)
    corpus = Corpus(base, "train", vocab, speakers, teachers=True)
    batch = corpus.collate([0, 1], taught.seed, 0)
    assert batch.teacher_mel.shape[:2] == (2, taught.audio.n_mels) and batch.teacher_lengths.tolist() == [
        corpus.items[0].teacher.shape[1], corpus.items[1].teacher.shape[1]]
    with pytest.raises(ValueError, match="no teacher rendering"):
        Corpus(Workspace(ws), "train", vocab, speakers, teachers=True)  # the workspace rendered none

    # the warp: token i's output frames read token i's teacher frames, in order, interpolated
    frames = torch.arange(7, dtype=torch.float32)[None, :, None].expand(1, 7, 2).contiguous()
    track = TeacherTrack(frames, torch.tensor([[2, 5]]))
    durations = torch.tensor([[4, 2]])
    warped = warp_teacher(track, durations, frame_tokens(durations))
    assert warped.shape == (1, 6, 2)
    assert torch.allclose(warped[0, :, 0], torch.tensor([0.0, 0.25, 0.75, 1.0, 2.75, 5.25]))

    model = AcousticModel(model_config(taught, len(vocab)), *mel_statistics(base))
    assert model.teacher is not None and not model.teacher.weight.any()
    tuned = train(taught, base, member="taught")
    assert tuned.steps == 6
    meta = json.loads((base.models / "taught/model.json").read_text())
    assert meta["teacher"]["voice"] == "flite_slt" and meta["model"]["teacher_input"] is True
    weights = torch.load(base.models / "taught/last.pt", weights_only=True)["model"]
    assert weights["teacher.weight"].abs().sum() > 0  # it learned to read the teacher

    synthesizer = Synthesizer(base.models / "taught", checkpoint="last")
    text = corpus_text = index["clean_text"].iloc[0]
    assert synthesizer.teacher_mel(text).shape[1] == taught.audio.n_mels
    mel = synthesizer.mel(corpus_text, speaker=speakers[0])
    assert mel.shape[0] == taught.audio.n_mels and torch.isfinite(mel).all()
    with pytest.raises(ValueError, match="teacher rendering"):
        synthesizer.model.infer(synthesizer.tokens(text), audio_embedding=synthesizer.speakers[speakers[0]][None])


def test_the_shipped_base_is_shipped_with_its_card_checked_and_copied_in(featured, tmp_path, monkeypatch):
    """`polyvox pretrain --ship` writes the base (fp16 where its mels match fp32's) and its card;
    pretrain.source: shipped checks every file against the card before copying it in, and refuses a
    damaged one by name."""
    from polyvox import pretrained
    from polyvox.pretrain.stage import REBUILD_COMMAND, pretrain, ship_base

    params, ws = featured
    built_here = _copy_features(ws, tmp_path / "builder")
    p = params.model_copy(update={"demo": params.demo.model_copy(update={"utterances_per_speaker": 3}),
                                  "pretrain": params.pretrain.model_copy(update={"max_steps": 2}),
                                  "train": params.train.model_copy(update={"init_from": "base"})})
    result = pretrain(p, built_here)
    package = tmp_path / "package"
    package.mkdir()
    with pytest.raises(ConfigError, match="pretrain.source: null"):
        ship_base(p.model_copy(update={"pretrain": p.pretrain.model_copy(update={"source": "shipped"})}), built_here,
                  result, "abc", root=package)
    folder = ship_base(p, built_here, result, "abc123", root=package)
    card = json.loads((folder / "card.json").read_text())
    assert card["command"] == REBUILD_COMMAND and card["commit"] == "abc123" and card["training"]["steps"] == 2
    assert set(card["files"]) == {"model.json", "best.pt", "speakers.pt"} and card["data"]["utterances"] >= 4
    assert card["figures"]["fp16_parity"]["frame_count_difference"] >= 0 and "Rebuild" in (folder / "CARD.md").read_text()
    shipped_state = torch.load(folder / "best.pt", weights_only=True)["model"]
    half = card["figures"]["weights"] == "fp16"
    assert shipped_state["decoder.to_mel.weight"].dtype == (torch.float16 if half else torch.float32)
    assert shipped_state["mel_mean"].dtype == torch.float32  # buffers stay exact

    monkeypatch.setattr(pretrained, "HERE", package)
    user = _copy_features(ws, tmp_path / "user")
    uses = params.model_copy(update={"pretrain": params.pretrain.model_copy(update={"source": "shipped"}),
                                     "train": params.train.model_copy(update={"init_from": "base"})})
    copied = pretrain(uses, user)
    assert copied.train is None and (user.models / "base/best.pt").read_bytes() == (folder / "best.pt").read_bytes()
    assert not (user.root / "pretrain").exists()  # nothing trained

    original = (folder / "best.pt").read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    (folder / "best.pt").write_bytes(bytes(damaged))
    with pytest.raises(pretrained.ShippedAssetError, match=rf"{folder / 'best.pt'}: sha256 [0-9a-f]{{64}}, expected"):
        pretrain(uses, _copy_features(ws, tmp_path / "other"))
    (folder / "best.pt").write_bytes(original)
    (folder / "speakers.pt").unlink()
    with pytest.raises(pretrained.ShippedAssetError, match="speakers.pt: missing"):
        pretrained.shipped("base", package)
    with pytest.raises(pretrained.ShippedAssetError, match="no card"):
        pretrained.shipped("vocoder", package)


def test_the_shipped_base_card_says_what_pretrain_source_null_rebuilds():
    """The card's rebuild command is the stage with pretrain.source: null, and its params are
    params.yaml's recipe for it: the base that ships is the one the project's own params rebuild."""
    from polyvox import pretrained
    from polyvox.stages import STAGES
    from polyvox.pretrain.stage import REBUILD_COMMAND

    params = load_params(REPO / "params.yaml")
    if not (pretrained.HERE / "base" / pretrained.CARD).is_file():
        assert params.pretrain.source != "shipped", "params.yaml uses a shipped base that polyvox does not ship"
        pytest.skip("this version ships no base")
    card = pretrained.card("base")
    rebuild = load_params(REPO / "params.yaml", ["pretrain.source=null"])
    assert card["command"] == REBUILD_COMMAND == "polyvox pretrain -S pretrain.source=null --ship"
    assert card["params"] == json.loads(json.dumps(STAGES["pretrain"].settings(rebuild), default=str))
    assert pretrained.shipped("base") == pretrained.HERE / "base"  # every file matches its card
    size = sum(p.stat().st_size for p in pretrained.HERE.rglob("*") if p.is_file() and p.suffix != ".pyc")
    assert size <= pretrained.BUDGET_BYTES


class SlowingClock:
    """time.monotonic for the trainer and its session: 50 ms a reading, then 250 ms once ``after``
    readings were taken (the machine got five times busier mid-run)."""

    def __init__(self, after: int):
        self.now, self.readings, self.after = 0.0, 0, after

    def monotonic(self) -> float:
        self.readings += 1
        self.now += 0.05 if self.readings < self.after else 0.25
        return self.now


def test_a_time_bound_run_follows_the_recent_pace_when_the_machine_slows(featured, tmp_path, monkeypatch):
    """max_steps: auto re-plans at each validation from the pace since the last one: when the
    machine slows five-fold half way through, the plan shrinks within a validation interval and the
    run still ends by its (re-planned) steps inside the budget, its learning rate decayed. With the
    average pace since the start (the code before), this run overshot and the clock cut the schedule
    short (stopped by time at step 104, checked by reverting the pace to the average)."""
    from polyvox.train import budget, loop
    from polyvox.train.schedules import LR_FLOOR

    clock = SlowingClock(after=300)  # about step 100 of ~190 planned
    monkeypatch.setattr(budget, "time", clock)
    monkeypatch.setattr(loop, "time", clock)
    params, ws = featured
    target = _copy_features(ws, tmp_path / "slowing")
    auto = params.model_copy(update={"train": params.train.model_copy(update={
        "max_steps": "auto", "max_minutes": 0.5, "calibration_steps": 3, "lr_schedule": "cosine",
        "validate_every": 4, "checkpoint_every": 1000})})
    result = train(auto, target, member="a")
    assert clock.readings > clock.after  # the slowdown happened during the run
    assert result.stopped_by == "steps" and result.steps == result.planned_steps, result
    assert result.seconds <= 30.0
    rows = list(csv.DictReader(open(target.models / "a/metrics.csv")))
    assert float(rows[-1]["lr"]) == pytest.approx(LR_FLOOR * auto.train.lr, rel=1e-3)


class SharedMachine:
    """A 2-core machine for the thread governor: the clock, /proc/stat's busy seconds and this
    process's CPU seconds advance by each step, while a neighbour uses ``neighbour`` cores."""

    def __init__(self):
        self.now = self.busy = self.own = 0.0
        self.neighbour, self.threads = 0.0, 2
        self.seconds = {2: 0.3, 1: 0.5}  # a step's seconds per thread count

    def step(self, governor) -> None:
        seconds = self.seconds[self.threads]
        self.now += seconds
        self.own += self.threads * seconds
        self.busy += (self.threads + self.neighbour) * seconds
        governor.observe(seconds)

    def set_threads(self, threads: int) -> None:
        self.threads = threads


def _governor(machine: SharedMachine, **kwargs):
    from polyvox.train.budget import ThreadGovernor

    return ThreadGovernor(2, clock=lambda: machine.now, usage=lambda: (machine.busy, machine.own),
                          set_threads=machine.set_threads, **kwargs)


def test_the_thread_governor_trains_on_one_thread_while_another_process_is_busy(monkeypatch):
    """Alone it never switches (a run stays bit-identical); a neighbour that makes two threads slow
    moves it to one thread, which it keeps while the neighbour stays, and all threads come back when
    the neighbour goes. A neighbour that does not hurt two threads gets a probe, then ever rarer ones."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    machine = SharedMachine()
    governor = _governor(machine)
    assert governor.active
    for _ in range(200):
        machine.step(governor)
    assert governor.switches == [] and machine.threads == 2

    machine.neighbour, machine.seconds[2] = 1.0, 9.0  # a 2-thread scorer from another shell: 30x
    for _ in range(40):
        machine.step(governor)
    assert machine.threads == 1 and governor.switches[-1][1] == 1 and governor.switches[-1][2] >= 0.5
    switched = len(governor.switches)
    for _ in range(100):
        machine.step(governor)
    assert machine.threads == 1 and len(governor.switches) == switched  # one thread won and stays

    machine.neighbour, machine.seconds[2] = 0.0, 0.3
    for _ in range(20):
        machine.step(governor)
    assert machine.threads == 2 and len(governor.switches) == switched + 1

    machine.neighbour = 1.0  # busy, but two threads stay faster (a niced neighbour in the same session)
    for _ in range(400):
        machine.step(governor)
    probes = [observed for observed, threads, _ in governor.switches[switched + 1:] if threads == 1]
    assert machine.threads == 2 and len(probes) >= 2
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]  # each losing probe waits twice as long for the next

    governor.switches.clear()
    machine.seconds[2] = 9.0
    for _ in range(30):
        machine.step(governor)
    assert machine.threads == 1
    governor.restore()
    assert machine.threads == 2  # the next stage in this process gets its threads back


@pytest.mark.parametrize("case", ["one thread", "OMP_NUM_THREADS", "no /proc/stat", "tiny steps"])
def test_the_thread_governor_stays_off_where_it_cannot_help_or_must_not_act(monkeypatch, case):
    from polyvox.train.budget import ThreadGovernor

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    machine = SharedMachine()
    machine.neighbour, machine.seconds[2] = 1.0, 9.0
    if case == "one thread":
        machine.threads = 1
        governor = ThreadGovernor(1, clock=lambda: machine.now, usage=lambda: (machine.busy, machine.own),
                                  set_threads=machine.set_threads)
    elif case == "OMP_NUM_THREADS":
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        governor = _governor(machine)
    elif case == "no /proc/stat":
        governor = ThreadGovernor(2, clock=lambda: machine.now, usage=lambda: None, set_threads=machine.set_threads)
    else:
        machine.seconds = {2: 0.05, 1: 0.02}
        governor = _governor(machine)
    for _ in range(50):
        machine.step(governor)
    assert governor.switches == [] and machine.threads == (1 if case == "one thread" else 2)


def test_a_progress_total_that_moves_is_said_to_be_a_new_plan(caplog, monkeypatch):
    """make demo's log read `262/1594` then `422/978` with no word why (issue 32 §5): the line after a
    re-plan names the old total, once."""
    import logging

    from polyvox import progress

    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    plan = {"total": 100}

    def steps():
        for step in range(60):
            if step == 25:
                plan["total"] = 60
            yield step

    with caplog.at_level(logging.INFO, logger="polyvox.test"):
        list(progress.track(steps(), 100, "train voice", logging.getLogger("polyvox.test"), total_now=lambda: plan["total"]))
    lines = [r.getMessage() for r in caplog.records]
    moved = [line for line in lines if "re-planned" in line]
    assert moved == ["train voice: 30/60 (50%); the total was 100, re-planned"], lines
    assert lines[0] == "train voice: 10/100 (10%)" and lines[-1] == "train voice: 60/60 (100%)"
