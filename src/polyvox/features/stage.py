"""The ``features`` stage: clean audio → per-utterance arrays, image tensors, statistics, splits.

Outputs, in ``data/features``:

- ``utt/ab/<key>.npz``: ``mel`` (n_mels, frames), ``f0`` (frames,), ``energy`` (frames,);
  the key is the clean audio's key + ``audio`` settings + :data:`FEATURE_VERSION`;
- ``images/ab/<key>.npy``: (3, size, size) float32 in [0, 1];
- ``content/ab/<key>.npy``: (frames at 50 Hz, width) float16 content features of a take, when a
  member is ``kind: convert`` (:mod:`polyvox.features.content`);
- ``index.parquet``: one row per utterance with its split, feature and image paths, phonemes;
- ``stats.json``: per-speaker and global normalisation statistics (from the train split).

Training reads ``index.parquet`` and memory-loads the arrays it names.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from polyvox.cache import content_key, load_index, save_index, sharded
from polyvox.config import Params
from polyvox.engines import render_identity, resolve_voices
from polyvox.features.content import CONTENT_VERSION, ContentTask, extract_content
from polyvox.features.extract import FeatureTask, extract
from polyvox.features.splits import SPLITS, assign_splits
from polyvox.features.teacher import TEACHER_VERSION, TeacherTask, render
from polyvox.frontends.image import image_tensor
from polyvox.frontends.teacher import TeacherSettings
from polyvox.fileio import atomic_path, atomic_write_bytes, atomic_write_text, remove_unreferenced
from polyvox.parallel import map_items
from polyvox.frontends.content import ContentSettings
from polyvox.workspace import Workspace
from polyvox.tracking import tracked

log = logging.getLogger(__name__)

FEATURE_VERSION = "1"
IMAGE_VERSION = "1"
SUM_FIELDS = ("frames", "voiced", "log_f0_sum", "log_f0_sq", "energy_sum", "energy_sq")


@dataclass(frozen=True)
class FeaturesResult:
    rows: int
    processed: int
    reused: int
    splits: dict[str, int]
    speakers: int

    def summary(self) -> str:
        splits = ", ".join(f"{name} {count}" for name, count in self.splits.items())
        return f"{self.rows} utterances ({splits}), {self.speakers} speakers; {self.processed} computed, {self.reused} reused"


def _mean_std(total: float, squares: float, count: float) -> tuple[float, float]:
    if count <= 0:
        return 0.0, 1.0
    mean = total / count
    return mean, math.sqrt(max(squares / count - mean * mean, 1e-12))


def speaker_statistics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of log-F0 (voiced frames), energy and each mel bin."""
    frames = sum(r["frames"] for r in rows)
    voiced = sum(r["voiced"] for r in rows)
    f0_mean, f0_std = _mean_std(sum(r["log_f0_sum"] for r in rows), sum(r["log_f0_sq"] for r in rows), voiced)
    e_mean, e_std = _mean_std(sum(r["energy_sum"] for r in rows), sum(r["energy_sq"] for r in rows), frames)
    mel_sum = np.sum([r["mel_sum"] for r in rows], axis=0)
    mel_sq = np.sum([r["mel_sq"] for r in rows], axis=0)
    mel_mean = mel_sum / max(frames, 1)
    mel_std = np.sqrt(np.maximum(mel_sq / max(frames, 1) - mel_mean**2, 1e-12))
    return {
        "utterances": len(rows), "frames": frames, "voiced_frames": voiced,
        "log_f0_mean": f0_mean, "log_f0_std": f0_std, "energy_mean": e_mean, "energy_std": e_std,
        "mel_mean": [round(float(v), 6) for v in mel_mean], "mel_std": [round(float(v), 6) for v in mel_std],
    }


def _images(manifest: pd.DataFrame, params: Params, workspace: Workspace) -> dict[str, str]:
    """raw image path -> features-relative tensor path, computed once per image content."""
    out = workspace.features
    size = params.features.image_size
    paths: dict[str, str] = {}
    hashes = {i: h for i, h in zip(manifest["image"], manifest["image_hash"]) if isinstance(i, str) and i}
    for image in sorted(hashes):
        source = workspace.raw / image
        key = content_key("image", IMAGE_VERSION, hashes[image], size)
        relative = sharded("images", key, ".npy")
        if not (out / relative).is_file():
            buffer = io.BytesIO()
            np.save(buffer, image_tensor(source, size), allow_pickle=False)
            atomic_write_bytes(out / relative, buffer.getvalue())
        paths[image] = relative
    return paths


def _teachers(manifest: pd.DataFrame, params: Params, workspace: Workspace) -> dict[str, str]:
    """clean text -> features-relative teacher mel path (``features.teacher_voice``), one rendering per
    distinct text and settings, kept across runs; {} without a teacher voice."""
    settings = TeacherSettings.from_params(params)
    if settings is None:
        return {}
    out = workspace.features
    first_row = dict(zip(manifest["clean_text"][::-1], manifest["row"][::-1]))  # a row to name in errors
    engine = render_identity(resolve_voices([settings.voice])[0])  # [] for flite/festival: their keys as before
    paths = {text: sharded("teacher", content_key("teacher", TEACHER_VERSION, settings.to_dict(), text, *engine), ".npy")
             for text in sorted(set(manifest["clean_text"]))}
    tasks = [TeacherTask(text, str(out / relative), settings, f"{workspace.clean_manifest} row {first_row[text]}")
             for text, relative in paths.items() if not (out / relative).is_file()]
    map_items(render, tasks, params.parallel, f"features: teacher {settings.voice} reads each text", log)
    return paths


def _contents(manifest: pd.DataFrame, params: Params, workspace: Workspace) -> dict[str, str]:
    """clean audio key -> features-relative content path, one per take and ``features.content`` settings,
    kept across runs; {} when no member is kind: convert (nothing would read them)."""
    if not params.members_of_kind("convert"):
        return {}
    settings = ContentSettings.from_params(params)
    out = workspace.features
    audio = dict(zip(manifest["audio_key"], manifest["audio"]))
    paths = {key: sharded("content", content_key("content", CONTENT_VERSION, settings.to_dict(), key), ".npy")
             for key in sorted(audio)}
    tasks = [ContentTask(str(workspace.clean / audio[key]), str(out / relative), settings)
             for key, relative in paths.items() if not (out / relative).is_file()]
    map_items(extract_content, tasks, params.parallel, f"features: content ({settings.model}) of each take", log)
    return paths


@tracked("features", lambda ws: ws.features_index)
def features(params: Params, workspace: Workspace) -> FeaturesResult:
    manifest = pq.read_table(workspace.clean_manifest).to_pandas()
    out = workspace.features
    audio_cfg = params.audio
    settings = audio_cfg.model_dump()

    clean_audio = {key: rel for key, rel in zip(manifest["audio_key"], manifest["audio"])}
    clean_audio.update({k: r for k, r in zip(manifest["reference_key"], manifest["reference_audio"]) if isinstance(k, str)})
    feature_key = {audio_key: content_key("features", FEATURE_VERSION, audio_key, settings) for audio_key in clean_audio}
    index_path = out / "cache-index.parquet"
    wanted = set(feature_key.values())
    index = {k: v for k, v in load_index(index_path).items() if k in wanted}
    todo = sorted(
        audio_key for audio_key, key in feature_key.items()
        if key not in index or not (out / sharded("utt", key, ".npz")).is_file()
    )
    tasks = [FeatureTask(audio=str(workspace.clean / clean_audio[a]), target=str(out / sharded("utt", feature_key[a], ".npz")),
                         cfg=audio_cfg) for a in todo]
    for audio_key, sums in zip(todo, map_items(extract, tasks, params.parallel, "features: mel + f0 + energy", log)):
        index[feature_key[audio_key]] = sums
    save_index(index, index_path)
    remove_unreferenced(out / "utt", wanted, ".npz")

    images = _images(manifest, params, workspace)
    remove_unreferenced(out / "images", {Path(p).stem for p in images.values()}, ".npy")

    teachers = _teachers(manifest, params, workspace)
    remove_unreferenced(out / "teacher", {Path(p).stem for p in teachers.values()}, ".npy")

    contents = _contents(manifest, params, workspace)
    remove_unreferenced(out / "content", {Path(p).stem for p in contents.values()}, ".npy")

    table = pd.DataFrame({
        "row": manifest["row"],
        "id": manifest["id"],
        "speaker": manifest["speaker"],
        "split": assign_splits(list(manifest["clean_text"]), params.features.splits, params.seed),
        "features": [sharded("utt", feature_key[a], ".npz") for a in manifest["audio_key"]],
        "frames": [index[feature_key[a]]["frames"] for a in manifest["audio_key"]],
        "reference_features": [sharded("utt", feature_key[k], ".npz") if isinstance(k, str) else None
                               for k in manifest["reference_key"]],
        "image_features": [images.get(i) if isinstance(i, str) else None for i in manifest["image"]],
        "teacher_features": [teachers.get(t) for t in manifest["clean_text"]],
        "content_features": [contents.get(a) for a in manifest["audio_key"]],
        "clean_text": manifest["clean_text"],
        "phonemes": manifest["phonemes"],
        "phonemizer": manifest["phonemizer"],
        "duration": manifest["clean_duration"],
    })
    with atomic_path(workspace.features_index) as tmp:
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp, compression="zstd")

    train = table[table["split"] == "train"]
    stats_rows = lambda frame: [index[feature_key[a]] for a in manifest.loc[frame.index, "audio_key"]]  # noqa: E731
    per_speaker = {}
    for speaker, group in table.groupby("speaker", sort=True):
        source = train[train["speaker"] == speaker]
        per_speaker[speaker] = speaker_statistics(stats_rows(source if len(source) else group))
    stats = {"audio": settings, "global": speaker_statistics(stats_rows(train if len(train) else table)),
             "speakers": per_speaker}
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=1, sort_keys=True) + "\n")

    counts = table["split"].value_counts()
    result = FeaturesResult(
        rows=len(table), processed=len(todo), reused=len(feature_key) - len(todo),
        splits={name: int(counts.get(name, 0)) for name in SPLITS}, speakers=len(per_speaker),
    )
    log.info("features: %s", result.summary())
    return result
