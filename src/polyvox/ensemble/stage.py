"""``polyvox ensemble``: combine trained members into one candidate voice, kept only if it beats its best member.

1. Load the members of ``ensemble.members`` (``models/<name>/``) and, with ``ensemble.vocoder:
   neural``, the vocoder (``models/vocoder/``).
2. On ``ensemble.fit_utterances`` validation utterances (each conditioned on its speaker's name):
   - ``weighted``: fit the mel weights (:func:`polyvox.ensemble.fit.fit_weights`), then score the
     ensemble and each member alone (its own durations) by aligned mel L1 to the real mel;
   - ``rerank``: every member synthesises; the score of an utterance is ASR CER (the judge's,
     :mod:`polyvox.judges`) − similarity_weight · similarity to its speaker's centroid; the ensemble
     keeps each utterance's best member.
3. The candidate (``models/candidate/``) is the ensemble when its score is lower than the best
   member's by at least ``ensemble.min_gain`` of it, else the best member alone. The comparison is recorded either way in
   ``reports/ensemble.json`` (DVC metrics) and per utterance in ``reports/ensemble.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from polyvox.fingerprint import VOICE_FILE
from polyvox.models.meta import VocoderMeta
from polyvox.models.meta import MemberMeta
from polyvox.config import ConfigError, Params
from polyvox.ensemble.fit import aligned_l1, fit_weights
from polyvox.runtime.voice import Voice
from polyvox.fileio import load_arrays, chosen_checkpoint
from polyvox.fileio import atomic_path, atomic_write_text
from polyvox.fingerprint import current_stamp, fingerprint, tree_digest
from polyvox.stages import STAGES
from polyvox.judges import Judge
from polyvox.progress import track
from polyvox.tracking import stage_run
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass
class EnsembleResult:
    mode: str
    members: list[str]
    weights: dict[str, float]
    loss: str  # what the scores are
    member_scores: dict[str, float]
    ensemble_score: float
    kept: bool  # the candidate is the ensemble (else the best member alone)
    candidate: str
    utterances: int
    split: str
    seconds: float
    inputs: str = ""  # fingerprint of what it was computed from (a rerun on the same inputs is a no-op)

    def summary(self) -> str:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in self.member_scores.items())
        verdict = "kept" if self.kept else f"not kept, candidate is member {self.candidate}"
        return (f"ensemble ({self.mode}) {self.ensemble_score:.4f} vs members {scores} on {self.utterances} "
                f"{self.split} utterances [{self.loss}] — {verdict}")

    def to_dict(self) -> dict:
        return asdict(self)


def member_folders(params: Params, workspace: Workspace) -> dict[str, Path]:
    folders = {}
    for name in params.ensemble_members():
        folder = workspace.models / name
        if not (folder / MemberMeta.FILE).is_file() or chosen_checkpoint(folder) is None:
            raise ConfigError(f"{folder}: member {name!r} is not trained (no model.json and best.pt/last.pt); "
                              f"run `polyvox train --member {name}` first")
        folders[name] = folder
    return folders


def vocoder_folder(params: Params, workspace: Workspace) -> Path | None:
    if params.ensemble.vocoder == "griffin-lim":
        return None
    if not (workspace.vocoder / VocoderMeta.FILE).is_file():
        raise ConfigError(f"{workspace.vocoder}: no trained vocoder; run `polyvox train-vocoder` first, or set "
                          "ensemble.vocoder: griffin-lim")
    return workspace.vocoder


def fit_rows(params: Params, workspace: Workspace) -> tuple[pd.DataFrame, str]:
    """Up to ``fit_utterances`` validation rows (train rows when the corpus has no validation split),
    drawn with the seed so reruns pick the same ones."""
    index = pd.read_parquet(workspace.features_index)
    index = index.merge(pd.read_parquet(workspace.clean_manifest)[["id", "audio"]], on="id", how="left")
    split = "val" if (index["split"] == "val").any() else "train"
    if split == "train":
        log.warning("%s: no validation rows; the ensemble is fitted and compared on training rows",
                    workspace.features_index)
    rows = index[index["split"] == split]
    count = min(params.ensemble.fit_utterances, len(rows))
    return rows.sample(n=count, random_state=params.seed).sort_values("id"), split


def speaker_centroids(workspace: Workspace, speakers: list[str], takes: int) -> dict[str, np.ndarray]:
    """resemblyzer centroid of each speaker's first ``takes`` real training takes."""
    from polyvox.judges.speaker import SpeakerEncoder

    index = pd.read_parquet(workspace.features_index)
    index = index.merge(pd.read_parquet(workspace.clean_manifest)[["id", "audio"]], on="id", how="left")
    encoder = SpeakerEncoder()
    centroids = {}
    for speaker in speakers:
        rows = index[(index["speaker"] == speaker) & (index["split"] == "train")].head(takes)
        if rows.empty:
            rows = index[index["speaker"] == speaker].head(takes)
        embeddings = []
        for audio in rows["audio"]:
            signal, rate = sf.read(str(workspace.clean / audio), dtype="float32", always_2d=True)
            embeddings.append(encoder.embed(signal.mean(axis=1), rate))
        centroids[speaker] = encoder.centroid(embeddings)
    return centroids


def _weighted(params: Params, workspace: Workspace, voice: Voice, rows: pd.DataFrame) -> tuple[dict, float, list[dict]]:
    names = [m.name for m in voice.members]
    # Each member alone is scored on its own durations; those differ from the shared ones only where two
    # or more text→mel members average theirs (a converter's timing is the teacher's): otherwise the
    # shared synthesis is each member's own, and synthesising twice would double the stage's cost.
    separately = sum(m.synthesizer.kind == "acoustic" for m in voice.members) > 1
    shared, own, references = [], [], []
    for row in track(list(rows.itertuples()), len(rows), "ensemble: members synthesise", log):
        references.append(load_arrays(workspace.features / row.features)["mel"])
        mels = voice.member_mels(row.clean_text, speaker=row.speaker, shared_durations=True)
        shared.append(np.stack([mels[n].numpy() for n in names]))
        if separately:
            mels = voice.member_mels(row.clean_text, speaker=row.speaker, shared_durations=False)
        own.append({n: mels[n].numpy() for n in names})
    weights, history = fit_weights(shared, references, steps=params.ensemble.fit_steps)
    log.info("ensemble weights %s (fit loss %.4f → %.4f)", ", ".join(f"{n} {w:.3f}" for n, w in zip(names, weights)),
             history[0], history[-1])
    records = []
    for row, stacked, singles, reference in zip(rows.itertuples(), shared, own, references, strict=True):
        record = {"id": row.id, "speaker": row.speaker,
                  "ensemble": aligned_l1(np.einsum("k,kmf->mf", weights, stacked), reference)}
        record.update({n: aligned_l1(singles[n], reference) for n in names})
        records.append(record)
    return dict(zip(names, weights.tolist())), float(history[-1]), records


def _rerank(params: Params, workspace: Workspace, voice: Voice, rows: pd.DataFrame) -> list[dict]:
    records = []
    for row in track(list(rows.itertuples()), len(rows), "ensemble: members synthesise and are scored", log):
        _, scored = voice.rerank(row.clean_text, speaker=row.speaker)
        record = {"id": row.id, "speaker": row.speaker}
        record.update({s["member"]: s["score"] for s in scored})
        record["ensemble"] = min(s["score"] for s in scored)
        record["picked"] = min(scored, key=lambda s: s["score"])["member"]
        records.append(record)
    return records


def rerank_judge(params: Params) -> Judge | None:
    """The ASR a rerank ensemble scores its members with; None for a weighted one (it listens to nothing)."""
    return Judge.from_params(params) if params.ensemble.mode == "rerank" else None


def input_fingerprint(params: Params, workspace: Workspace) -> str:
    folders = member_folders(params, workspace)
    vocoder = vocoder_folder(params, workspace)
    judge = rerank_judge(params)
    return fingerprint(workspace.data_version(), STAGES["ensemble"].identity(params),
                       {name: tree_digest(folder) for name, folder in folders.items()},
                       tree_digest(vocoder) if vocoder else None, judge.identity() if judge else None)


def completed(params: Params, workspace: Workspace, inputs: str | None = None) -> dict | None:
    """``reports/ensemble.json`` when models/candidate was made from exactly these inputs; None when
    :func:`ensemble` would work."""
    return current_stamp(workspace.reports / "ensemble.json", [workspace.candidate / VOICE_FILE],
                         inputs or (lambda: input_fingerprint(params, workspace)))


def ensemble(params: Params, workspace: Workspace) -> EnsembleResult:
    started = time.monotonic()
    cfg = params.ensemble
    inputs = input_fingerprint(params, workspace)
    previous = completed(params, workspace, inputs)
    if previous is not None:
        log.info("ensemble: members, data and settings unchanged; models/candidate stays as it is")
        return EnsembleResult(**previous)
    folders = member_folders(params, workspace)
    vocoder = vocoder_folder(params, workspace)
    rows, split = fit_rows(params, workspace)
    if rows.empty:
        raise ConfigError(f"{workspace.features_index}: no utterances to fit the ensemble on")
    centroids = (speaker_centroids(workspace, sorted(rows["speaker"].unique()), params.evaluate.centroid_takes)
                 if cfg.mode == "rerank" else {})
    judge = rerank_judge(params)
    voice = Voice.from_members(folders, mode=cfg.mode, vocoder=vocoder, similarity_weight=cfg.similarity_weight,
                               centroids=centroids, judge=judge)
    names = list(folders)
    fit_loss = None
    if cfg.mode == "weighted":
        weights, fit_loss, records = _weighted(params, workspace, voice, rows)
        loss = "mean |log-mel − real log-mel| along DTW (lower is better)"
    else:
        weights = {n: 1.0 / len(names) for n in names}
        records = _rerank(params, workspace, voice, rows)
        loss = f"ASR CER ({judge.name}) − {cfg.similarity_weight} · speaker similarity (lower is better)"
    table = pd.DataFrame(records)
    member_scores = {n: float(table[n].mean()) for n in names}
    ensemble_score = float(table["ensemble"].mean())
    best = min(member_scores, key=member_scores.get)
    threshold = member_scores[best] - cfg.min_gain * abs(member_scores[best])
    kept = len(names) > 1 and ensemble_score < threshold

    info = {"split": split, "utterances": len(table), "loss": loss, "member_scores": member_scores,
            "ensemble_score": ensemble_score, "fit_loss": fit_loss, "kept": kept, "threshold": threshold,
            "data_version": workspace.data_version()}
    if kept:
        candidate = Voice([m for m in voice.members], mode=cfg.mode, vocoder_folder=vocoder,
                          similarity_weight=cfg.similarity_weight, centroids=centroids, info=info, judge=judge)
        for member in candidate.members:
            member.weight = weights[member.name]
    else:
        chosen = next(m for m in voice.members if m.name == best)
        chosen.weight = 1.0
        candidate = Voice([chosen], vocoder_folder=vocoder, info=info)
    candidate.save(workspace.candidate)

    result = EnsembleResult(mode=cfg.mode, members=names, weights=weights, loss=loss, member_scores=member_scores,
                            ensemble_score=ensemble_score, kept=kept, candidate="ensemble" if kept else best,
                            utterances=len(table), split=split, seconds=time.monotonic() - started, inputs=inputs)
    workspace.reports.mkdir(parents=True, exist_ok=True)
    atomic_write_text(workspace.reports / "ensemble.json", json.dumps(result.to_dict(), indent=1) + "\n")
    with atomic_path(workspace.reports / "ensemble.csv") as tmp:
        table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)

    tracker = stage_run("ensemble", params, workspace,
                        {"data_version": info["data_version"], "candidate": result.candidate}, seconds=result.seconds)
    tracker.metrics({"ensemble_score": ensemble_score, **{f"member_score.{n}": v for n, v in member_scores.items()},
                     **{f"weight.{n}": v for n, v in weights.items()}, "kept": float(kept)}, step=0)
    tracker.artifacts([workspace.reports / "ensemble.json", workspace.reports / "ensemble.csv"])
    tracker.end()
    log.info(result.summary())
    return result
