"""Score one trained member on the test split against the real recordings of the same sentences.

Every test sentence is synthesised from its text (the same normalised text the model trained on)
with the speaker's mean embedding, and both the synthesis and the real take are scored with
:mod:`polyvox.evaluate.metrics`; MCD and log-F0 RMSE compare the two renditions after DTW.
Speaker similarity is to the centroid of the speaker's real *training* takes, so the real test
takes' similarity is the ceiling. Real-time factor = synthesis seconds (acoustic model + vocoder,
CPU) / seconds of audio produced.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from polyvox.config import Params
from polyvox.evaluate import metrics as m
from polyvox.fileio import atomic_path
from polyvox.models.synthesis import Synthesizer
from polyvox.progress import track
from polyvox.workspace import Workspace

log = logging.getLogger(__name__)

CENTROID_TAKES = 40  # real training takes averaged into the speaker centroid

# The issue's targets for a 2-hour CPU run (ratio to the real recordings' WER for intelligibility).
TARGETS = {"wer_ratio": ("<=", 1.5), "speaker_similarity": (">=", 0.70), "mcd_db": ("<=", 7.5), "rtf": ("<=", 0.1)}


def _rows(workspace: Workspace, split: str, speaker: str | None) -> pd.DataFrame:
    index = pd.read_parquet(workspace.features_index)
    manifest = pd.read_parquet(workspace.clean_manifest)[["id", "audio"]]
    rows = index.merge(manifest, on="id", how="left")
    rows = rows[rows["split"] == split]
    return rows[rows["speaker"] == speaker] if speaker is not None else rows


def _read(path: Path) -> tuple[np.ndarray, int]:
    signal, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return signal.mean(axis=1), rate


def evaluate_member(params: Params, workspace: Workspace, member: str, vocoder: str | Path | None = None,
                    speaker: str | None = None, per_utterance_csv: Path | None = None, samples: Path | None = None,
                    limit: int | None = None) -> dict:
    """Returns ``{"summary": {...}, "targets": {...}}``; per-utterance scores go to ``per_utterance_csv``
    and the synthesised WAVs to ``samples`` (default ``models/<member>/samples``)."""
    torch.set_grad_enabled(False)
    synthesizer = Synthesizer(workspace.models / member,
                              vocoder=None if vocoder in (None, "griffin-lim") else Path(vocoder))
    speaker = speaker or next(iter(synthesizer.speakers))
    test = _rows(workspace, "test", speaker)
    if limit:
        test = test.head(limit)
    if test.empty:
        raise ValueError(f"{workspace.features_index}: no test utterances of speaker {speaker!r}")
    samples = samples or workspace.models / member / "samples"
    samples.mkdir(parents=True, exist_ok=True)

    encoder = m.SpeakerEncoder()
    train_rows = _rows(workspace, "train", speaker).head(CENTROID_TAKES)
    centroid = encoder.centroid([encoder.embed(*_read(workspace.clean / a)) for a in train_rows["audio"]])
    f0_range = (params.audio.f0_min, params.audio.f0_max)

    records = []
    synth_seconds = audio_seconds = 0.0
    for row in track(list(test.itertuples()), len(test), f"evaluate {member}", log):
        started = time.perf_counter()
        wave, rate = synthesizer.synthesize(row.clean_text, speaker=speaker)
        synth_seconds += time.perf_counter() - started
        audio_seconds += len(wave) / rate
        with atomic_path(samples / f"{row.id}.wav") as tmp:
            sf.write(tmp, wave, rate, format="WAV", subtype="PCM_16")
        real, real_rate = _read(workspace.clean / row.audio)
        synth_analysis = m.analyse(wave, rate, *f0_range)
        real_analysis = m.analyse(real, real_rate, *f0_range)
        path = m.dtw_path(real_analysis, synth_analysis)
        f0 = m.log_f0_rmse(real_analysis, synth_analysis, path)
        for kind, signal, signal_rate in (("synthesis", wave, rate), ("real", real, real_rate)):
            asr = m.asr_scores(signal, signal_rate, row.clean_text)
            records.append({
                "id": row.id, "kind": kind, "text": row.clean_text, "hypothesis": asr.hypothesis,
                "words": asr.words, "word_errors": asr.word_errors, "characters": asr.characters,
                "character_errors": asr.character_errors, "wer": asr.wer, "cer": asr.cer,
                "speaker_similarity": m.SpeakerEncoder.similarity(encoder.embed(signal, signal_rate), centroid),
                "mcd_db": m.mel_cepstral_distortion(real_analysis, synth_analysis, path) if kind == "synthesis" else None,
                "log_f0_rmse": f0 if kind == "synthesis" else None,
                "seconds": len(signal) / signal_rate, **m.dnsmos(signal, signal_rate)})
    table = pd.DataFrame(records)
    if per_utterance_csv is not None:
        with atomic_path(per_utterance_csv) as tmp:
            table.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL)

    summary = {"member": member, "speaker": speaker, "vocoder": str(vocoder or "griffin-lim"), "utterances": len(test),
               "rtf": synth_seconds / max(audio_seconds, 1e-9), "threads": torch.get_num_threads()}
    for kind, part in table.groupby("kind"):
        rates = m.corpus_error_rates([m.AsrScore("", r.words, r.word_errors, r.characters, r.character_errors)
                                      for r in part.itertuples()])
        summary[kind] = {**rates, "speaker_similarity": float(part["speaker_similarity"].mean()),
                         **{k: float(part[k].mean()) for k in ("mos_ovrl", "mos_sig", "mos_bak", "mos_p808")}}
    synth = table[table["kind"] == "synthesis"]
    summary["synthesis"]["mcd_db"] = float(synth["mcd_db"].mean())
    f0_values = synth["log_f0_rmse"].dropna()
    summary["synthesis"]["log_f0_rmse"] = float(f0_values.mean()) if len(f0_values) else None
    summary["synthesis"]["log_f0_rmse_cents"] = (float(f0_values.mean()) * m.CENTS_PER_LN) if len(f0_values) else None
    summary["wer_ratio"] = summary["synthesis"]["wer"] / max(summary["real"]["wer"], 1e-9)

    values = {"wer_ratio": summary["wer_ratio"], "speaker_similarity": summary["synthesis"]["speaker_similarity"],
              "mcd_db": summary["synthesis"]["mcd_db"], "rtf": summary["rtf"]}
    targets = {name: {"value": values[name], "target": f"{op} {bound}",
                      "met": bool(values[name] <= bound if op == "<=" else values[name] >= bound)}
               for name, (op, bound) in TARGETS.items()}
    log.info("evaluate %s: synthesis WER %.3f (real %.3f), similarity %.3f, MCD %.2f dB, RTF %.3f", member,
             summary["synthesis"]["wer"], summary["real"]["wer"], values["speaker_similarity"], values["mcd_db"],
             values["rtf"])
    return {"summary": summary, "targets": targets}
