"""kill -9 in the middle of a stage: the rerun completes, and no partial output is taken as done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from polyvox.features.extract import load_arrays

import corpora
from conftest import REPO

POLYVOX = str(REPO / ".venv" / "bin" / "polyvox")
TINY = ["model.channels=32", "model.text_layers=1", "model.decoder_layers=1", "model.postnet_layers=2",
        "train.batch_size=2", "train.warmup_steps=2", "train.validate_every=4", "train.checkpoint_every=2"]


def _args(corpus: Path, *extra: str) -> list[str]:
    out = []
    for override in (f"prepare.corpus={corpus}", "parallel.workers=1", "features.splits.val=0.25",
                     "features.splits.test=0.1", *TINY, *extra):
        out += ["-S", override]
    return out


def _polyvox(workspace: Path, command: str, args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": "off"}
    return subprocess.Popen([POLYVOX, command, *args], cwd=workspace, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def _kill_when(process: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the stage never reached the point to kill it at"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, kathleen):
    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:24:3]
    return corpora.kathleen_manifest(tmp_path_factory.mktemp("corpus"), files, [texts[f.stem] for f in files])


def test_kill_during_features_then_rerun(tmp_path, corpus):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    for stage in ("prepare", "validate", "clean"):
        _finish(_polyvox(ws, stage, _args(corpus)))
    utt = ws / "data/features/utt"
    process = _polyvox(ws, "features", _args(corpus))
    _kill_when(process, lambda: utt.is_dir() and any(utt.rglob("*.npz")))  # some files written, not all
    index = ws / "data/features/index.parquet"
    assert not index.exists()  # the index is written last, atomically: nothing claims to be done
    for done in utt.rglob("*.npz"):  # what carries a final name is whole (a killed writer leaves only .tmp-*)
        if not done.name.startswith(".tmp-"):
            assert np.isfinite(load_arrays(done)["mel"]).all(), done
    _finish(_polyvox(ws, "features", _args(corpus)))
    rows = pd.read_parquet(index)
    assert len(rows) == 8
    for row in rows.itertuples():  # every feature file is whole and loads
        arrays = load_arrays(ws / "data/features" / row.features)
        assert arrays["mel"].shape[1] == row.frames and np.isfinite(arrays["mel"]).all()
    assert json.loads((ws / "data/features/stats.json").read_text())["global"]


def test_kill_during_training_resumes_from_the_last_checkpoint(tmp_path, corpus):
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    for stage in ("prepare", "validate", "clean", "features"):
        _finish(_polyvox(ws, stage, _args(corpus)))
    args = _args(corpus, "train.max_steps=30", "train.members=[{name: m, seed: 1, conditioning: audio+image, variant: {}}]")
    out = ws / "models/m"

    def past_a_checkpoint() -> bool:
        metrics = out / "metrics.csv"
        return (out / "last.pt").is_file() and metrics.is_file() and len(metrics.read_text().splitlines()) > 7

    process = _polyvox(ws, "train", args)
    _kill_when(process, past_a_checkpoint)
    assert not (out / "done.json").exists()  # a killed run is never taken as finished
    import torch

    step = torch.load(out / "last.pt", weights_only=True)["step"]  # the checkpoint on disk is whole
    assert 0 < step < 30
    output = _finish(_polyvox(ws, "train", args))
    assert f"resuming m from step {step}" in output and "30 steps" in output
    done = json.loads((out / "done.json").read_text())
    assert done["result"]["steps"] == 30
    rows = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(1, 31)]  # the steps logged after the checkpoint were redone, once each
