from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch

from polyvox.train.trainer import train
from polyvox.workspace import Workspace

import corpora
from conftest import REPO
from stages import params_for, run_stages

TINY = ["model.channels=32", "model.text_layers=1", "model.decoder_layers=1", "model.postnet_layers=2",
        "train.batch_size=2", "train.warmup_steps=2", "train.validate_every=2", "train.checkpoint_every=2"]


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


def test_exact_resume(featured, tmp_path):
    params, ws = featured
    straight = _copy_features(ws, tmp_path / "straight")
    resumed = _copy_features(ws, tmp_path / "resumed")
    p4 = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 4})})
    p2 = params.model_copy(update={"train": params.train.model_copy(update={"max_steps": 2})})

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


def test_train_command(featured, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from polyvox.cli import app

    params, ws = featured
    target = _copy_features(ws, tmp_path / "cli")
    monkeypatch.chdir(target.root)
    shutil.copy(REPO / "params.yaml", target.root / "params.yaml")
    result = CliRunner().invoke(app, ["train", "--member", "cli", "-S", "train.max_steps=1", *sum((["-S", o] for o in TINY), [])])
    assert result.exit_code == 0, result.output
    assert "cli: 1 steps on cpu x1" in result.output and (target.models / "cli/last.pt").is_file()


def test_synthesize_with_every_conditioning(featured, tmp_path, kathleen_files):
    from PIL import Image

    from polyvox.models.synthesis import Synthesizer

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
