from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from polyvox.config import SplitSection, load_params
from polyvox.features.extract import compute_features
from polyvox.fileio import load_arrays
from polyvox.features.splits import assign_splits, prompt_group

import corpora
from conftest import REPO
from stages import params_for, run_stages


def _tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_feature_shapes_share_one_frame_grid():
    cfg = load_params(REPO / "params.yaml").audio
    rate = cfg.sample_rate
    t = np.arange(int(1.5 * rate)) / rate
    tone = sum(0.2 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 6)).astype(np.float32)
    features = compute_features(tone, cfg)
    frames = 1 + tone.size // cfg.hop_length
    assert features["mel"].shape == (cfg.n_mels, frames)
    assert features["f0"].shape == features["energy"].shape == (frames,)
    voiced = features["f0"][features["f0"] > 0]
    assert voiced.size > 0.8 * frames and abs(np.median(voiced) - 150) < 3
    silence = compute_features(np.zeros(rate, dtype=np.float32), cfg)
    assert (silence["f0"] == 0).all() and np.allclose(silence["mel"], np.log(1e-5))


def test_coarser_pitch_bins_track_the_fine_ones_on_real_speech(kathleen_files):
    import librosa
    import soundfile as sf

    cfg = load_params(REPO / "params.yaml").audio
    assert cfg.f0_resolution == 0.2  # params.yaml's choice; librosa's default is 0.1
    signal, rate = sf.read(str(kathleen_files[0]), dtype="float32")
    signal = librosa.resample(signal, orig_sr=rate, target_sr=cfg.sample_rate)
    coarse = compute_features(signal, cfg)["f0"]
    fine = compute_features(signal, cfg.model_copy(update={"f0_resolution": 0.1}))["f0"]
    both = (coarse > 0) & (fine > 0)
    assert both.sum() > 50
    assert ((coarse > 0) == (fine > 0)).mean() > 0.9  # the same frames voiced, give or take the edges
    cents = 1200 * np.abs(np.log2(coarse[both] / fine[both]))
    assert np.median(cents) <= 10 and np.percentile(cents, 90) <= 25, (np.median(cents), np.percentile(cents, 90))


@pytest.fixture(scope="module")
def small(tmp_path_factory, kathleen, kathleen_files):
    """prepare → features on six real takes, in a module-wide workspace."""
    texts = corpora.kathleen_texts(kathleen)
    files = sorted((kathleen / "wavs").glob("*.flac"))[:12:2]
    corpus = tmp_path_factory.mktemp("corpus")
    manifest = corpora.kathleen_manifest(corpus, files, [texts[f.stem] for f in files])
    ws = tmp_path_factory.mktemp("ws")
    results = run_stages(params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2"), ws)
    return manifest, ws, results


def test_features_outputs(small):
    _, ws, results = small
    index = pd.read_parquet(ws / "data/features/index.parquet")
    assert len(index) == 6 and results["features"].processed == 6
    assert set(index["split"]) <= {"train", "val", "test"}
    for _, row in index.iterrows():
        arrays = load_arrays(ws / "data/features" / row["features"])
        assert arrays["mel"].shape == (80, row["frames"]) and arrays["f0"].shape == (row["frames"],)
        assert arrays["mel"].dtype == np.float32 and (arrays["f0"] > 0).mean() > 0.3
    stats = json.loads((ws / "data/features/stats.json").read_text())
    kathleen = stats["speakers"]["kathleen"]
    assert 140 < np.exp(kathleen["log_f0_mean"]) < 230  # a female speaker's median pitch
    assert len(kathleen["mel_mean"]) == 80 and all(s > 0 for s in kathleen["mel_std"])


def test_features_are_deterministic_and_incremental(small, tmp_path, kathleen):
    manifest, ws, _ = small
    params = params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2")
    other = tmp_path / "other"
    run_stages(params, other)
    assert _tree(ws / "data/features") == _tree(other / "data/features")

    # One new recording (in a copy of the corpus): clean and features process exactly one file.
    corpus = shutil.copytree(manifest.parent, tmp_path / "grown")
    manifest = corpus / manifest.name
    params = params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2")
    new = sorted((kathleen / "wavs").glob("*.flac"))[20]
    shutil.copy(new, corpus / "clips" / new.name)
    with open(manifest, "a", encoding="utf-8") as handle:
        handle.write(f"{new.stem},kathleen,One more take.,clips/{new.name}\n")
    results = run_stages(params, other)
    assert (results["clean"].audio_processed, results["clean"].audio_reused) == (1, 6)
    assert (results["features"].processed, results["features"].reused) == (1, 6)


def test_images_become_tensors(tmp_path, kathleen_files):
    from PIL import Image

    root = tmp_path / "corpus"
    manifest = corpora.kathleen_manifest(root, kathleen_files[:2])
    Image.new("RGB", (40, 30), (255, 0, 0)).save(root / "face.png")
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([lines[0] + ",image"] + [line + ",face.png" for line in lines[1:]]) + "\n")
    run_stages(params_for(manifest, "features.image_size=32"), tmp_path / "ws")
    index = pd.read_parquet(tmp_path / "ws/data/features/index.parquet")
    assert index["image_features"].nunique() == 1
    tensor = np.load(tmp_path / "ws/data/features" / index["image_features"].iloc[0], allow_pickle=False)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32
    assert tensor[0].mean() == pytest.approx(1.0) and tensor[1].max() == pytest.approx(0.0)


def test_dask_backend_gives_the_same_features(small, tmp_path):
    manifest, ws, _ = small
    params = params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2", "parallel.backend=dask",
                        "parallel.workers=2")
    run_stages(params, tmp_path / "dask")
    assert _tree(tmp_path / "dask/data/features") == _tree(ws / "data/features")


def test_local_pool_gives_the_same_features(small, tmp_path):
    manifest, ws, _ = small
    params = params_for(manifest, "features.splits.val=0.2", "features.splits.test=0.2", "parallel.workers=2")
    run_stages(params, tmp_path / "pool")
    assert _tree(tmp_path / "pool/data/features") == _tree(ws / "data/features")


def test_kathleen_splits_have_no_prompt_in_two_splits(kathleen):
    texts = list(corpora.kathleen_texts(kathleen).values())
    splits = assign_splits(texts, SplitSection(val=0.05, test=0.05), seed=1234)
    by_prompt: dict[str, set[str]] = {}
    for text, split in zip(texts, splits):
        by_prompt.setdefault(prompt_group(text), set()).add(split)
    assert all(len(s) == 1 for s in by_prompt.values())
    counts = {name: splits.count(name) for name in ("train", "val", "test")}
    assert counts["val"] > 20 and counts["test"] > 20 and counts["train"] > 800
    # Deterministic, and adding rows never moves existing ones.
    assert assign_splits(texts, SplitSection(val=0.05, test=0.05), seed=1234) == splits
    grown = assign_splits(texts + ["A brand new prompt."], SplitSection(val=0.05, test=0.05), seed=1234)
    assert grown[:-1] == splits
    assert assign_splits(texts, SplitSection(val=0.05, test=0.05), seed=99) != splits


def test_small_corpora_still_get_val_and_test():
    splits = assign_splits([f"Prompt {i}." for i in range(5)], SplitSection(val=0.05, test=0.05), seed=3)
    assert {"train", "val", "test"} <= set(splits)
    with pytest.raises(ValueError, match="nothing to train"):
        assign_splits(["a"], SplitSection(val=0.5, test=0.5), seed=1)
