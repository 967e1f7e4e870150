from __future__ import annotations

import csv

import pytest
import torch

from polyvox.train.trainer import train
from polyvox.workspace import Workspace

import corpora
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
    import shutil

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
